"""Rows that come and go: caches of different lengths merged into one batch continue exactly as each alone, a row
taken back out is its own cache again, and rows with different LoRA adapters share one forward."""

from __future__ import annotations

import pytest
import torch

from mmgpt.model.cache import ModelCache
from mmgpt.model.lora import row_adapters, select_adapter
from tests.model.conftest import random_images, tiny_model
from tests.test_chat import model_with_adapters

PROMPTS = ["<image>what color is the circle?", "a red circle above", "<image>a red circle<|endofchunk|><image>what is"]
IMAGES = [1, 0, 2]


def prefill(model, tokenizer, i: int) -> tuple[torch.Tensor, ModelCache]:
    """One prompt alone: its last logits and its cache."""
    ids = torch.tensor([tokenizer(PROMPTS[i]).input_ids])
    kwargs = {"images": random_images(IMAGES[i], seed=i)[None]} if IMAGES[i] else {}
    out = model(ids, use_cache=True, **kwargs)
    return out.logits[:, -1], out.cache


def greedy(model, logits: torch.Tensor, cache: ModelCache, steps: int) -> torch.Tensor:
    """``steps`` greedy tokens [b, steps] continuing ``cache``, every row in one forward per step."""
    tokens = []
    for _ in range(steps):
        token = logits.argmax(-1)
        tokens.append(token)
        mask = torch.ones(len(token), 1, dtype=torch.long)
        out = model(token[:, None], attention_mask=mask, cache=cache, use_cache=True)
        logits, cache = out.logits[:, -1], out.cache
    return torch.stack(tokens, 1)


@pytest.mark.parametrize("media_mask", ["previous", "following"])
def test_merged_rows_of_different_lengths_and_images_continue_as_each_alone(media_mask):
    model, tokenizer = tiny_model("llama", media_mask)
    with torch.no_grad():
        alone = [prefill(model, tokenizer, i) for i in range(3)]
        expected = [greedy(model, logits, cache, 6) for logits, cache in alone]
        merged = ModelCache.merge([cache for _, cache in alone])
        assert merged.rows == 3 and merged.length == max(c.length for _, c in alone)
        got = greedy(model, torch.cat([logits for logits, _ in alone]), merged, 6)
    for i in range(3):
        assert got[i].tolist() == expected[i][0].tolist()


def test_a_row_taken_out_of_a_batch_is_its_own_cache_again():
    model, tokenizer = tiny_model("llama", "previous")
    with torch.no_grad():
        alone = [prefill(model, tokenizer, i) for i in range(3)]
        merged = ModelCache.merge([cache for _, cache in alone])
        for i, (logits, cache) in enumerate(alone):
            row = merged.row(i)
            assert row.length == cache.length and torch.equal(row.attention_mask, cache.attention_mask)
            for a, b in zip(row.kv.layers, cache.kv.layers, strict=True):
                torch.testing.assert_close(a.keys, b.keys, rtol=0, atol=1e-6)
            assert greedy(model, logits, row, 5).tolist() == greedy(model, logits, cache, 5).tolist()


def test_rows_with_different_adapters_share_one_forward(tmp_path):
    model, tokenizer = model_with_adapters(tmp_path, ("one", "two"))
    ids = torch.tensor([tokenizer(PROMPTS[0]).input_ids] * 3)
    images = random_images(1, seed=3)[None].expand(3, -1, -1, -1, -1)
    adapters = [None, "one", "two"]
    with torch.no_grad():
        each = []
        for name in adapters:
            select_adapter(model, name)
            each.append(model(ids[:1], images=images[:1]).logits)
        select_adapter(model, None)
        with row_adapters(model, adapters):
            mixed = model(ids, images=images).logits
        plain = model(ids, images=images).logits  # the hooks pass nothing outside the block
    for i in range(3):
        torch.testing.assert_close(mixed[i], each[i][0], rtol=0, atol=1e-5)
    assert (each[1] - each[2]).abs().max() > 1e-3  # the adapters really differ (on the gated blocks too)
    torch.testing.assert_close(plain[1], each[0][0], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"no adapter named \['three'\]"), row_adapters(model, ["three"]):
        pass
