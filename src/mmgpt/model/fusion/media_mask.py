"""The media mask: which image each text token of a Flamingo sees, and so which cached positions stay valid.

The mask is stored per token as an *attend index*: 0 means "no image", k >= 1 means "image k of this row"
(1-based). Two released behaviours (reference.md section 2), with ``text_time = cumsum(token == <image>)``:

- ``previous`` (OpenFlamingo v2): index = text_time, so a token sees the latest image at or before it.
- ``following`` (OpenFlamingo v1, what MultiModal-GPT trained and serves with): ``<image>`` tokens get
  text_time, other tokens text_time + 1, and any index above the row's image count becomes 0. Text attends to
  the NEXT image; text after the last image attends to none.

Worked example, ``<image> a b <eoc> <image> c d``: previous -> [1,1,1,1,2,2,2]; following -> [1,2,2,2,2,0,0].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmgpt.config import MEDIA_MASKS, MediaMask


def attend_index(
    input_ids: torch.Tensor,
    *,
    image_token_id: int,
    image_counts: torch.Tensor,
    media_mask: MediaMask,
    images_before: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which image each token attends to: input_ids [b, T] -> index [b, T] (0 = none, k = image k, 1-based).

    ``images_before`` [b] counts the ``<image>`` tokens of earlier chunks (cached decoding): a chunk continues
    the count where the previous one stopped, so cached and full computations give the same index.
    ``image_counts`` [b] is the number of images of each row.
    """
    is_image = input_ids == image_token_id
    text_time = is_image.long().cumsum(dim=1)
    if images_before is not None:
        text_time = text_time + images_before[:, None]
    if media_mask == "previous":
        return text_time
    if media_mask == "following":
        index = text_time + (~is_image).long()
        return index.masked_fill(index > image_counts[:, None], 0)
    raise ValueError(f"media_mask={media_mask!r} is not one of {MEDIA_MASKS}")


def reusable_prefix(
    old_ids: Sequence[int],
    old_images: Sequence[str],
    new_ids: Sequence[int],
    new_images: Sequence[str],
    *,
    image_token_id: int,
    media_mask: MediaMask,
    bypass: bool,
) -> int:
    """How many leading positions of a Flamingo cache built for (old_ids, old_images) stay valid for (new_ids,
    new_images); images are content keys in ``<image>`` order.

    A position's state depends on the tokens up to it, on the image each of them attends to, and - under the
    language-only ``bypass`` - on whether the row has any image at all. Under "previous" appending a turn changes
    none of that, so the cache is reused whole. Under "following" text attends to the *next* image, so when a turn
    adds an image the text after the previously last image changes what it sees: the cache is cut back to the
    first such token and the rest re-runs."""
    if bypass and (len(old_images) == 0) != (len(new_images) == 0):
        return 0  # the gated blocks switch on or off for every token
    n = 0
    limit = min(len(old_ids), len(new_ids))
    while n < limit and old_ids[n] == new_ids[n]:
        n += 1
    if n == 0:
        return 0

    def attended(ids: Sequence[int], images: Sequence[str]) -> list[str | None]:
        index = attend_index(
            torch.tensor([list(ids[:n])]),
            image_token_id=image_token_id,
            image_counts=torch.tensor([len(images)]),
            media_mask=media_mask,
        )[0]
        return [images[i - 1] if i > 0 else None for i in index.tolist()]

    for position, (a, b) in enumerate(zip(attended(old_ids, old_images), attended(new_ids, new_images), strict=True)):
        if a != b:
            return position
    return n
