"""Perceiver Resampler: patch tokens of each image -> a fixed number of latents (OpenFlamingo layout).

Keys and values of every attention are concat(media tokens, latents); media and latents have separate
LayerNorms; linear layers carry no bias; a final LayerNorm closes. No time or frame embeddings: no released
OpenFlamingo model uses them. Module names match OpenFlamingo checkpoints one to one
(``perceiver.layers.{i}.0.to_q.weight``, ``perceiver.layers.{i}.1.3.weight``, ...).

Legend: b batch, m images, p patches, n latents, d width (the vision width d_v).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LayerNorm -> Linear(d, mult*d) -> GELU (exact) -> Linear(mult*d, d); parameter indices 0, 1, 3."""
    inner = dim * mult
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to concat(media, latents)."""

    def __init__(self, *, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media [B, p, d], latents [B, n, d] -> [B, n, d] (B = b*m)."""
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((media, latents), dim=1)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class PerceiverResampler(nn.Module):
    """[b, m, p, d] patch tokens -> [b, m, n, d] latents."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int = 6,
        heads: int = 8,
        dim_head: int = 64,
        num_latents: int = 64,
        ff_mult: int = 4,
    ):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim=dim, heads=heads, dim_head=dim_head), feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    @property
    def num_latents(self) -> int:
        return self.latents.shape[0]

    @torch.no_grad()
    def add_latents(self, count: int, *, generator: torch.Generator | None = None) -> None:
        """Append ``count`` latents, drawn like fresh ones (normal) at the scale of the trained ones (their std);
        the trained latents are kept, in their places. Every layer's weights work for any number of latents."""
        if count < 0:
            raise ValueError(f"cannot add {count} latents; to keep the perceiver as it is, add 0")
        old = self.latents.data
        fresh = torch.randn(count, old.shape[1], generator=generator, dtype=torch.float32) * old.float().std()
        self.latents = nn.Parameter(torch.cat([old, fresh.to(old)]), requires_grad=self.latents.requires_grad)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, m = patches.shape[:2]
        media = patches.flatten(0, 1)  # [b*m, p, d]
        latents = self.latents.to(media.dtype).expand(media.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(media, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents).unflatten(0, (b, m))
