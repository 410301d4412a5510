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

    @torch.no_grad()
    def add_position_table(self, norm: float) -> None:
        """Add a fixed 2D sine-cosine table (:func:`sincos_2d`: MAE's kind, for small grids) to the learned position
        embeddings of the patches, each patch's vector scaled to ``norm``; the CLS position is left alone.

        For a ViT trained from scratch: its patch embeddings can grow far larger than its position embeddings
        (measured on the tiny base: norm ~10 against ~1), so after the first LayerNorm nothing tells the patches
        apart but their content, and the model cannot say where anything is."""
        embeddings = getattr(self.model, "vision_model", self.model).embeddings  # transformers 4.x nests it
        weight = embeddings.position_embedding.weight
        side = self.image_size // self.model.config.patch_size
        table = sincos_2d(side, weight.shape[1]).to(weight)
        weight[1:] += table * (norm / table.norm(dim=1, keepdim=True))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        # Frozen (the usual case): no graph. Only pretraining a tiny ViT from scratch ("trainable: all") trains it.
        trains = any(p.requires_grad for p in self.model.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            hidden = self.model(pixel_values=pixels.to(dtype)).last_hidden_state
        return hidden[:, 1:]  # drop CLS; before post_layernorm


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """[side * side, dim]: row-major patches; half the channels encode the row, half the column, each as sines
    and cosines of geometrically spaced frequencies (``dim`` a multiple of 4).

    The frequencies run from 1 down to 1 / (2 * side) per patch, not MAE's 1 / 10000: on a small grid (8 x 8 in the
    tiny ViT) MAE's slow channels hardly change across the image, and only 38% of the table's norm would tell two
    patches apart, against 66% here."""
    if dim % 4:
        raise ValueError(f"a 2D sine-cosine table needs a width divisible by 4, got {dim}")
    frequencies = 1.0 / (2 * side) ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    coordinate = torch.arange(side, dtype=torch.float64)

    def encode(values: torch.Tensor) -> torch.Tensor:
        angles = values[:, None] * frequencies[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, columns = torch.meshgrid(coordinate, coordinate, indexing="ij")
    return torch.cat([encode(rows.flatten()), encode(columns.flatten())], dim=1).float()
