"""Paired, sharded, resumable training batches built from a DataConfig."""

from __future__ import annotations

import itertools

import pytest
import torch

from mmgpt.data.config import ConfigError, load_data_config
from mmgpt.data.loader import build_training_batches
from mmgpt.tokens import IGNORE_INDEX
from tests.data import formats


@pytest.fixture
def cfg(tmp_path, tokenizer_dir):
    return load_data_config(formats.write_config(tmp_path, tokenizer_dir, batch_size=2, language_ratio=0.5))


def steps(batches, n):
    return list(itertools.islice(iter(batches), n))


def test_paired_batches_have_the_documented_shapes(cfg, tokenizer):
    batches = build_training_batches(cfg, tokenizer)
    assert batches.steps_per_epoch == 7  # 14 vision-language samples after caps, 2 per batch
    first, second = steps(batches, 2)
    vl = first.vision_language
    assert vl.input_ids.shape[0] == 2 and vl.media is not None
    assert vl.media.shape[:3] == (2, 1, 1) and vl.media.shape[3:] == (3, 16, 16)
    assert vl.image_counts.tolist() == [1, 1]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert ((vl.input_ids == image_id).sum(dim=1) == vl.image_counts).all()
    assert (vl.labels[vl.attention_mask == 0] == IGNORE_INDEX).all()
    # language_ratio 0.5: a language-only batch on every second step.
    assert first.language is None
    assert second.language is not None and second.language.media is None and len(second.language) == 1


def test_resume_continues_with_exactly_the_next_batches(cfg, tokenizer):
    run = steps(build_training_batches(cfg, tokenizer), 12)  # crosses the 7-step epoch boundary
    resumed = build_training_batches(cfg, tokenizer)
    resumed.load_state_dict(run[8].state)
    for original, again in zip(run[9:], steps(resumed, 3), strict=True):
        assert original.step == again.step
        assert torch.equal(original.vision_language.input_ids, again.vision_language.input_ids)
        assert torch.equal(original.vision_language.media, again.vision_language.media)
        assert (original.language is None) == (again.language is None)
        if original.language is not None:
            assert torch.equal(original.language.input_ids, again.language.input_ids)


def test_ranks_share_out_the_pool_without_overlap(cfg, tokenizer):
    ranks = [build_training_batches(cfg, tokenizer, rank=r, world_size=2) for r in range(2)]
    orders = [set(b.vision_language.stream.order(0)) for b in ranks]
    assert len(orders[0]) == len(orders[1]) == 7 and orders[0].isdisjoint(orders[1])
    assert [b.steps_per_epoch for b in ranks] == [3, 3]  # 7 samples per rank, batches of 2
    assert all(len(step.vision_language) == 2 for step in steps(ranks[1], 4))


def test_configs_that_cannot_train(tmp_path, tokenizer_dir, tokenizer):
    no_language = load_data_config(formats.write_config(tmp_path, tokenizer_dir, language=[]))
    with pytest.raises(ConfigError, match="no language sources"):
        build_training_batches(no_language, tokenizer)
    no_vision = load_data_config(formats.write_config(tmp_path, tokenizer_dir, vision_language=[]))
    with pytest.raises(ConfigError, match="no vision_language sources"):
        build_training_batches(no_vision, tokenizer)
