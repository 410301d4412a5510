"""mmgpt.load from "downloads" written by tiny models in exactly the real layouts (an HF LLaMA directory, an HF CLIP
directory, OpenFlamingo v1's checkpoint.pt, MultiModal-GPT's LoRA file), and from our own saved directory:
identical logits, dtypes, clear errors, and the memory a load takes."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

import mmgpt
from mmgpt.model.build import build_language_model, build_model
from mmgpt.model.checkpoints import save_pretrained
from mmgpt.model.lora import merge_lora
from tests.model.conftest import logits, make_tokenizer, tiny_config


def load_tiny(downloads, preset="tiny.yaml", **kwargs):
    root = downloads["root"]
    files = dict(lm=root / "llama", clip=root / "clip", checkpoint=root / "checkpoint.pt")
    return mmgpt.load(root / preset, **(files | kwargs))


def test_base_from_lm_clip_and_checkpoint_equals_the_saved_model(downloads):
    model, tokenizer = load_tiny(downloads)
    assert torch.equal(logits(model), logits(downloads["base"]))
    assert model.config.cross_attention.media_mask == "following"
    assert len(tokenizer) == len(make_tokenizer()) + 3
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_with_the_multimodal_gpt_lora_file_equals_base_plus_adapter(downloads):
    model, _ = load_tiny(downloads, "tiny-mmgpt.yaml", lora=downloads["root"] / "lora.pt")
    assert torch.equal(logits(model), logits(downloads["tuned"]))
    merged, _ = load_tiny(downloads, "tiny-mmgpt.yaml", lora=downloads["root"] / "lora.pt", merge_lora=True)
    assert not any(".lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged), logits(downloads["tuned"]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_loads_make_every_parameter_that_dtype(downloads, dtype):
    model, _ = load_tiny(downloads, "tiny-mmgpt.yaml", lora=downloads["root"] / "lora.pt", dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    assert torch.isfinite(logits(model)).all()


def test_bf16_load_equals_a_bf16_cast_of_the_fp32_model(downloads):
    bf16, _ = load_tiny(downloads, dtype=torch.bfloat16)
    fp32, _ = load_tiny(downloads)
    cast = fp32.to(torch.bfloat16).state_dict()
    state = bf16.state_dict()
    assert state.keys() == cast.keys()
    assert [k for k in state if not torch.equal(state[k], cast[k])] == ["lang_encoder.lm_head.weight"]
    # ...and there only the 3 output rows of the added tokens, in no file: each is the mean of the LM's rows,
    # taken over bf16 rows in one case and fp32 rows in the other, so they differ by rounding (weights ~0.02).
    base = len(make_tokenizer())
    head, cast_head = state["lang_encoder.lm_head.weight"], cast["lang_encoder.lm_head.weight"]
    assert torch.equal(head[:base], cast_head[:base])
    torch.testing.assert_close(head[base:], cast_head[base:], rtol=0, atol=1e-5)


def test_missing_downloads_are_named_with_the_fix(downloads):
    root = downloads["root"]
    with pytest.raises(ValueError, match=r"needs lm= \(the language model's HF directory.*checkpoint= \(OpenFlamingo"):
        mmgpt.load(root / "tiny.yaml", clip=root / "clip")
    with pytest.raises(ValueError, match=r"needs lora= \(MultiModal-GPT's mmgpt_lora_v0_with_demo\.pt"):
        load_tiny(downloads, "tiny-mmgpt.yaml")
    with pytest.raises(FileNotFoundError, match=r"checkpoint nowhere\.pt does not exist"):
        load_tiny(downloads, checkpoint="nowhere.pt")
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_tiny(downloads, lm=root)
    with pytest.raises(ValueError, match=r"dtype 'int8' is not supported"):
        load_tiny(downloads, dtype="int8")


def test_an_lm_of_another_depth_is_refused_before_loading(downloads, tmp_path):
    cfg = tiny_config("llama", "following", vocab_size=len(make_tokenizer()))
    cfg.lm.hf_config["num_hidden_layers"] = 6
    build_language_model(cfg.lm).save_pretrained(tmp_path / "deeper")
    with pytest.raises(ValueError, match=r"num_hidden_layers=6 but preset 'tiny' is built on an LM with .*=4"):
        load_tiny(downloads, lm=tmp_path / "deeper")


def test_own_directory_round_trip_in_each_dtype(downloads, tmp_path):
    model = merge_lora(copy.deepcopy(downloads["tuned"]))
    save_pretrained(model, make_tokenizer(), tmp_path / "m")
    loaded, _ = mmgpt.load(tmp_path / "m")
    assert torch.equal(logits(loaded), logits(model))
    bf16, _ = mmgpt.load(tmp_path / "m", dtype="bf16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert torch.equal(bf16.state_dict()["perceiver.latents"], model.perceiver.latents.to(torch.bfloat16))
    with pytest.raises(ValueError, match=r"is self-contained: drop lm="):
        mmgpt.load(tmp_path / "m", lm=downloads["root"] / "llama")
    with pytest.raises(FileNotFoundError, match=r"is not a directory saved by mmgpt"):
        mmgpt.load(downloads["root"])


def test_our_safetensors_files_are_standard(downloads, tmp_path):
    from safetensors.torch import load_file

    save_pretrained(downloads["base"], make_tokenizer(), tmp_path / "m")
    state = load_file(tmp_path / "m" / "model.safetensors")
    expected = downloads["base"].state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in state)


PEAK_RSS = """
import resource, sys, torch
from mmgpt.model.checkpoints import load_pretrained
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model, _ = load_pretrained(sys.argv[1])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print((peak - before) * 1024, size)
"""


@pytest.mark.slow
def test_loading_holds_one_copy_of_the_weights(tmp_path):
    """A ~107M-parameter model (430 MB in fp32): loading must not peak near two copies."""
    tokenizer = make_tokenizer()
    cfg = tiny_config("llama", vocab_size=len(tokenizer))
    cfg.lm.hf_config.update(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=16)
    model, tokenizer = build_model(cfg, tokenizer=tokenizer)
    save_pretrained(model, tokenizer, tmp_path / "m")
    del model
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(PEAK_RSS), str(tmp_path / "m")],
                         capture_output=True, text=True, check=True)  # fmt: skip
    grown, size = map(int, out.stdout.split())
    assert size > 400e6
    assert grown < 1.25 * size, f"peak RSS grew by {grown / 1e6:.0f} MB for {size / 1e6:.0f} MB of weights"
