"""Every shipped model preset loads and builds on the meta device with the parameter counts of reference.md."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mmgpt.config import ConfigError
from mmgpt.load import load_preset, preset_names
from mmgpt.model.build import build_language_model, build_vision_encoder
from mmgpt.model.flamingo import build_flamingo
from mmgpt.model.lora import apply_lora, trainable_parameter_table
from mmgpt.tokens import SpecialTokenIds

PERCEIVER = 63_019_008
# preset -> (LM model_type, layers, width, blocks, parameters of one block, tokenizer length incl. special tokens)
RELEASED = {
    "openflamingo-9b-v1": ("llama", 32, 4096, 8, 139_476_994, 32_003),
    "multimodal-gpt": ("llama", 32, 4096, 8, 139_476_994, 32_003),
    "openflamingo-3b-vitl-mpt1b": ("mpt", 24, 2048, 24, 36_708_354, 50_280),
    "openflamingo-4b-vitl-rpj3b": ("gpt_neox", 32, 2560, 16, 56_109_058, 50_280),
    "openflamingo-9b-vitl-mpt7b": ("mpt", 32, 4096, 8, 139_476_994, 50_280),
}


def on_meta(name: str, vocab_size: int):
    cfg = load_preset(name).model
    with torch.device("meta"):
        return build_flamingo(
            cfg=cfg,
            vision_encoder=build_vision_encoder(cfg.vision),
            lang_encoder=build_language_model(cfg.lm),
            special=SpecialTokenIds(
                image=vocab_size - 2, end_of_chunk=vocab_size - 3, pad=vocab_size - 1, eos=2, bos=None
            ),
            vocab_size=vocab_size,
        )


def test_the_released_models_are_all_shipped():
    assert set(RELEASED) <= set(preset_names())


FLAMINGO_PRESETS = [name for name in preset_names() if load_preset(name).model.fusion == "cross_attention"]


def test_every_preset_is_checked_somewhere():
    """Flamingo presets here; the prefix models' presets build on the meta device with their fact sheets' counts in
    tests/model/test_minigpt4.py and tests/model/test_mplug_owl.py."""
    prefix = {name for name in preset_names() if load_preset(name).model.fusion == "prefix"}
    assert prefix == {"minigpt4-vicuna-7b", "minigpt4-vicuna-13b", "minigpt4-llama2-7b", "mplug-owl-llama-7b"}
    assert set(FLAMINGO_PRESETS) | prefix == set(preset_names())


@pytest.mark.parametrize("name", FLAMINGO_PRESETS)
def test_every_flamingo_preset_loads_and_builds_on_meta(name):
    model_type, layers, width, blocks, per_block, vocab = RELEASED.get(name, (None, None, None, None, None, 1000))
    model = on_meta(name, vocab)
    assert model.vision_encoder.width == 1024 or name not in RELEASED
    if name not in RELEASED:
        return  # e.g. a tiny preset: loading and building is the check
    lm = model.lang_encoder.config
    assert (lm.model_type, lm.num_hidden_layers, lm.hidden_size) == (model_type, layers, width)
    assert sum(p.numel() for p in model.perceiver.parameters()) == PERCEIVER
    gated = model.gated_blocks()
    assert len(gated) == blocks
    assert {sum(p.numel() for p in b.parameters()) for b in gated.values()} == {per_block}
    assert model.lang_encoder.get_input_embeddings().weight.shape == (vocab, width)
    mask = "following" if name in ("openflamingo-9b-v1", "multimodal-gpt") else "previous"
    assert model.config.cross_attention.media_mask == mask
    # The language-only bypass is MultiModal-GPT's; OpenFlamingo runs the gated blocks on every token.
    assert model.config.cross_attention.language_only_bypass == (name == "multimodal-gpt")


@pytest.mark.parametrize("name", ["openflamingo-9b-v1", "openflamingo-4b-vitl-rpj3b", "multimodal-gpt"])
def test_a_text_only_row_in_a_mixed_batch_computes_what_the_release_computes(name):
    """Tiny numbers with the preset's fusion settings. OpenFlamingo (no bypass): a text-only row still runs every
    block's feed-forward (its attention sees no image, so adds zero) - the same logits alone or beside an image row,
    and not the bare LM's. MultiModal-GPT (bypass): the text-only row is exactly the bare LM."""
    from tests.model.conftest import random_images, tiny_model

    settings = load_preset(name).model.cross_attention
    model, tokenizer = tiny_model("llama", settings.media_mask, language_only_bypass=settings.language_only_bypass)
    text = tokenizer("a red circle above a blue square").input_ids
    with_image = tokenizer("<image>what color is the circle? the circle").input_ids
    width = max(len(text), len(with_image))
    ids = torch.tensor([[0] * (width - len(text)) + text, [0] * (width - len(with_image)) + with_image])
    mask = (torch.arange(width)[None] >= torch.tensor([[width - len(text)], [width - len(with_image)]])).long()
    images = torch.zeros(2, 1, 3, 32, 32)
    images[1] = random_images(1)
    with torch.no_grad():
        mixed = model(ids, images=images, image_counts=torch.tensor([0, 1]), attention_mask=mask).logits[0, -1]
        alone = model(torch.tensor([text])).logits[0, -1]
        for block in model.gated_blocks().values():
            block.ff_gate.data.zero_()
            block.attn_gate.data.zero_()
        plain = model(torch.tensor([text])).logits[0, -1]  # closed gates: the bare LM
    torch.testing.assert_close(mixed, alone, rtol=0, atol=1e-5)
    if settings.language_only_bypass:
        torch.testing.assert_close(alone, plain, rtol=0, atol=1e-5)
    else:
        assert (alone - plain).abs().max() > 1e-3


