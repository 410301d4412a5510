"""mPLUG-Owl v1 parts: the visual abstractor, the ViT key map, the release-directory and LoRA loaders.

Everything is checked against files written in the released layouts (tests/model/mplug_owl_files.py) and against
references written from the fact sheet (prefix-systems.md A2, B, C): exact tensors after loading, numerical
oracles for the ViT (interleaved qkv) and the abstractor, parameter counts of the full-size parts on the meta device.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from torch import nn
from transformers import AutoConfig, CLIPVisionModel, LlamaForCausalLM

from mmgpt.model.checkpoints.mplug_owl import (
    MplugOwlLora,
    expected_shapes,
    mplug_vision_state,
    read_mplug_owl_config,
    read_mplug_owl_lora,
    read_mplug_owl_weights,
)
from mmgpt.model.resamplers.abstractor import VisualAbstractor
from tests.model.mplug_owl_files import (
    ABSTRACTOR,
    MPLUG_OWL_7B,
    TEXT,
    VISION,
    reference_abstractor,
    reference_vit,
    release_config,
    release_state,
    write_lora,
    write_release,
)

INV_FREQ = [f"language_model.model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(2)]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(directory, the release's state as written) of the tiny release, two fp16 shards + index."""
    state = release_state(seed=0)
    return write_release(tmp_path_factory.mktemp("mplug") / "mplug-owl-tiny", state), state


@pytest.fixture(scope="module")
def loaded(release):
    return read_mplug_owl_weights(release[0])


def tiny_llama() -> LlamaForCausalLM:
    text = dict(TEXT)
    return LlamaForCausalLM(AutoConfig.for_model(text.pop("model_type"), **text))


