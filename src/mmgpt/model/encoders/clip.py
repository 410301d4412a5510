"""VisionEncoder: a CLIP ViT (transformers' CLIPVisionModel) that turns images into tokens, and its preprocessing.

What a fusion feeds on is an option of the encoder (``VisionConfig``): OpenFlamingo takes the patch tokens (CLS
dropped) of the last transformer block, BEFORE the final LayerNorm, with QuickGELU activations - in HF terms
``last_hidden_state[:, 1:]``, never ``post_layernorm`` / ``pooler_output`` (reference.md section 2); mPLUG-Owl keeps
CLS and applies ``post_layernorm`` to all 257 tokens (HF's CLIP norms only the pooled CLS). Real weights come from
a local directory (``openai/clip-vit-large-patch14`` as downloaded); tiny models build the same class from numbers.

This module is the one place that maps our ``VisionConfig`` to and from transformers' ``CLIPVisionConfig``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from mmgpt.config import VisionConfig
from mmgpt.data.images import DEFAULT_MAX_PIXELS, ImageTransform


def clip_config(cfg: VisionConfig) -> CLIPVisionConfig:
    """Our vision numbers -> transformers' config (QuickGELU: OpenAI's CLIP and mPLUG-Owl's ViT)."""
    config = CLIPVisionConfig(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_size=cfg.width,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.mlp_dim,
        hidden_act="quick_gelu",
        layer_norm_eps=cfg.eps,
        projection_dim=cfg.width,
    )
    config._attn_implementation = "sdpa"
    return config


def vision_numbers(config: CLIPVisionConfig) -> dict:
    """transformers' config -> the numbers of our ``VisionConfig`` (the inverse of :func:`clip_config`)."""
    return dict(
        image_size=config.image_size,
        patch_size=config.patch_size,
        width=config.hidden_size,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        mlp_dim=config.intermediate_size,
        eps=config.layer_norm_eps,
    )


class VisionEncoder(nn.Module):
    """pixels [N, 3, H, W] -> tokens [N, p, d_v] (p: patches, plus CLS with ``keep_cls``). Frozen and in eval mode,
    except when its parameters are made trainable (pretraining a tiny ViT, mPLUG-Owl's stage 1)."""

    def __init__(self, model: CLIPVisionModel, cfg: VisionConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        if cfg.final_norm_eps is not None:
            self._vision().post_layernorm.eps = cfg.final_norm_eps
        self.model.requires_grad_(False)
        self.model.eval()

    @classmethod
    def from_pretrained(
        cls, path: str | Path, cfg: VisionConfig | None = None, *, dtype: torch.dtype = torch.float32
    ) -> VisionEncoder:
        """A HF CLIP directory; ``cfg`` gives what the fusion feeds on (default: OpenFlamingo's features)."""
        cfg = cfg or VisionConfig()
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
        numbers = vision_numbers(model.config)
        return cls(model, dataclasses.replace(cfg, **numbers, path=None))

    @classmethod
    def from_numbers(cls, cfg: VisionConfig | None = None, **numbers: Any) -> VisionEncoder:
        """Random weights of the architecture ``cfg`` (or ``VisionConfig(**numbers)``) describes."""
        cfg = cfg if cfg is not None else VisionConfig(**numbers)
        return cls(CLIPVisionModel(clip_config(cfg)), cfg)

    def _vision(self) -> nn.Module:
        return getattr(self.model, "vision_model", self.model)  # transformers 4.x nests it

    def describe(self) -> VisionConfig:
        """Our config of this encoder, its architecture as numbers (no path): what rebuilds it."""
        return dataclasses.replace(self.cfg, **vision_numbers(self.model.config), path=None)

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def tokens(self) -> int:
        """p: tokens per image this encoder outputs."""
        return (self.image_size // self.model.config.patch_size) ** 2 + int(self.cfg.keep_cls)

    def image_transform(self, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageTransform:
        return ImageTransform(
            size=self.image_size, mean=self.cfg.mean, std=self.cfg.std, resize=self.cfg.resize, max_pixels=max_pixels
        )

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
        embeddings = self._vision().embeddings
        weight = embeddings.position_embedding.weight
        side = self.image_size // self.model.config.patch_size
        table = sincos_2d(side, weight.shape[1]).to(weight)
        weight[1:] += table * (norm / table.norm(dim=1, keepdim=True))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        # Frozen (the usual case): no graph; only when its parameters train does the encoder build one.
        trains = any(p.requires_grad for p in self.model.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            hidden = self.model(pixel_values=pixels.to(dtype)).last_hidden_state  # before post_layernorm
            if self.cfg.final_norm == "post_layernorm":
                hidden = self._vision().post_layernorm(hidden)
        return hidden if self.cfg.keep_cls else hidden[:, 1:]


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
