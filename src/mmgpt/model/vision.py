"""VisionEncoder: a frozen CLIP ViT that turns images into patch tokens.

The features OpenFlamingo feeds on are the patch tokens (CLS dropped) of the last transformer block, BEFORE the
final LayerNorm, with QuickGELU activations: in HF terms ``CLIPVisionModel(...).last_hidden_state[:, 1:]``,
never ``post_layernorm`` / ``pooler_output`` (reference.md section 2). Real weights come from a local directory
(``openai/clip-vit-large-patch14`` as downloaded); tiny models build the same class from numbers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel


class VisionEncoder(nn.Module):
    """pixels [N, 3, H, W] -> patch tokens [N, p, d_v]. Frozen and in eval mode, except when a tiny ViT is
    pretrained from scratch (``trainable: all``)."""

    def __init__(self, model: CLIPVisionModel):
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        self.model.eval()

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32) -> VisionEncoder:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"vision encoder directory {path} has no config.json; point vision.path at a local copy of a "
                "HF CLIP model (e.g. openai/clip-vit-large-patch14)"
            )
        model = CLIPVisionModel.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        if model.config.hidden_act != "quick_gelu":
            raise ValueError(
                f"{path}: hidden_act={model.config.hidden_act!r}; OpenAI CLIP weights need 'quick_gelu' "
                "(plain GELU silently changes the features OpenFlamingo was trained on)"
            )
        return cls(model)

    @classmethod
    def from_numbers(
        cls, *, image_size: int, patch_size: int, width: int, layers: int, heads: int, mlp_dim: int
    ) -> VisionEncoder:
        config = CLIPVisionConfig(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=mlp_dim,
            hidden_act="quick_gelu",
            projection_dim=width,
        )
        config._attn_implementation = "sdpa"
        return cls(CLIPVisionModel(config))

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def train(self, mode: bool = True) -> VisionEncoder:
        super().train(mode)
        if not any(p.requires_grad for p in self.model.parameters()):
            self.model.eval()  # frozen: no dropout, whatever the parent's mode
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        # Frozen (the usual case): no graph. Only pretraining a tiny ViT from scratch ("trainable: all") trains it.
        trains = any(p.requires_grad for p in self.model.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            hidden = self.model(pixel_values=pixels.to(dtype)).last_hidden_state
        return hidden[:, 1:]  # drop CLS; before post_layernorm
