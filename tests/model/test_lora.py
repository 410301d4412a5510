"""LoRA on the LM of a Flamingo: exact targets and counts, fresh adapters change nothing, peft-format round trips."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from mmgpt.config import ConfigError, LoraConfig, from_dict
from mmgpt.model.build import build_model
from mmgpt.model.lora import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    apply_lora,
    load_adapter,
    lora_parameters,
    merge_lora,
    save_adapter,
    trainable_parameter_table,
)
from tests.model.conftest import make_tokenizer, openflamingo_9b_v1_on_meta, random_images, tiny_config, tiny_model

SMALL = LoraConfig(r=4, alpha=8)


def image_prompt(model) -> torch.Tensor:
    image = model.special.image
    return torch.tensor([[image, 5, 6, 7, image, 8, 9, 10], [image, 11, 12, image, 13, 14, 15, 16]])


def images() -> torch.Tensor:
    return random_images(4).view(2, 2, 3, *random_images(1).shape[2:])


def randomise_lora(model, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(image_prompt(model), images=images()).logits


@pytest.mark.parametrize("media_mask", ["previous", "following"])
def test_fresh_lora_leaves_logits_with_images_exactly_unchanged(media_mask):
    model, _ = tiny_model("llama", media_mask)
    before = logits(model)
    apply_lora(model, SMALL)
    assert torch.equal(logits(model), before)


def test_adapted_modules_are_exactly_the_paper_targets_and_never_the_perceiver():
    model, _ = tiny_model("llama")
    apply_lora(model, LoraConfig())
    adapted = {name for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    expected = {
        f"lang_encoder.model.layers.{i}.self_attn.{p}"
        for i in range(4)
        for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    }
    expected |= {
        f"lang_encoder.model.layers.{i}.gated_cross_attn_layer.{m}"
        for i in (1, 3)
        for m in ("attn.to_q", "attn.to_kv", "attn.to_out", "ff.1", "ff.3")
    }
    assert adapted == expected
    assert not any(isinstance(m, LoraLayer) for m in model.perceiver.modules())


def test_only_lora_parameters_train_and_the_table_counts_them_exactly():
    # tiny llama: D=64, q/o 64->64, k/v 64->32 (2 kv heads), 4 layers; blocks at 1, 3 with inner 32, d_v 32, ff 256.
    model, _ = tiny_model("llama")
    apply_lora(model, SMALL)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    assert trainable_parameter_table(model) == {
        "self_attention": 4 * 4 * (128 + 96 + 96 + 128),
        "cross_attention": 2 * 4 * (96 + 96 + 96),
        "cross_attention_ff": 2 * 4 * (320 + 320),
        "lm_mlp": 0,
        **dict.fromkeys(("vision", "resampler", "embeddings", "lm_other"), 0),
        "total": 7168 + 2304 + 5120,
    }


def test_lm_mlp_option_adds_the_llama_mlp():
    model, _ = tiny_model("llama")
    apply_lora(model, LoraConfig(r=4, alpha=8, lm_mlp=True))
    assert trainable_parameter_table(model)["lm_mlp"] == 4 * 3 * 4 * (64 + 128)


@pytest.mark.parametrize(
    ("family", "per_layer"),
    [("gpt_neox", ("attention.query_key_value", "attention.dense")), ("mpt", ("attn.Wqkv", "attn.out_proj"))],
)
def test_other_families_adapt_their_own_attention_names(family, per_layer):
    model, _ = tiny_model(family)
    before = logits(model)
    apply_lora(model, SMALL)
    adapted = {n for n, m in model.lang_encoder.named_modules() if isinstance(m, LoraLayer)}
    layers = model.decoder_layers_path
    assert {n for n in adapted if "gated" not in n} == {f"{layers}.{i}.{p}" for i in range(4) for p in per_layer}
    assert len([n for n in adapted if "gated" in n]) == 2 * 5
    assert torch.equal(logits(model), before)


def test_gradients_reach_only_the_adapters():
    model, _ = tiny_model("llama")
    apply_lora(model, SMALL)
    randomise_lora(model)
    model.train()
    model(image_prompt(model), images=images()).logits.square().mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if ".lora_" in n}


def test_openflamingo_9b_v1_with_the_paper_lora_has_23_461_888_trainable_parameters_on_meta():
    model = openflamingo_9b_v1_on_meta()
    apply_lora(model, LoraConfig())
    assert trainable_parameter_table(model) == {
        "self_attention": 16_777_216,
        "cross_attention": 1_441_792,
        "cross_attention_ff": 5_242_880,
        "lm_mlp": 0,
        **dict.fromkeys(("vision", "resampler", "embeddings", "lm_other"), 0),
        "total": 23_461_888,
    }


def test_saved_adapter_is_peft_format_and_loads_in_peft_itself(tmp_path):
    model, _ = tiny_model("llama")
    apply_lora(model, SMALL)
    randomise_lora(model)
    expected = logits(model)
    save_adapter(model, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE}

    via_peft, _ = tiny_model("llama")
    PeftModel.from_pretrained(via_peft.lang_encoder, tmp_path)  # injects into the LM in place
    assert torch.equal(logits(via_peft), expected)

    ours, _ = tiny_model("llama")
    load_adapter(ours, tmp_path)
    assert torch.equal(logits(ours), expected)
    assert trainable_parameter_table(ours)["total"] == 14592


def test_adapter_for_other_blocks_is_an_error_listing_the_keys(tmp_path):
    model, _ = tiny_model("llama")
    save_adapter(apply_lora(model, SMALL), tmp_path)
    cfg = tiny_config("llama", vocab_size=model.lang_encoder.config.vocab_size)
    cfg.cross_attention.every_n_layers = 1
    every_layer, _ = build_model(cfg, tokenizer=make_tokenizer())
    with pytest.raises(ValueError, match=r"20 missing keys \['model\.layers\.0\.gated_cross_attn_layer"):
        load_adapter(every_layer, tmp_path)


def test_merge_gives_a_plain_model_with_the_adapted_outputs():
    model, _ = tiny_model("llama")
    plain_keys = set(model.state_dict())
    apply_lora(model, SMALL)
    randomise_lora(model)
    adapted = logits(model)
    merge_lora(model)
    assert set(model.state_dict()) == plain_keys
    assert not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(logits(model), adapted, rtol=1e-5, atol=1e-5)


def test_applying_twice_is_an_error():
    model, _ = tiny_model("llama")
    apply_lora(model, SMALL)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, SMALL)


def test_lora_config_from_yaml_dict_is_strict():
    assert from_dict(LoraConfig, {"r": 8, "lm_mlp": True}) == LoraConfig(r=8, lm_mlp=True)
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):
        from_dict(LoraConfig, {"alpah": 8})
