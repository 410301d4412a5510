"""The loss shifts labels once; the schedule's exact values; weight-decay groups; the trainable set."""

import math

import pytest
import torch

from mmgpt.config import ConfigError, LoraConfig
from mmgpt.tokens import IGNORE_INDEX
from mmgpt.train.config import OptimizerConfig
from mmgpt.train.loss import causal_lm_loss
from mmgpt.train.optimizer import build_optimizer, make_trainable, no_decay
from mmgpt.train.schedule import build_scheduler
from tests.model.conftest import tiny_model


def test_loss_scores_position_t_against_label_t_plus_1():
    # Logits that put all mass on token 2 at position 0 and on token 1 at position 1.
    logits = torch.full((1, 3, 4), -1e4)
    logits[0, 0, 2] = 0.0
    logits[0, 1, 1] = 0.0
    labels = torch.tensor([[IGNORE_INDEX, 2, 1]])
    assert causal_lm_loss(logits, labels).item() == 0.0
    wrong = torch.tensor([[IGNORE_INDEX, 1, 1]])  # position 0 predicts 2, label says 1: loss 1e4 / 2 tokens
    assert causal_lm_loss(logits, wrong).item() == pytest.approx(5e3)


def test_loss_refuses_a_batch_without_trained_tokens():
    with pytest.raises(ValueError, match="no trained token"):
        causal_lm_loss(torch.zeros(1, 3, 4), torch.tensor([[5, IGNORE_INDEX, IGNORE_INDEX]]))


def lrs(cfg: OptimizerConfig, total_steps: int, steps: int) -> list[float]:
    """The lr of each optimiser step (base lr 1), as the trainer steps the scheduler."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(optimizer, total_steps=total_steps, cfg=cfg)
    found = []
    for _ in range(steps):
        found.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return found


def test_schedules_are_transformers_warmup_from_zero_as_the_reference():
    # The reference (and transformers' get_cosine_schedule_with_warmup): lr 0 at the first step, peak at step
    # ``warmup``, then cosine to the floor at ``total_steps``.
    cosine = lrs(OptimizerConfig(warmup_steps=2, schedule="cosine", min_lr_ratio=0.1), 6, 7)
    assert cosine[:3] == [0.0, 0.5, 1.0]
    assert cosine[4] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine[6] == pytest.approx(0.1)
    plain = lrs(OptimizerConfig(warmup_steps=2, schedule="cosine"), 6, 7)
    assert plain[:3] == [0.0, 0.5, 1.0] and plain[6] == pytest.approx(0.0)
    assert lrs(OptimizerConfig(warmup_steps=0, schedule="linear"), 4, 4) == [1.0, 0.75, 0.5, 0.25]
    assert lrs(OptimizerConfig(warmup_steps=1, schedule="constant"), 4, 4) == [0.0, 1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="linear schedule decays to 0"):
        lrs(OptimizerConfig(schedule="linear", min_lr_ratio=0.1), 4, 1)


def test_lora_trainable_set_and_decay_groups():
    model, _ = tiny_model("llama")
    table = make_trainable(model, "lora", LoraConfig())
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    # 4 layers x q,k,v,o (64 -> 64, or 64 -> 32 for k/v with 2 kv heads) at r=16, blocks on layers 1 and 3.
    assert table["self_attention"] == 4 * (2 * 16 * (64 + 64) + 2 * 16 * (64 + 32))
    assert table["total"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # The reference decays only the gated blocks' parameters: under LoRA, their adapters; the LM's are not.
    optimizer = build_optimizer(model, OptimizerConfig(weight_decay=0.1))
    decayed, plain = optimizer.param_groups
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.1, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decayed["params"]} == {
        n for n, p in model.named_parameters() if p.requires_grad and ".gated_cross_attn_layer." in n
    }
    n_decayed = sum(p.numel() for p in decayed["params"])
    assert n_decayed == table["cross_attention"] + table["cross_attention_ff"] > 0
    everything = build_optimizer(model, OptimizerConfig(weight_decay=0.1, weight_decay_groups=None))
    assert [g["weight_decay"] for g in everything.param_groups] == [0.1]  # LoRA A/B are all matrices


def test_openflamingo_and_full_trainable_sets():
    model, _ = tiny_model("llama")
    make_trainable(model, "openflamingo", LoraConfig())
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("perceiver.") for n in names) and any("gated_cross_attn_layer" in n for n in names)
    assert not any(n.startswith("vision_encoder.") for n in names)
    decays = {n: not no_decay(n, p) for n, p in model.named_parameters() if p.requires_grad}
    assert decays["perceiver.latents"] is False
    assert decays["lang_encoder.model.embed_tokens.weight"] is False
    assert all(v is False for n, v in decays.items() if n.endswith(("attn_gate", "ff_gate", ".bias")))
    model, _ = tiny_model("llama")
    make_trainable(model, "full", LoraConfig())
    assert all(p.requires_grad != n.startswith("vision_encoder.") for n, p in model.named_parameters())
