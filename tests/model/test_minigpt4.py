"""MiniGPT-4 as an mmgpt model: its presets on the meta device, its release loaded strictly from tiny files in the
exact released layouts (tests/minigpt4_tiny.py), the LLaMA-2 twin, dtypes, refusals, and `mmgpt export`."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from transformers import LlamaForCausalLM

import mmgpt
from mmgpt.cli import main
from mmgpt.data.images import CLIP_MEAN, CLIP_STD
from mmgpt.load import load_preset
from mmgpt.model.build import build_model
from mmgpt.model.checkpoints.minigpt4_release import check_inputs, fill_weights, read_release
from mmgpt.model.resamplers.patch_concat import PatchConcat
from mmgpt.model.resamplers.qformer import QFormerResampler
from mmgpt.serve.loading import load_chat_model
from mmgpt.tokens import IMAGE_POSITION
from tests.minigpt4_tiny import (
    IMAGE_SIZE,
    PATCH_POSITIONS,
    QUERIES,
    SP_VOCAB,
    load_tiny,
    reference_embeddings,
    release_files,
    write_tiny_minigpt4,
)
from tests.model.conftest import make_tokenizer
from tests.model.minigpt4_files import write_minigpt4_projection

# The fact sheet's counts (prefix-systems.md B): EVA ViT-g with 39 blocks as LAVIS counts it (HF's qkv.bias adds a
# zero k slice of 1408 per block), ln_vision, the Q-Former without text parts, its queries, llama_proj, the LM.
EVA, K_BIAS, LN_VISION, QFORMER, QUERY_TOKENS = 985_894_528, 39 * 1408, 2_816, 105_137_664, 24_576
RELEASES = {  # preset -> (llama_proj, LM, positions per image, LM width, vocabulary, prompt style)
    "minigpt4-vicuna-7b": (3_149_824, 6_738_423_808, 32, 4096, 32_001, "minigpt4"),
    "minigpt4-vicuna-13b": (3_937_280, 13_015_874_560, 32, 5120, 32_001, "minigpt4"),
    "minigpt4-llama2-7b": (23_072_768, 6_738_415_616, 64, 4096, 32_000, "minigpt4-llama2"),
}
# Every parameter of the built model (k-bias slices included): docs/minigpt4.md's memory table is computed from these.
TOTALS = {
    "minigpt4-vicuna-7b": 7_832_688_128,
    "minigpt4-vicuna-13b": 14_110_926_336,
    "minigpt4-llama2-7b": 7_747_440_640,
}


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return write_tiny_minigpt4(tmp_path_factory.mktemp("minigpt4-downloads"))


@pytest.fixture(scope="module")
def tiny(downloads):
    return load_tiny(downloads)


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_presets_build_on_meta_with_the_fact_sheet_counts(name):
    proj, lm, positions, width, vocab, style = RELEASES[name]
    preset = load_preset(name)
    assert preset.release == "minigpt4" and preset.model.prompt_style == style
    model, _ = build_model(preset.model, tokenizer=make_tokenizer(), device="meta", init_weights=False)
    vision = model.vision_encoder
    assert count(vision) == EVA + K_BIAS + LN_VISION and count(vision.ln_vision) == LN_VISION
    assert len(vision.model.encoder.layers) == 39 and vision.tokens == 257 and vision.keep_cls
    assert (vision.ln_vision.eps, vision.model.encoder.layers[0].layer_norm1.eps) == (1e-5, 1e-6)
    transform = model.image_transform()
    assert (transform.size, transform.resize, transform.mean, transform.std) == (224, "squash", CLIP_MEAN, CLIP_STD)
    if name == "minigpt4-llama2-7b":
        assert isinstance(model.resampler, PatchConcat) and count(model.resampler) == 0
        assert model.connector.proj.weight.shape == (4096, 5632)
    else:
        assert isinstance(model.resampler, QFormerResampler) and model.resampler.num_queries == 32
        assert (count(model.resampler.qformer), model.resampler.query_tokens.numel()) == (QFORMER, QUERY_TOKENS)
    assert count(model.connector) == proj and model.connector.proj.bias is not None
    assert count(model.language_model) == lm
    assert model.language_model.get_input_embeddings().weight.shape == (vocab, width)
    assert model.tokens_per_image == positions and model.prompt_format.image_tokens == (IMAGE_POSITION,) * positions
    assert model.dtype == torch.float16 and model.trainable_groups("projection") == ("connector",)
    assert count(model) == TOTALS[name]


def test_the_release_fills_every_weight_outside_the_lm_from_the_three_files(downloads, tiny):
    model, tokenizer = tiny
    assert (len(tokenizer), tokenizer.pad_token, model.special.pad) == (SP_VOCAB + 1, "[PAD]", SP_VOCAB)  # kept
    assert model.language_model.get_input_embeddings().weight.shape[0] == SP_VOCAB + 1  # nothing added
    assert model.tokens_per_image == QUERIES and model.special.image == IMAGE_POSITION
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    images = pixels(3)
    with torch.no_grad():
        embedded = model.embed_images(images)
    torch.testing.assert_close(embedded, reference_embeddings(downloads, images), atol=2e-5, rtol=1e-5)
    saved = LlamaForCausalLM.from_pretrained(downloads["root"] / "vicuna", dtype=torch.float32)
    ours = model.language_model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in saved.state_dict().items())
    ids = tokenizer("The image shows a red circle").input_ids
    with torch.no_grad():  # no image: the plain LM
        torch.testing.assert_close(model(torch.tensor([ids])).logits, saved(torch.tensor([ids])).logits)


def test_the_reports_name_what_was_not_used(downloads):
    preset = load_preset(downloads["root"] / "tiny-minigpt4.yaml")
    files = {**release_files(downloads), "clip": None, "lora": None}
    lm = check_inputs(preset, files)
    weights = read_release(preset.model, files, lm_width=48, source="tiny")
    cfg = dataclasses.replace(preset.model, lm=dataclasses.replace(preset.model.lm, path=lm))
    model, _ = build_model(cfg, init_weights=False)
    reports = fill_weights(model, weights)
    assert reports["eva"].ignored == sorted(k for k in reports["eva"].ignored if k.startswith("blocks.2."))
    assert len(reports["eva"].ignored) == 13  # the whole extra block, as the release's 40th
    assert reports["qformer"].ignored == [
        "Qformer.bert.embeddings.position_ids",
        "t5_proj.bias",
        "t5_proj.weight",
        "config",
        "epoch",
        "optimizer",
    ]
    assert reports["checkpoint"].ignored == ["config", "epoch", "optimizer", "scaler"]
    assert reports["checkpoint"].loaded == ["bias", "weight"]


def test_the_llama2_release_has_no_qformer_and_an_untrained_ln_vision(downloads):
    model, tokenizer = load_tiny(downloads, llama2=True)
    assert isinstance(model.resampler, PatchConcat) and model.tokens_per_image == PATCH_POSITIONS
    assert len(tokenizer) == SP_VOCAB and model.config.prompt_style == "minigpt4-llama2"
    ln = model.vision_encoder.ln_vision
    assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.equal(ln.bias, torch.zeros_like(ln.bias))
    images = pixels(2, seed=1)
    vit, proj = downloads["vit"], downloads["proj_llama2"]
    with torch.no_grad():
        tokens = torch.nn.functional.layer_norm(vit(images, layers=2), (64,), eps=1e-5)  # LayerNorm(1408) as built
        expected = proj(tokens[:, 1:].reshape(2, PATCH_POSITIONS, 4 * 64))
        torch.testing.assert_close(model.embed_images(images), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_fp16_files_load_into_any_dtype(downloads, tiny, dtype):
    model, _ = load_tiny(downloads, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    fp32 = tiny[0].state_dict()
    for key in ("connector.proj.weight", "resampler.query_tokens", "vision_encoder.model.embeddings.class_embedding"):
        assert torch.equal(model.state_dict()[key], fp32[key].to(getattr(torch, dtype)))
    with torch.no_grad():
        assert torch.isfinite(model.embed_images(pixels(1).to(getattr(torch, dtype)))).all()


def test_device_map_places_the_lm_and_the_parts_beside_its_embeddings(downloads, tiny):
    model, _ = load_tiny(downloads, device_map={"": "cpu"})
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert torch.equal(model.connector.proj.weight, tiny[0].connector.proj.weight)


def test_without_checkpoint_the_projection_is_fresh_seeded_and_said_so(downloads):
    files = release_files(downloads) | {"checkpoint": None}
    with pytest.warns(UserWarning, match="llama_proj is freshly initialised"):
        first, _ = mmgpt.load(downloads["root"] / "tiny-minigpt4.yaml", **files)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second, _ = mmgpt.load(downloads["root"] / "tiny-minigpt4.yaml", **files)
    weight = first.connector.proj.weight
    assert torch.equal(weight, second.connector.proj.weight) and 0 < weight.abs().max() <= 32**-0.5


def test_refusals_name_the_input_and_come_before_the_lm_is_built(downloads, tmp_path, monkeypatch):
    root = downloads["root"]
    monkeypatch.setattr(
        "mmgpt.model.checkpoints.minigpt4_release.build_model", lambda *a, **k: pytest.fail("built the model")
    )
    cases = [
        (dict(clip=root / "eva_vit_g.pth"), r"clip=.*EVA ViT-g, read from eva="),
        (dict(eva=None), r"needs eva= \(LAVIS' eva_vit_g\.pth\)"),
        (dict(qformer=None), r"needs qformer= \(BLIP-2's blip2_pretrained_flant5xxl\.pth\)"),
        (dict(lm=root / "llama2"), r"vocabulary of 600 but preset 'tiny-minigpt4' .* 601"),
        (dict(eva=root / "blip2_pretrained_flant5xxl.pth"), r"training checkpoint .* not LAVIS' eva_vit_g\.pth"),
        (dict(qformer=root / "eva_vit_g.pth"), r"not a LAVIS/MiniGPT-4 checkpoint"),
        (dict(checkpoint=root / "pretrained_minigpt4_llama2_7b.pth"), r"256-wide image features .* gives 32"),
        (dict(checkpoint=tmp_path / "nowhere.pth"), r"MiniGPT-4 checkpoint \(checkpoint=\) .*nowhere\.pth does not"),
    ]
    wide = torch.nn.Linear(32, 64)
    write_minigpt4_projection(wide, tmp_path / "wide.pth")
    cases.append((dict(checkpoint=tmp_path / "wide.pth"), r"projection is for a 64-wide LM .* lm= is 48 wide"))
    for change, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            load_tiny(downloads, **change)
    with pytest.raises(ValueError, match=r"qformer=.*has no Q-Former .* drop qformer="):
        load_tiny(downloads, llama2=True, qformer=root / "blip2_pretrained_flant5xxl.pth")


def test_export_writes_one_directory_that_load_and_the_chat_verbs_accept(downloads, tiny, tmp_path, capsys):
    root, out = downloads["root"], tmp_path / "minigpt4-tiny"
    files = release_files(downloads)
    args = ["export", str(root / "tiny-minigpt4.yaml"), "--out", str(out)]
    args += [f"--{key}={value}" for key, value in files.items()]
    assert main(args) == 0 and "load it with mmgpt.load" in capsys.readouterr().out
    model, tokenizer = mmgpt.load(out)
    assert model.config.prompt_style == "minigpt4" and len(tokenizer) == SP_VOCAB + 1
    ids = torch.tensor([[1, 5, *[IMAGE_POSITION] * QUERIES, 7, 9]])
    images = pixels(1, seed=4)[None]
    with torch.no_grad():
        assert torch.equal(model(ids, images=images).logits, tiny[0](ids, images=images).logits)
    chat = load_chat_model(str(out))
    assert chat.model.tokens_per_image == QUERIES and chat.transform.size == IMAGE_SIZE
    with pytest.raises(ValueError, match="is self-contained: drop"):
        mmgpt.load(out, eva=root / "eva_vit_g.pth")
