"""Padding, masks and media stacking."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmgpt.data.collate import collate
from mmgpt.data.images import ImageTransform
from mmgpt.data.tokenize import TokenizedSample
from mmgpt.tokens import IGNORE_INDEX

X = IGNORE_INDEX


def image(value: float) -> torch.Tensor:
    return torch.full((3, 4, 4), value)


def samples():
    return [
        TokenizedSample([1, 5, 6, 7], [X, X, 6, 7], images=[image(1.0), image(2.0)]),
        TokenizedSample([1, 8], [X, 8], images=[]),
        TokenizedSample([1, 9, 9], [X, X, 9], images=[image(3.0)]),
    ]


def test_right_padding_for_training():
    batch = collate(samples(), pad_id=0)
    assert batch.input_ids.tolist() == [[1, 5, 6, 7], [1, 8, 0, 0], [1, 9, 9, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert batch.labels.tolist() == [[X, X, 6, 7], [X, 8, X, X], [X, X, 9, X]]
    assert batch.input_ids.dtype == batch.labels.dtype == torch.long
    assert batch.num_trained_tokens == 4 and len(batch) == 3


def test_left_padding_for_generation():
    batch = collate(samples(), pad_id=0, padding_side="left")
    assert batch.input_ids.tolist() == [[1, 5, 6, 7], [0, 0, 1, 8], [0, 1, 9, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]]
    assert batch.labels[:, -1].tolist() == [7, 8, 9]


def test_media_is_zero_padded_to_the_most_images():
    batch = collate(samples(), pad_id=0)
    assert batch.media is not None and batch.media.shape == (3, 2, 1, 3, 4, 4)
    assert batch.image_counts.tolist() == [2, 0, 1]
    assert [batch.media[0, i].unique().item() for i in range(2)] == [1.0, 2.0]
    assert batch.media[1].abs().sum() == 0
    assert batch.media[2, 0].unique().item() == 3.0 and batch.media[2, 1].abs().sum() == 0


def test_language_only_batch_has_no_media():
    batch = collate([TokenizedSample([1, 2], [X, 2]), TokenizedSample([1], [X])], pad_id=0)
    assert batch.media is None and batch.image_counts.tolist() == [0, 0]


def test_image_references_go_through_the_transform():
    sample = TokenizedSample([1, 2], [X, 2], images=[Image.new("RGB", (20, 10), (255, 255, 255))])
    with pytest.raises(ValueError, match="image_transform"):
        collate([sample], pad_id=0)
    batch = collate([sample], pad_id=0, image_transform=ImageTransform(size=8))
    assert batch.media is not None and batch.media.shape == (1, 1, 1, 3, 8, 8)


def test_pad_to_multiple_and_shape_errors():
    batch = collate(samples(), pad_id=0, pad_to_multiple_of=8)
    assert batch.input_ids.shape == (3, 8) and batch.attention_mask[:, 4:].sum() == 0
    odd = [TokenizedSample([1], [X], images=[image(0)]), TokenizedSample([1], [X], images=[torch.zeros(3, 5, 5)])]
    with pytest.raises(ValueError, match="share a shape"):
        collate(odd, pad_id=0)
    with pytest.raises(ValueError, match="labels"):
        collate([TokenizedSample([1, 2], [X])], pad_id=0)
    with pytest.raises(ValueError, match="empty"):
        collate([], pad_id=0)


def test_to_moves_every_tensor():
    batch = collate(samples(), pad_id=0).to("cpu")
    assert batch.media is not None and batch.media.device.type == "cpu"
