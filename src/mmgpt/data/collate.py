"""Batching: pad tokenised samples to one length and stack their images.

Shapes (b batch, T tokens, m images per row, H/W image size)::

    input_ids[b,T] long, attention_mask[b,T] long (1 = token, 0 = padding), labels[b,T] long
    (IGNORE_INDEX on prompts and padding; NOT shifted - train/loss.py shifts), media[b,m,1,3,H,W] float,
    image_counts[b] long

``m`` is the largest image count of the batch; rows with fewer images get zero images after their real ones,
which no ``<image>`` token points to. A batch without any image has ``media=None`` (the language-only path).
Right padding for training; left padding for generation, so every row's last token is its prompt's last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Literal, Protocol

import torch

from mmgpt.data.conversation import ImageRef
from mmgpt.tokens import IGNORE_INDEX

PaddingSide = Literal["right", "left"]


class Sample(Protocol):
    """What collate needs of a sample (``TokenizedSample`` has it)."""

    input_ids: list[int]
    labels: list[int]
    images: list


@dataclass
class Batch:
    """A padded batch; see the module docstring for shapes."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    media: torch.Tensor | None
    image_counts: torch.Tensor
    origins: tuple[str, ...] = ()  # "source:id" per row, for reports ("non-finite loss on llava_detail:17")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_trained_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Batch:
        moved = {
            f.name: v.to(device, non_blocking=non_blocking)
            if isinstance(v := getattr(self, f.name), torch.Tensor)
            else v
            for f in fields(self)
        }
        return Batch(**moved)


def _image_tensor(image: ImageRef | torch.Tensor, transform: Callable[[ImageRef], torch.Tensor] | None) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        tensor = image
    elif transform is None:
        raise ValueError("samples hold image references, not tensors: pass image_transform=ImageTransform(...)")
    else:
        tensor = transform(image)
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(f"an image tensor must be [3, H, W], got {list(tensor.shape)}")
    return tensor


def collate(
    samples: Sequence[Sample],
    pad_id: int,
    *,
    padding_side: PaddingSide = "right",
    image_transform: Callable[[ImageRef], torch.Tensor] | None = None,
    pad_to_multiple_of: int | None = None,
) -> Batch:
    """Pad ``samples`` into a :class:`Batch`. Images may be tensors [3,H,W] already, or references that
    ``image_transform`` (an ``ImageTransform``) turns into tensors; all must share one H, W."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    b = len(samples)
    length = max(len(s.input_ids) for s in samples)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        if len(sample.labels) != n:
            raise ValueError(f"sample {row}: {len(sample.labels)} labels for {n} input ids")
        span = slice(0, n) if padding_side == "right" else slice(length - n, length)
        input_ids[row, span] = torch.tensor(sample.input_ids, dtype=torch.long)
        labels[row, span] = torch.tensor(sample.labels, dtype=torch.long)
        attention_mask[row, span] = 1

    image_counts = torch.tensor([len(s.images) for s in samples], dtype=torch.long)
    m = int(image_counts.max())
    media = None
    if m:
        tensors = [[_image_tensor(image, image_transform) for image in s.images] for s in samples]
        shapes = {tuple(t.shape) for row in tensors for t in row}
        if len(shapes) != 1:
            raise ValueError(f"images of one batch must share a shape, got {sorted(shapes)}")
        (shape,) = shapes
        first = next(t for row in tensors for t in row)
        media = torch.zeros((b, m, 1, *shape), dtype=first.dtype)
        for row, images in enumerate(tensors):
            for i, tensor in enumerate(images):
                media[row, i, 0] = tensor
    origins = tuple(f"{getattr(s, 'source', '')}:{getattr(s, 'id', '')}" for s in samples)
    return Batch(input_ids, attention_mask, labels, media, image_counts, origins)
