"""Prefix fusion: image embeddings spliced into the LM's input sequence (MiniGPT-4, mPLUG-Owl).

An image is a run of ``IMAGE_POSITION`` ids in ``input_ids`` (``mmgpt.tokens``) - never a vocabulary id, so the LM's
embedding table, adapters and merged exports stay exactly the released ones and a placeholder can never be generated.
The connector turns a resampler's queries into LM input embeddings (a linear projection, then learned embeddings
appended after each image: mPLUG-Owl's ``vit_eos``); :func:`splice_images` writes them over the image positions.

Positions are counted, never searched as runs: the k-th image position of a row (counting the positions of earlier
chunks, for cached decoding) holds embedding ``k % n`` of image ``k // n``. Two adjacent images are therefore two
images - mPLUG-Owl's run detection merged them and never spliced the second.

Legend: b batch, T tokens of this chunk, m images, q queries, n embeddings per image (q + end tokens), d widths,
D the LM width.
"""

from __future__ import annotations

import torch
from torch import nn


class Connector(nn.Module):
    """queries [N, q, d] -> LM input embeddings [N, q + k, D]: ``proj`` (Linear d -> D) then ``end_tokens``
    [1, k, D] appended (k = 0: none)."""

    def __init__(self, in_width: int, lm_width: int, *, bias: bool = True, end_tokens: int = 0):
        super().__init__()
        self.proj = nn.Linear(in_width, lm_width, bias=bias)
        self.end_tokens = nn.Parameter(torch.zeros(1, end_tokens, lm_width)) if end_tokens else None

    @property
    def extra(self) -> int:
        return 0 if self.end_tokens is None else self.end_tokens.shape[1]

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        embeddings = self.proj(queries.to(self.proj.weight.dtype))
        if self.end_tokens is None:
            return embeddings
        return torch.cat([embeddings, self.end_tokens.to(embeddings.dtype).expand(embeddings.shape[0], -1, -1)], 1)


def splice_images(
    embeddings: torch.Tensor, is_image: torch.Tensor, images: torch.Tensor, before: torch.Tensor
) -> torch.Tensor:
    """embeddings [b, T, D] of a chunk, is_image [b, T], images [b, m, n, D], before [b] (image positions in earlier
    chunks) -> the embeddings with every image position holding its image's embedding."""
    n = images.shape[2]
    rank = is_image.long().cumsum(dim=1) - 1 + before[:, None].to(is_image.device)  # each position's index
    rows = torch.arange(is_image.shape[0], device=is_image.device)[:, None].expand_as(is_image)
    picked = images[rows[is_image], rank[is_image] // n, rank[is_image] % n]  # [positions, D], in row-major order
    return embeddings.masked_scatter(is_image[..., None], picked.to(embeddings.dtype))
