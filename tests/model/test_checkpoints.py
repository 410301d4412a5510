"""OpenFlamingo v1/v2 checkpoints and MultiModal-GPT's LoRA file, written from tiny models in exactly the real
layouts (reference.md section 3), load into fresh models with identical logits; bad files give clear errors."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from mmgpt.config import LoraConfig
from mmgpt.model.checkpoints import load_multimodal_gpt_lora, load_openflamingo_checkpoint
from mmgpt.model.checkpoints.torch_files import UnsafeCheckpointError
from mmgpt.model.lora import apply_lora, lora_parameters, trainable_parameter_table
from tests.model.conftest import logits, tiny_model
from tests.model.reference_files import TuningConfig, multimodal_gpt_lora_file, openflamingo_state


class RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def scramble_trainable_parts(model, seed: int = 7) -> None:
    """Overwrite what OpenFlamingo checkpoints hold (perceiver, gated blocks, input embeddings) with noise."""
    gen = torch.Generator().manual_seed(seed)
    params = [*model.perceiver.parameters(), model.lang_encoder.get_input_embeddings().weight]
    params += [p for block in model.gated_blocks().values() for p in block.parameters()]
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def llama_v1():
    model, _ = tiny_model("llama", "following")
    return model


def fresh_copy(model):
    copy_ = copy.deepcopy(model)
    scramble_trainable_parts(copy_)
    return copy_


# ------------------------------------------------------------------------------------------------ OpenFlamingo
def test_v1_release_file_with_both_aliases_and_a_stray_buffer_loads_exactly(llama_v1, tmp_path):
    state = openflamingo_state(llama_v1, alias=True)
    stray = "lang_encoder.model.layers.0.decoder_layer.self_attn.rotary_emb.inv_freq"
    state[stray] = torch.arange(8.0)  # old transformers saved LLaMA's rotary buffer
    torch.save(state, tmp_path / "checkpoint.pt")
    model = fresh_copy(llama_v1)
    assert not torch.equal(logits(model), logits(llama_v1))

    report = load_openflamingo_checkpoint(model, tmp_path / "checkpoint.pt")
    assert torch.equal(logits(model), logits(llama_v1))
    assert len(report.loaded) == len(list(llama_v1.perceiver.parameters())) + 2 * 11 + 1
    aliases = [k for k in state if "gated_cross_attn_layers." in k]
    assert report.ignored == sorted([stray]) + sorted(aliases)


def test_v1_training_file_with_wrapper_and_module_prefix_loads_exactly(llama_v1, tmp_path):
    state = {f"module.{k}": v for k, v in openflamingo_state(llama_v1, alias=True).items()}
    torch.save({"model_state_dict": state, "epoch": 0, "tuning_config": TuningConfig()}, tmp_path / "ckpt.pt")
    model = fresh_copy(llama_v1)
    load_openflamingo_checkpoint(model, tmp_path / "ckpt.pt")
    assert torch.equal(logits(model), logits(llama_v1))


@pytest.mark.parametrize("family", ["mpt", "gpt_neox"])
def test_v2_files_load_exactly(family, tmp_path):
    source, _ = tiny_model(family, "previous")
    state = openflamingo_state(source, alias=False)
    if family == "gpt_neox":  # untied: v2 also saves the output embeddings, named embed_out then
        state["lang_encoder.embed_out.weight"] = source.lang_encoder.get_output_embeddings().weight.detach()
        state["lang_encoder.gpt_neox.layers.0.decoder_layer.attention.masked_bias"] = torch.tensor(-1e9)
    torch.save(state, tmp_path / "checkpoint.pt")
    model = fresh_copy(source)
    if family == "gpt_neox":
        with torch.no_grad():
            model.lang_encoder.get_output_embeddings().weight.normal_()
    assert not torch.equal(logits(model), logits(source))
    report = load_openflamingo_checkpoint(model, tmp_path / "checkpoint.pt")
    assert torch.equal(logits(model), logits(source))
    if family == "gpt_neox":
        assert "lang_encoder.lm_head.weight" in report.loaded
        assert report.ignored == ["lang_encoder.gpt_neox.layers.0.decoder_layer.attention.masked_bias"]


def test_wrong_vocabulary_size_is_a_clear_error(llama_v1, tmp_path):
    state = openflamingo_state(llama_v1, alias=True)
    emb = state["lang_encoder.model.embed_tokens.weight"]
    state["lang_encoder.model.embed_tokens.weight"] = torch.cat([emb, emb[:1]])
    torch.save(state, tmp_path / "checkpoint.pt")
    rows = emb.shape[0]
    with pytest.raises(ValueError, match=rf"vocabulary has {rows + 1} tokens but the model's has {rows}"):
        load_openflamingo_checkpoint(fresh_copy(llama_v1), tmp_path / "checkpoint.pt")


def test_missing_block_is_an_error_listing_its_keys(llama_v1, tmp_path):
    state = {k: v for k, v in openflamingo_state(llama_v1, alias=True).items() if "layers.3." not in k}
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"11 missing keys \['lang_encoder\.model\.layers\.3\.gated_cross_attn_layer"):
        load_openflamingo_checkpoint(fresh_copy(llama_v1), tmp_path / "checkpoint.pt")


def test_unexpected_trainable_key_is_an_error_listing_it(llama_v1, tmp_path):
    state = openflamingo_state(llama_v1, alias=True)
    state["lang_encoder.gated_cross_attn_layers.2.attn_gate"] = torch.zeros(1)  # a block this model lacks
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"1 unexpected keys \['lang_encoder\.model\.layers\.2\.gated_cross_attn"):
        load_openflamingo_checkpoint(fresh_copy(llama_v1), tmp_path / "checkpoint.pt")


def test_wrong_shape_is_an_error_naming_the_tensor(llama_v1, tmp_path):
    state = openflamingo_state(llama_v1, alias=False)
    state["perceiver.latents"] = torch.zeros(3, 5)
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"perceiver\.latents: file \(3, 5\) vs model \(8, 32\)"):
        load_openflamingo_checkpoint(fresh_copy(llama_v1), tmp_path / "checkpoint.pt")


# ------------------------------------------------------------------------------------------------ MultiModal-GPT
@pytest.mark.parametrize(
    ("peft_naming", "decoder_layer", "alias"), [("old", True, True), ("new", False, False), ("new", True, True)]
)
def test_multimodal_gpt_lora_file_loads_exactly(llama_v1, tmp_path, peft_naming, decoder_layer, alias):
    tuned = copy.deepcopy(llama_v1)
    apply_lora(tuned, LoraConfig())
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in lora_parameters(tuned):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    path = tmp_path / "mmgpt-lora-v0-release.pt"
    multimodal_gpt_lora_file(tuned, path, peft_naming=peft_naming, decoder_layer=decoder_layer, alias=alias)

    model = copy.deepcopy(llama_v1)
    report = load_multimodal_gpt_lora(model, path)
    assert torch.equal(logits(model), logits(tuned))
    assert not torch.equal(logits(model), logits(llama_v1))
    assert len(report.loaded) == 2 * (4 * 4 + 2 * 5)
    assert trainable_parameter_table(model) == trainable_parameter_table(tuned)


def test_lora_rank_mismatch_is_a_clear_error(llama_v1, tmp_path):
    tuned = apply_lora(copy.deepcopy(llama_v1), LoraConfig(r=4))
    multimodal_gpt_lora_file(tuned, tmp_path / "lora.pt", peft_naming="old", decoder_layer=True, alias=False)
    with pytest.raises(ValueError, match=r"rank \[4\] but lora\.r=16"):
        load_multimodal_gpt_lora(copy.deepcopy(llama_v1), tmp_path / "lora.pt")


def test_an_openflamingo_file_given_as_lora_is_a_clear_error(llama_v1, tmp_path):
    torch.save(openflamingo_state(llama_v1, alias=False), tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="is this MultiModal-GPT's LoRA file"):
        load_multimodal_gpt_lora(copy.deepcopy(llama_v1), tmp_path / "checkpoint.pt")


# ------------------------------------------------------------------------------------------------ foreign files
def test_a_pickle_that_calls_os_system_is_refused_not_executed(llama_v1, tmp_path):
    marker = tmp_path / "executed"
    torch.save({"model_state_dict": {}, "tuning_config": RunsCode(str(marker))}, tmp_path / "evil.pt")
    for load in (load_multimodal_gpt_lora, load_openflamingo_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match=r"asks for posix\.system.*nothing was executed"):
            load(copy.deepcopy(llama_v1), tmp_path / "evil.pt")
    assert not marker.exists()


def test_unknown_objects_inside_the_weights_are_refused(llama_v1, tmp_path):
    torch.save({"perceiver.latents": TuningConfig()}, tmp_path / "odd.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"pickled objects of unknown classes \[.*TuningConfig"):
        load_openflamingo_checkpoint(copy.deepcopy(llama_v1), tmp_path / "odd.pt")


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(llama_v1, tmp_path):
    (tmp_path / "notes.pt").write_text("these are not weights")
    with pytest.raises(ValueError, match=r"notes\.pt is not a PyTorch checkpoint"):
        load_openflamingo_checkpoint(copy.deepcopy(llama_v1), tmp_path / "notes.pt")


# ------------------------------------------------------------------------------------------------ OpenFlamingo v2
def v2_full_state(model, *, decoder_layer_copies: bool) -> dict[str, torch.Tensor]:
    """A v2 training dict saved unfiltered, with the real v2 names: FlamingoLayer(gated_cross_attn_layer,
    decoder_layer) at ``transformer.blocks.{i}``, the original blocks again as ``old_decoder_blocks.{i}``, the
    blocks again as ``gated_cross_attn_layers.{i}``, and the frozen open_clip ViT as ``vision_encoder.*``.
    ``decoder_layer_copies=False``: the older filter that dropped the frozen ``decoder_layer`` names but kept the
    ``old_decoder_blocks`` alias (it only deleted names that named_parameters() yields)."""
    state = {f"perceiver.{n}": p.detach() for n, p in model.perceiver.named_parameters()}
    blocks = model.lang_encoder.get_submodule("transformer.blocks")
    for i, layer in enumerate(blocks):
        for n, p in layer.named_parameters():
            if n.startswith("gated_cross_attn_layer."):
                state[f"lang_encoder.transformer.blocks.{i}.{n}"] = p.detach()
                state[f"lang_encoder.gated_cross_attn_layers.{i}.{n.split('.', 1)[1]}"] = p.detach()
                continue
            if decoder_layer_copies:
                state[f"lang_encoder.transformer.blocks.{i}.decoder_layer.{n}"] = p.detach()
            state[f"lang_encoder.old_decoder_blocks.{i}.{n}"] = p.detach()
    state["lang_encoder.transformer.wte.weight"] = model.lang_encoder.transformer.wte.weight.detach()
    state["lang_encoder.transformer.norm_f.weight"] = model.lang_encoder.transformer.norm_f.weight.detach()
    state["vision_encoder.conv1.weight"] = torch.zeros(4, 3, 2, 2)
    return state


@pytest.mark.parametrize("decoder_layer_copies", [True, False])
def test_v2_unfiltered_mpt_dict_with_old_decoder_blocks_loads_the_lm_layers_too(tmp_path, decoder_layer_copies):
    source, _ = tiny_model("mpt", "previous")
    torch.save(
        {"model_state_dict": v2_full_state(source, decoder_layer_copies=decoder_layer_copies)}, tmp_path / "c.pt"
    )
    model = fresh_copy(source)
    with torch.no_grad():  # the LM's own layers differ too: only the file can make the logits equal
        for p in model.lang_encoder.transformer.blocks.parameters():
            p.add_(0.1)
    assert not torch.equal(logits(model), logits(source))
    report = load_openflamingo_checkpoint(model, tmp_path / "c.pt")
    assert torch.equal(logits(model), logits(source))
    assert "lang_encoder.transformer.blocks.0.attn.Wqkv.weight" in report.loaded
    assert "vision_encoder.conv1.weight" in report.ignored
    lm_layer_params = [k for k in report.loaded if ".blocks." in k and "gated" not in k]
    assert len(lm_layer_params) == 4 * 6  # every weight of the 4 MPT blocks came from the file
    aliases = [k for k in report.ignored if "old_decoder_blocks" in k]
    assert len(aliases) == (len(lm_layer_params) if decoder_layer_copies else 0)


def test_v2_old_decoder_blocks_that_differ_from_the_decoder_layers_are_an_error(tmp_path):
    source, _ = tiny_model("mpt", "previous")
    state = v2_full_state(source, decoder_layer_copies=True)
    state["lang_encoder.old_decoder_blocks.1.attn.out_proj.weight"] = torch.zeros_like(
        state["lang_encoder.old_decoder_blocks.1.attn.out_proj.weight"]
    )
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"old_decoder_blocks\.1\.attn\.out_proj\.weight.* hold different tensors"):
        load_openflamingo_checkpoint(fresh_copy(source), tmp_path / "c.pt")
