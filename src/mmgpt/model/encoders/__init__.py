"""Vision encoders: where a new one goes.

An encoder is an ``nn.Module`` ``pixels [N, 3, H, W] -> tokens [N, p, d_v]`` that declares what the layers above
need: ``width``, ``image_size``, ``tokens`` (p), ``image_transform(max_pixels=)`` (its preprocessing: size, resize
mode, mean/std) and ``describe()`` (its ``VisionConfig`` as numbers, for saving). ``build_vision_encoder`` picks
one by ``VisionConfig.kind``: ``clip`` (transformers' CLIPVisionModel; OpenFlamingo, mPLUG-Owl) or ``eva``
(EVA-CLIP ViT-g as transformers' Blip2VisionModel; MiniGPT-4). A new kind is a module in this package and one
line below.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmgpt.config import VisionConfig
from mmgpt.model.encoders.clip import VisionEncoder
from mmgpt.model.encoders.eva import EvaVisionEncoder


def build_vision_encoder(cfg: VisionConfig, *, dtype: torch.dtype = torch.float32) -> VisionEncoder | EvaVisionEncoder:
    """The encoder ``cfg`` describes: from its directory (``cfg.path``), or from numbers (random weights)."""
    if cfg.kind == "eva":
        if cfg.path is not None:
            raise ValueError(
                f"vision.path={cfg.path!r}: EVA ViT-g weights come from eva_vit_g.pth, which the MiniGPT-4 loader "
                "reads (mmgpt.load('minigpt4-vicuna-7b', eva=...)); leave vision.path unset"
            )
        return EvaVisionEncoder.from_config(cfg).to(dtype)
    if cfg.kind != "clip":
        raise ValueError(f"vision.kind={cfg.kind!r} is not available; use 'clip' or 'eva'")
    if cfg.path is not None:
        from mmgpt.model.language import hf_source

        source = hf_source(cfg.path, what="vision encoder", key="vision.path")
        if not Path(source).is_dir():  # a hub id: fetch the directory first
            from huggingface_hub import snapshot_download

            source = snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.txt"])
        return VisionEncoder.from_pretrained(source, cfg, dtype=dtype)
    return VisionEncoder.from_numbers(cfg).to(dtype)
