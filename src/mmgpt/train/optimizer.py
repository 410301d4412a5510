"""Which parameters train, and AdamW over them with weight-decay groups."""

from __future__ import annotations

import torch
from torch import nn

from mmgpt.config import LoraConfig
from mmgpt.model.build import openflamingo_trainable
from mmgpt.model.flamingo import Flamingo
from mmgpt.model.lora import apply_lora, has_lora, trainable_parameter_table
from mmgpt.train.config import OptimizerConfig, Trainable


def make_trainable(model: Flamingo, trainable: Trainable, lora: LoraConfig) -> dict[str, int]:
    """Set ``requires_grad`` for ``trainable`` and return the trainable-parameter table by group.

    The vision encoder trains only with "all". Trainable parameters are kept in fp32 whatever the model's dtype: the
    optimiser state and the small updates of LoRA need the precision (compute still runs in the autocast dtype).
    """
    if trainable == "lora":
        if has_lora(model):
            raise ValueError("the model already carries a LoRA adapter; train from the base model, or merge it first")
        apply_lora(model, lora)
    elif trainable == "openflamingo":
        openflamingo_trainable(model)
    elif trainable in ("full", "all"):
        for name, p in model.named_parameters():
            p.requires_grad_(trainable == "all" or not name.startswith("vision_encoder."))
    else:
        raise ValueError(f"trainable must be 'lora', 'openflamingo', 'full' or 'all', got {trainable!r}")
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    table = trainable_parameter_table(model)
    check_trainable_set(model, trainable)
    return table


def check_trainable_set(model: Flamingo, trainable: Trainable) -> None:
    """The trainable set is exactly what ``trainable`` says (an internal invariant, checked on every run)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if trainable == "lora":
        wrong = {n for n in names if ".lora_A." not in n and ".lora_B." not in n}
    elif trainable == "openflamingo":
        embedding = {n for n, p in model.named_parameters() if p is model.lang_encoder.get_input_embeddings().weight}
        wrong = {n for n in names if not (n.startswith("perceiver.") or ".gated_cross_attn_layer." in n)} - embedding
    elif trainable == "full":
        wrong = {n for n in names if n.startswith("vision_encoder.")}
    else:
        wrong = {n for n, p in model.named_parameters() if not p.requires_grad}
    if wrong or not names:
        raise AssertionError(f"trainable set differs from {trainable!r}: {sorted(wrong)[:8]} (or empty)")


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm scales, gates (1-D), the perceiver latents and token embeddings are not decayed."""
    return param.dim() < 2 or name.endswith("latents") or "embed" in name or "wte" in name


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.AdamW:
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
