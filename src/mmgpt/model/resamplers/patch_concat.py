"""PatchConcat: MiniGPT-4's resampler for its LLaMA-2 release, which has no Q-Former.

``MiniGPT4.encode_img`` with ``has_qformer: False`` (Vision-CAIR/MiniGPT-4 HEAD d94738a,
``minigpt4/models/minigpt4.py`` L138-143) takes the EVA tokens after ``ln_vision``, drops the CLS token
(``image_embeds[:, 1:, :]``: 256 patches of 1408), and reshapes ``[b, 256, 1408]`` to ``[b, 64, 5632]`` with a
plain ``view``. So image position j is the concatenation, along the channels, of patch tokens 4j, 4j+1, 4j+2,
4j+3 in the ViT's row-major patch order: four horizontally neighbouring patches of one row of the 16 x 16 grid
(16 is a multiple of 4, so a group never straddles two rows) - not a 2 x 2 square. ``llama_proj`` then maps
5632 -> 4096. No parameters.

Legend: N images, p tokens per image (patches, plus CLS when ``drop_cls``), d width, g group size.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchConcat(nn.Module):
    """tokens [..., p, d] -> [..., (p - 1) / g, g * d] (CLS dropped; g = 4: [N, 257, 1408] -> [N, 64, 5632]).

    ``drop_cls`` says whether token 0 is a CLS token to drop (MiniGPT-4: the EVA output keeps it); with
    ``drop_cls=False`` every token is a patch and [N, 256, d] -> [N, 64, 4d]. Output position j holds patch tokens
    g*j ... g*j + g - 1 side by side: channels [k*d, (k+1)*d) are patch g*j + k.
    """

    def __init__(self, *, group: int = 4, drop_cls: bool = True):
        super().__init__()
        if group < 1:
            raise ValueError(f"PatchConcat needs a group of at least one token, got group={group}")
        self.group = group
        self.drop_cls = drop_cls

    def output_tokens(self, tokens: int) -> int:
        """Positions per image for ``tokens`` input tokens (257 -> 64); raises if they do not divide evenly."""
        patches = tokens - 1 if self.drop_cls else tokens
        if patches < self.group or patches % self.group:
            cls_note = " after dropping CLS" if self.drop_cls else ""
            raise ValueError(
                f"PatchConcat groups {self.group} consecutive patch tokens, but an image has {patches} patch "
                f"tokens{cls_note} (of {tokens}); use an image size whose patch count is a multiple of "
                f"{self.group}, or set drop_cls to match whether the encoder output has a CLS token"
            )
        return patches // self.group

    def output_width(self, width: int) -> int:
        """The width of each position: ``group * width`` (1408 -> 5632)."""
        return self.group * width

    def extra_repr(self) -> str:
        return f"group={self.group}, drop_cls={self.drop_cls}"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [..., p, d] -> [..., p' / g, g * d] with p' = p - 1 (``drop_cls``) or p."""
        if tokens.dim() < 2:
            raise ValueError(f"PatchConcat takes tokens [..., p, d], got shape {tuple(tokens.shape)}")
        p, d = tokens.shape[-2:]
        positions = self.output_tokens(p)
        patches = tokens[..., 1:, :] if self.drop_cls else tokens
        # The original's view: consecutive tokens side by side (reshape copies only when slicing broke contiguity).
        return patches.reshape(*tokens.shape[:-2], positions, self.group * d)
