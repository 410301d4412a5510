"""The tiny prefix bases are the shipped Flamingo's parts: the same vision features, the same perceiver output, and an
LM that computes on text what the Flamingo computes with its gates closed."""

from __future__ import annotations

import pytest
import torch

import mmgpt
from mmgpt.config import ModelConfig, PrefixConfig, from_dict
from mmgpt.experiments.prefix_bases import build_prefix_base, write_prefix_base
from mmgpt.model.contract import CONNECTOR, RESAMPLER, VISION
from mmgpt.model.prefix_lm import build_resampler


@pytest.fixture(scope="module")
def flamingo():
    model, tokenizer = mmgpt.load("tiny-world")
    return model, tokenizer


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))


def test_a_perceiver_is_a_prefix_resampler_kind_with_its_own_numbers():
    cfg = from_dict(ModelConfig, {"fusion": "prefix", "prefix": {"resampler": "perceiver", "perceiver": {"depth": 1}}})
    assert cfg.prefix.perceiver.depth == 1
    resampler = build_resampler(PrefixConfig(resampler="perceiver"), vision_width=32)
    assert (resampler.num_queries, resampler.width) == (64, 32)
    assert resampler(torch.randn(3, 10, 32)).shape == (3, 64, 32)


@pytest.mark.parametrize("system", ["minigpt4", "mplug-owl"])
def test_vision_features_and_the_lm_are_the_flamingos(system, flamingo, pixels):
    source, _ = flamingo
    model, _ = build_prefix_base(system)
    assert torch.equal(model.vision_encoder(pixels), source.vision_encoder(pixels))
    for name, p in source.language_model.named_parameters():
        if "gated_cross_attn_layer" not in name:
            assert torch.equal(p, model.language_model.get_parameter(name)), name
    assert model.prompt_format.style == system
    assert model.tokens_per_image == {"minigpt4": 16, "mplug-owl": 17}[system]


def test_minigpt4s_resampler_is_the_pretrained_perceiver(flamingo, pixels):
    source, _ = flamingo
    model, _ = build_prefix_base("minigpt4")
    tokens = source.vision_encoder(pixels)
    assert torch.equal(model.resampler(tokens), source.perceiver(tokens[:, None])[:, 0])
    sizes = {g: sum(p.numel() for _, p in model.group_parameters([g])) for g in (VISION, RESAMPLER, CONNECTOR)}
    assert sizes == {VISION: 272_544, RESAMPLER: 150_336, CONNECTOR: 96 * 192 + 192}


def test_the_lm_alone_is_the_flamingos_lm_with_closed_gates(flamingo, pixels):
    source, tokenizer = flamingo
    model, _ = build_prefix_base("mplug-owl")
    text = tokenizer("<image>A red circle at the top left.<|endofchunk|>What colour is the circle?").input_ids
    ids = torch.tensor([text])
    prefix_logits = model.language_model(input_ids=ids).logits
    # Text alone: the Flamingo's language-only bypass skips the gated blocks.
    assert torch.equal(source(ids[:, 2:]).logits, model.language_model(input_ids=ids[:, 2:]).logits)
    # With an image, its gated blocks add tanh(gate) * (...): nothing once the gates are closed.
    assert not torch.allclose(source(ids, images=pixels[None, :1]).logits, prefix_logits)
    closed, _ = mmgpt.load("tiny-world")
    closed.set_gates(0.0)
    torch.testing.assert_close(closed(ids, images=pixels[None, :1]).logits, prefix_logits, rtol=0, atol=1e-5)


def test_a_written_base_loads_back_as_built(tmp_path, pixels):
    built, _ = build_prefix_base("minigpt4", seed=3)
    loaded, _ = mmgpt.load(write_prefix_base("minigpt4", tmp_path / "base", seed=3))
    assert torch.equal(built.embed_images(pixels), loaded.embed_images(pixels))
    other, _ = build_prefix_base("minigpt4", seed=4)  # fresh parts are drawn from the seed
    assert not torch.equal(built.connector.proj.weight, other.connector.proj.weight)
