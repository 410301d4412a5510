"""Which parameters train, and AdamW over them with weight-decay groups - both chosen from the groups the model
declares (``VisionLanguageModel.parameter_group``), never by matching names here."""

from __future__ import annotations

import torch
from torch import nn

from mmgpt.config import LoraConfig
from mmgpt.model.contract import VisionLanguageModel
from mmgpt.model.lora import apply_lora, has_lora, is_lora_name, trainable_parameter_table
from mmgpt.model.quantize import is_quantized
from mmgpt.train.config import OptimizerConfig


def make_trainable(
    model: VisionLanguageModel, trainable: str, lora: LoraConfig, *, also: tuple[str, ...] = ()
) -> dict[str, int]:
    """Set ``requires_grad`` for ``trainable`` and return the trainable-parameter table by group.

    ``trainable``: "lora" (fresh LoRA adapters on ``lora``'s targets; nothing else), or a preset of the model
    (``VisionLanguageModel.trainable_groups``: "full", "all", and the model's own, e.g. Flamingo's
    "openflamingo"). ``also``: groups trained in full besides (e.g. mPLUG-Owl's abstractor next to LoRA).
    Trainable parameters are kept in fp32 whatever the model's dtype: the optimiser state and the small updates
    of LoRA need the precision (compute still runs in the autocast dtype).
    """
    model.requires_grad_(False)
    if trainable != "lora" and is_quantized(model):
        raise ValueError(
            f"trainable: {trainable} over a quantized model: its weights cannot be trained or saved whole; use "
            "trainable: lora (with train_groups for unquantized parts, e.g. the connector), or load it unquantized"
        )
    if trainable == "lora":
        if has_lora(model):
            raise ValueError("the model already carries a LoRA adapter; train from the base model, or merge it first")
        apply_lora(model, lora)
        groups: tuple[str, ...] = ()
    else:
        groups = model.trainable_groups(trainable)
    for name, p in model.group_parameters((*groups, *also)):
        if not p.is_floating_point():
            raise ValueError(f"train_groups {list(also)} hold {name}, quantized ({p.dtype}): it cannot train")
        p.requires_grad_(True)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    check_trainable_set(model, trainable, (*groups, *also))
    return trainable_parameter_table(model)


def check_trainable_set(model: VisionLanguageModel, trainable: str, groups: tuple[str, ...]) -> None:
    """The trainable set is exactly what was asked (an internal invariant, checked on every run)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.group_parameters(groups)}
    if trainable == "lora":
        expected |= {n for n in names if is_lora_name(n)}
    if names != expected or not names:
        wrong = sorted(names ^ expected)
        raise AssertionError(f"trainable set differs from {trainable!r} + {groups}: {wrong[:8]} (or empty)")


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm scales, gates (1-D), the perceiver latents and token embeddings are never decayed."""
    return param.dim() < 2 or name.endswith("latents") or "embed" in name or "wte" in name


def build_optimizer(model: VisionLanguageModel, cfg: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on the matrices of ``cfg.weight_decay_groups`` (None:
    every group), never on what :func:`no_decay` names."""
    decay_groups = cfg.weight_decay_groups
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_group = decay_groups is None or model.parameter_group(name) in decay_groups
        (decay if in_group and not no_decay(name, p) else plain).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