class Connector(nn.Module):
    """Stands for the prefix connector's parameter names: proj (d -> LM width) and end_tokens [1, k, LM width]."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.proj = nn.Linear(dim, width)
        self.end_tokens = nn.Parameter(torch.zeros(1, 1, width))


# ------------------------------------------------------------------------------------------- full-size numbers


def test_parameter_counts_of_the_release_on_meta(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(MPLUG_OWL_7B))
    numbers = read_mplug_owl_config(tmp_path)
    assert (numbers.abstractor_intermediate, numbers.queries, numbers.lm_width) == (2816, 64, 4096)
    shapes, tied = expected_shapes(numbers)

    def count(part: str, prefix: str = "") -> int:
        return sum(math.prod(s) for k, s in shapes[part].items() if k.startswith(prefix))

    assert {"pre_layrnorm.weight", "post_layernorm.weight"} <= set(shapes["vision"])  # HF counts both
    assert count("vision") == 303_179_776
    assert count("abstractor", "encoder.layers.0.") == 12_867_584
    assert count("abstractor", "encoder.") == 77_205_504
    assert shapes["abstractor"]["query_tokens"] == (1, 64, 1024)
    assert count("connector", "proj.") == 4_198_400 and count("connector", "end_tokens") == 4_096
    assert count("language_model") == 6_738_415_616 and not tied
    with torch.device("meta"):
        vit = CLIPVisionModel(numbers.clip_vision_config())
    assert sum(p.numel() for p in vit.parameters()) == 303_179_776


# ------------------------------------------------------------------------------------------- the directory loader


def test_release_loads_exactly(release, loaded):
    _, state = release
    assert loaded.report.ignored == INV_FREQ
    assert loaded.abstractor["query_tokens"].equal(state["query_tokens"])
    for key, value in state.items():
        if key.startswith("abstractor.encoder."):
            assert loaded.abstractor[key.removeprefix("abstractor.")].equal(value), key
        elif key.startswith("language_model.") and key not in INV_FREQ:
            assert loaded.language_model[key.removeprefix("language_model.")].equal(value), key
    assert loaded.connector["proj.weight"].equal(state["abstractor.visual_fc.weight"])
    assert loaded.connector["proj.bias"].equal(state["abstractor.visual_fc.bias"])
    assert loaded.connector["end_tokens"].equal(state["abstractor.vit_eos"])
    vision = loaded.vision
    assert vision["embeddings.class_embedding"].equal(state["vision_model.embeddings.cls_token"].flatten())
    assert vision["embeddings.position_embedding.weight"].equal(state["vision_model.embeddings.position_embedding"][0])
    heads, d = VISION["num_attention_heads"], VISION["hidden_size"]
    for kind in ("weight", "bias"):  # re-interleaving q, k, v per head gives back the fused tensor
        parts = [vision[f"encoder.layers.1.self_attn.{n}_proj.{kind}"] for n in "qkv"]
        fused = torch.stack([p.reshape(heads, d // heads, -1) for p in parts], dim=1).reshape(3 * d, -1)
        assert fused.equal(state[f"vision_model.encoder.layers.1.self_attn.query_key_value.{kind}"].reshape(3 * d, -1))
    assert len(loaded.report.loaded) == sum(len(p) for p in (vision, loaded.abstractor, loaded.connector)) + len(
        loaded.language_model
    )


def test_release_fits_the_modules_strictly(release, loaded):
    numbers = read_mplug_owl_config(release[0])
    vit = CLIPVisionModel(numbers.clip_vision_config())
    abstractor = VisualAbstractor(**numbers.abstractor_kwargs())
    for module, part in [
        (vit, loaded.vision),
        (abstractor, loaded.abstractor),
        (Connector(numbers.abstractor_dim, numbers.lm_width), loaded.connector),
        (tiny_llama(), loaded.language_model),
    ]:
        result = module.load_state_dict(part, strict=True)  # fp16 tensors into float32 modules
        assert not result.missing_keys and not result.unexpected_keys
    assert next(vit.parameters()).dtype == torch.float32


def test_single_file_safetensors_and_dtype_agree(release, loaded, tmp_path):
    _, state = release
    for layout in ("single", "safetensors"):
        other = read_mplug_owl_weights(write_release(tmp_path / layout, state, layout=layout))
        for part in ("vision", "abstractor", "connector", "language_model"):
            mine, theirs = getattr(loaded, part), getattr(other, part)
            assert mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in mine), (layout, part)
    bf16 = read_mplug_owl_weights(write_release(tmp_path / "bf16", {k: v.bfloat16() for k, v in state.items()}))
    assert bf16.abstractor["query_tokens"].equal(loaded.abstractor["query_tokens"].bfloat16())
    abstractor = VisualAbstractor(**read_mplug_owl_config(release[0]).abstractor_kwargs())  # float32
    result = abstractor.load_state_dict(bf16.abstractor)
    assert not result.missing_keys and not result.unexpected_keys
    assert abstractor.query_tokens.equal(bf16.abstractor["query_tokens"].float())
    as_float = read_mplug_owl_weights(release[0], dtype=torch.float32)
    assert {v.dtype for v in as_float.language_model.values()} == {torch.float32}
    assert as_float.vision["pre_layrnorm.weight"].equal(loaded.vision["pre_layrnorm.weight"].float())


def _rewrite(tmp_path, state, *, config=None, edit_index=None, drop_shard=None):
    root = write_release(tmp_path / "edited", state, config=config)
    if edit_index:
        index = json.loads((root / "pytorch_model.bin.index.json").read_text())
        edit_index(index["weight_map"])
        (root / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    if drop_shard:
        (root / drop_shard).unlink()
    return root


def test_unknown_keys_are_errors_that_name_them(release, tmp_path):
    _, state = release
    extra = dict(state, **{"abstractor.encoder.layers.0.crossattention.attention.gate": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \['abstractor\.encoder\.layers\.0\.crossattention"):
        read_mplug_owl_weights(_rewrite(tmp_path / "a", extra))
    stranger = dict(state, **{"text_projection.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"not part of mPLUG-Owl: \['text_projection\.weight'\]"):
        read_mplug_owl_weights(_rewrite(tmp_path / "b", stranger))
    vision = dict(state, **{"vision_model.encoder.layers.0.self_attn.rel_pos": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"vision_model\.encoder\.layers\.0\.self_attn\.rel_pos"):
        read_mplug_owl_weights(_rewrite(tmp_path / "c", vision))
    missing = {k: v for k, v in state.items() if k != "abstractor.vit_eos"}
    with pytest.raises(ValueError, match=r"1 missing keys \['connector\.end_tokens'\]"):
        read_mplug_owl_weights(_rewrite(tmp_path / "d", missing))


def test_shards_must_match_their_index(release, tmp_path):
    _, state = release
    gone = _rewrite(tmp_path / "a", state, drop_shard="pytorch_model-00002-of-00002.bin")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model-00002-of-00002\.bin"):
        read_mplug_owl_weights(gone)
    key = "query_tokens"  # written to shard 1; the index claims shard 2

    def move(weight_map):
        weight_map[key] = "pytorch_model-00002-of-00002.bin"

    with pytest.raises(ValueError, match=r"query_tokens \(index: pytorch_model-00002-of-00002\.bin\)"):
        read_mplug_owl_weights(_rewrite(tmp_path / "b", state, edit_index=move))


def test_config_errors_name_the_field(release, tmp_path):
    _, state = release
    config = release_config()
    del config["visual_abstractor_config"]["intermediate_size"]
    with pytest.raises(ValueError, match=r"visual_abstractor_config\.intermediate_size is missing"):
        read_mplug_owl_config(_rewrite(tmp_path / "a", state, config=config))
    # The code default (4096 for the real model) does not fit the weights: a shape error, not a silent load (#160).
    wrong = release_config(abstractor=dict(ABSTRACTOR, intermediate_size=64))
    with pytest.raises(ValueError, match=r"wrong shapes \['abstractor\.encoder\.layers\.0\.crossattention"):
        read_mplug_owl_weights(_rewrite(tmp_path / "b", state, config=wrong))
    narrow = release_config(abstractor=dict(ABSTRACTOR, encoder_hidden_size=48))
    with pytest.raises(ValueError, match=r"encoder_hidden_size=48"):
        read_mplug_owl_config(_rewrite(tmp_path / "c", state, config=narrow))
    with pytest.raises(ValueError, match=r"model_type is 'llava'"):
        read_mplug_owl_config(_rewrite(tmp_path / "d", state, config=dict(release_config(), model_type="llava")))


# ------------------------------------------------------------------------------------------- numerical oracles


def _pixels() -> torch.Tensor:
    return torch.randn(2, 3, VISION["image_size"], VISION["image_size"], generator=torch.Generator().manual_seed(1))


def _reference_features(state) -> torch.Tensor:
    vit = reference_vit().eval()
    vit.load_state_dict({k.removeprefix("vision_model."): v.float() for k, v in state.items() if "vision_model." in k})
    with torch.no_grad():
        return vit(_pixels())


def test_vit_through_the_key_map_matches_the_reference(release, loaded):
    numbers = read_mplug_owl_config(release[0])
    want = _reference_features(release[1])

    def features(vision_state) -> torch.Tensor:
        clip = CLIPVisionModel(numbers.clip_vision_config()).eval()
        clip.load_state_dict(vision_state)
        with torch.no_grad():
            return clip.post_layernorm(clip(pixel_values=_pixels()).last_hidden_state)  # post-LN on all tokens

    assert (features(loaded.vision) - want).abs().max() < 1e-5
    raw = {k.removeprefix("vision_model."): v for k, v in release[1].items() if k.startswith("vision_model.")}
    chunked = mplug_vision_state(raw, heads=numbers.vision_heads)
    for i in range(VISION["num_hidden_layers"]):  # the wrong split: plain thirds instead of per head
        for kind in ("weight", "bias"):
            fused = raw[f"encoder.layers.{i}.self_attn.query_key_value.{kind}"]
            for name, third in zip("qkv", fused.chunk(3), strict=True):
                chunked[f"encoder.layers.{i}.self_attn.{name}_proj.{kind}"] = third
    assert (features(chunked) - want).abs().max() > 1e-2


def test_abstractor_matches_the_reference(release, loaded):
    numbers = read_mplug_owl_config(release[0])
    image = _reference_features(release[1])  # [2, 10, 32]: the ViT's 1 + 9 post-LN tokens
    want = reference_abstractor(release[1], image, heads=ABSTRACTOR["num_attention_heads"])
    abstractor = VisualAbstractor(**numbers.abstractor_kwargs())
    abstractor.load_state_dict(loaded.abstractor)
    abstractor.eval()
    with torch.no_grad():
        got = abstractor(image)
        assert got.shape == (2, numbers.queries, numbers.abstractor_dim)
        assert (got - want).abs().max() < 1e-5
        assert abstractor(image).equal(got)  # eval: no dropout
        abstractor.train()
        torch.manual_seed(0)
        assert (abstractor(image) - got).abs().max() > 1e-3  # training: dropout 0.1 on the attention probabilities
        abstractor.eval().half()
        half = abstractor(image.half())  # LayerNorms compute in float32
    assert half.dtype == torch.float16 and (half.float() - want).abs().max() < 5e-2


def test_abstractor_needs_equal_widths():
    with pytest.raises(ValueError, match=r"vision_width=40"):
        VisualAbstractor(dim=32, vision_width=40, layers=1, heads=4, intermediate=48, queries=2)


# ------------------------------------------------------------------------------------------- users' LoRA adapters


@pytest.mark.parametrize(("naming", "weights"), [("old", "bin"), ("new", "bin"), ("old", "safetensors")])
def test_lora_adapter_reads_into_lm_keys_and_loads(tmp_path, naming, weights):
    written = write_lora(tmp_path, naming=naming, weights=weights)
    numbers, state = read_mplug_owl_lora(tmp_path)
    assert numbers == MplugOwlLora(r=8, alpha=32, dropout=0.05, modules=("self_attn.q_proj", "self_attn.v_proj"))
    assert "model.layers.1.self_attn.v_proj.lora_B.weight" in state
    assert state.keys() == written.keys() and all(state[k].equal(written[k]) for k in state)
    llama = tiny_llama()
    inject_adapter_in_model(numbers.peft_config(), llama)
    result = set_peft_model_state_dict(llama, state)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "lora_" in k]
    back = get_peft_model_state_dict(llama)
    assert back.keys() == state.keys() and all(back[k].equal(state[k]) for k in back)


def test_lora_errors_list_what_does_not_fit(tmp_path):
    write_lora(tmp_path)
    saved = torch.load(tmp_path / "adapter_model.bin")
    saved["base_model.model.vision_model.encoder.layers.0.self_attn.query_key_value.lora_A.weight"] = torch.zeros(8, 32)
    torch.save(saved, tmp_path / "adapter_model.bin")
    with pytest.raises(ValueError, match=r"not LoRA weights of the LM's decoder layers .*query_key_value"):
        read_mplug_owl_lora(tmp_path)
    write_lora(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(dict(config, r=4, target_modules=["k_proj"])))
    with pytest.raises(ValueError, match=r"other ranks \['base_model.*modules not targeted \['model\.layers\.0"):
        read_mplug_owl_lora(tmp_path)
    (tmp_path / "adapter_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"adapter_model\.safetensors"):
        read_mplug_owl_lora(tmp_path)
