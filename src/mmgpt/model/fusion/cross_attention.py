"""Masked cross-attention and the tanh-gated cross-attention block (OpenFlamingo's ``gated_cross_attn_layer``).

Legend: b batch, T text tokens of the current chunk, m images, n latents per image, D the LM width,
d_v the vision width, h heads. Which image each token attends to is the media mask (``media_mask.py``), given
here as an *attend index* per token: 0 means "no image", k >= 1 means "image k of this row" (1-based).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mmgpt.model.resamplers.perceiver import feed_forward


class MaskedCrossAttention(nn.Module):
    """Text tokens attend to the latents of one image each (selected by the attend index)."""

    def __init__(self, *, dim: int, dim_visual: int, heads: int = 8, dim_head: int = 64):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def project_media(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latents [b, m, n, d_v] -> keys, values [b, h, m*n, d_head]. Cacheable once per image."""
        k, v = self.to_kv(latents.flatten(1, 2)).chunk(2, dim=-1)
        return tuple(t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (k, v))

    def forward(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        index: torch.Tensor,
        latents_per_image: int,
    ) -> torch.Tensor:
        """x [b, T, D], keys/values [b, h, m*n, d_head], index [b, T] -> [b, T, D].

        Rows whose index is 0 get a zero attention output (zeroed after the softmax, as OpenFlamingo does).
        """
        q = self.to_q(self.norm(x)).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        key_image = torch.arange(keys.shape[2], device=x.device) // latents_per_image + 1  # [m*n], 1-based
        allowed = index[:, :, None] == key_image  # [b, T, m*n]
        has_image = index > 0
        # A row with no image would be all -inf (NaN after softmax); let it attend anywhere, then zero it.
        allowed = allowed | ~has_image[:, :, None]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed[:, None])
        out = out.transpose(1, 2).flatten(2) * has_image[:, :, None].to(out.dtype)
        return self.to_out(out)


class GatedCrossAttentionBlock(nn.Module):
    """``x = attn(LN(x), media) * tanh(attn_gate) + x; x = ff(x) * tanh(ff_gate) + x``.

    Gates start at 0, so a fresh block is the identity. The feed-forward runs on every token; only the
    attention is masked. Parameter names match OpenFlamingo's ``gated_cross_attn_layer``.
    """

    def __init__(self, *, dim: int, dim_visual: int, heads: int = 8, dim_head: int = 64, ff_mult: int = 4):
        super().__init__()
        self.attn = MaskedCrossAttention(dim=dim, dim_visual=dim_visual, heads=heads, dim_head=dim_head)
        self.attn_gate = nn.Parameter(torch.tensor([0.0]))
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.tensor([0.0]))

    def forward(
        self,
        x: torch.Tensor,
        keys: torch.Tensor | None,
        values: torch.Tensor | None,
        index: torch.Tensor,
        latents_per_image: int,
    ) -> torch.Tensor:
        """x [b, T, D] -> [b, T, D]. ``keys is None`` (no image in the batch) makes the attention output zero."""
        if keys is not None:
            x = self.attn(x, keys, values, index, latents_per_image) * self.attn_gate.tanh() + x
        return self.ff(x) * self.ff_gate.tanh() + x