def test_openflamingo_9b_v1_trainable_part_is_the_size_of_checkpoint_pt():
    model = on_meta("openflamingo-9b-v1", 32_003)
    fusion = sum(p.numel() for p in model.perceiver.parameters())
    fusion += sum(p.numel() for b in model.gated_blocks().values() for p in b.parameters())
    assert fusion + model.lang_encoder.get_input_embeddings().weight.numel() == 1_309_919_248
    assert [i for i in model.gated_blocks()] == [3, 7, 11, 15, 19, 23, 27, 31]


def test_multimodal_gpt_preset_is_the_9b_base_plus_the_paper_lora():
    preset = load_preset("multimodal-gpt")
    base = load_preset("openflamingo-9b-v1").model  # plus MultiModal-GPT's language-only bypass
    assert preset.model == replace(base, cross_attention=replace(base.cross_attention, language_only_bypass=True))
    assert (preset.lora.r, preset.lora.alpha, preset.lora.dropout, preset.lora.lm_mlp) == (16, 16, 0.0, False)
    model = on_meta("multimodal-gpt", 32_003)
    apply_lora(model, preset.lora)
    table = trainable_parameter_table(model)
    assert (table["self_attention"], table["cross_attention"] + table["cross_attention_ff"]) == (16_777_216, 6_684_672)
    assert table["total"] == 23_461_888


def test_unknown_preset_names_the_closest_and_lists_them():
    with pytest.raises(ConfigError, match=r"unknown model preset 'multimodal-gtp' \(did you mean 'multimodal-gpt'"):
        load_preset("multimodal-gtp")


def test_a_preset_yaml_by_path_with_base_and_a_bad_key(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: openflamingo-9b-v1\ncross_attention:\n  media_mask: previous\n")
    preset = load_preset(tmp_path / "mine.yaml")
    assert preset.model.cross_attention.media_mask == "previous"
    assert preset.model.cross_attention.every_n_layers == 4  # the rest comes from the base
    assert preset.lora is None
    (tmp_path / "bad.yaml").write_text("base: openflamingo-9b-v1\nlora:\n  rank: 8\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: lora: unknown key 'rank'"):
        load_preset(tmp_path / "bad.yaml")
