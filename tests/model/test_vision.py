"""The vision encoder loads a HF CLIP directory and returns patch tokens BEFORE the final LayerNorm."""

from dataclasses import replace

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

from mmgpt.model.encoders.clip import VisionEncoder, sincos_2d
from tests.model.conftest import TINY_VISION

VISION = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    projection_dim=16,
)


def save_clip(path, hidden_act="quick_gelu"):
    """A full CLIPModel (text + vision towers), like openai/clip-vit-large-patch14 as downloaded."""
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=100,
            projection_dim=16,
            hidden_act=hidden_act,
        ),
        vision_config=dict(VISION, hidden_act=hidden_act),
        projection_dim=16,
    )
    model = CLIPModel(config)
    with torch.no_grad():  # a non-trivial post-layernorm, so "before it" is distinguishable from "after it"
        model.vision_model.post_layernorm.weight.uniform_(0.5, 2.0)
        model.vision_model.post_layernorm.bias.uniform_(-1.0, 1.0)
    model.save_pretrained(path)
    return model


def test_patch_tokens_from_a_clip_directory_drop_cls_and_skip_post_layernorm(tmp_path):
    clip = save_clip(tmp_path / "clip").eval()
    encoder = VisionEncoder.from_pretrained(tmp_path / "clip")
    pixels = torch.randn(3, 3, 32, 32)
    tokens = encoder(pixels)
    assert tokens.shape == (3, 16, 32)  # (32 / 8)^2 patches, CLS dropped
    with torch.no_grad():
        hidden = clip.vision_model(pixel_values=pixels).last_hidden_state
        after_ln = clip.vision_model.post_layernorm(hidden)
    torch.testing.assert_close(tokens, hidden[:, 1:], rtol=0, atol=1e-6)
    assert (tokens - after_ln[:, 1:]).abs().max() > 0.1
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not tokens.requires_grad


def test_plain_gelu_clip_is_refused(tmp_path):
    save_clip(tmp_path / "clip", hidden_act="gelu")
    with pytest.raises(ValueError, match="quick_gelu"):
        VisionEncoder.from_pretrained(tmp_path / "clip")


def test_missing_directory_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="openai/clip-vit-large-patch14"):
        VisionEncoder.from_pretrained(tmp_path / "nowhere")


def test_stays_in_eval_mode_when_the_parent_trains():
    encoder = VisionEncoder.from_numbers(replace(TINY_VISION, layers=1))
    encoder.train()
    assert not encoder.model.training


def test_from_numbers_matches_vision_config():
    encoder = VisionEncoder.from_numbers(TINY_VISION)
    assert isinstance(encoder.model.config, CLIPVisionConfig)
    assert encoder.model.config.hidden_act == "quick_gelu"
    assert (encoder.width, encoder.image_size) == (32, 32)


def test_sincos_table_exact_values():
    s, c = torch.sin(torch.tensor(1.0)).item(), torch.cos(torch.tensor(1.0)).item()
    # 2 x 2 patches, width 4: [sin(row), cos(row), sin(column), cos(column)], one frequency (1.0).
    expected = torch.tensor([[0, 1, 0, 1], [0, 1, s, c], [s, c, 0, 1], [s, c, s, c]], dtype=torch.float32)
    assert torch.allclose(sincos_2d(2, 4), expected)
    with pytest.raises(ValueError, match="divisible by 4, got 6"):
        sincos_2d(2, 6)


def test_position_table_is_added_to_the_patches_with_the_given_norm():
    encoder = VisionEncoder.from_numbers(replace(TINY_VISION, layers=1))
    weight = encoder.model.embeddings.position_embedding.weight
    before = weight.detach().clone()
    encoder.add_position_table(6.0)
    added = weight.detach() - before
    assert torch.equal(added[0], torch.zeros(32))  # CLS untouched
    assert torch.allclose(added[1:].norm(dim=1), torch.full((16,), 6.0))
    assert torch.allclose(added[1:] / 6.0, sincos_2d(4, 32) / sincos_2d(4, 32).norm(dim=1, keepdim=True))
