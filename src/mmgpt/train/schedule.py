"""Learning-rate schedules: transformers' warmup-then-decay functions, as the reference trains with.

Warmup is linear from 0: the lr of the first optimiser step is 0 (``get_cosine_schedule_with_warmup`` at step
0), then cosine or linear decay to ``lr * min_lr_ratio`` at ``total_steps``, or constant.
"""

from __future__ import annotations

import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from mmgpt.config import ConfigError
from mmgpt.train.config import OptimizerConfig


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, cfg: OptimizerConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = cfg.warmup_steps
    if cfg.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    if cfg.schedule == "linear":
        if cfg.min_lr_ratio:
            raise ConfigError(
                f"optimizer.min_lr_ratio={cfg.min_lr_ratio}: transformers' linear schedule decays to 0; use "
                "schedule: cosine for a floor, or min_lr_ratio: 0"
            )
        return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    if cfg.min_lr_ratio:
        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=total_steps, min_lr_rate=cfg.min_lr_ratio
        )
    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
