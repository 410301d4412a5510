"""Learning-rate schedules: linear warmup, then cosine / linear decay to ``min_lr_ratio`` or constant."""

from __future__ import annotations

import math

import torch

from mmgpt.train.config import OptimizerConfig


def lr_factor(step: int, *, total_steps: int, cfg: OptimizerConfig) -> float:
    """The multiplier of the base lr for optimiser step ``step`` (0-based; step 0 is the first update)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, cfg: OptimizerConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps=total_steps, cfg=cfg))
