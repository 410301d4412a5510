"""The loss shifts labels once; the schedule's exact values; weight-decay groups; the trainable set."""

import math

import pytest
import torch

from mmgpt.config import LoraConfig
from mmgpt.tokens import IGNORE_INDEX
from mmgpt.train.config import OptimizerConfig
from mmgpt.train.loss import causal_lm_loss
from mmgpt.train.optimizer import build_optimizer, make_trainable, no_decay
from mmgpt.train.schedule import lr_factor
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


def test_cosine_schedule_with_warmup_exact_values():
    cfg = OptimizerConfig(warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    factors = [lr_factor(s, total_steps=6, cfg=cfg) for s in range(6)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2] == 1.0  # decay starts at the peak
    assert factors[4] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(6, total_steps=6, cfg=cfg) == pytest.approx(0.1)
    linear = OptimizerConfig(warmup_steps=0, schedule="linear")
    assert [lr_factor(s, total_steps=4, cfg=linear) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    constant = OptimizerConfig(warmup_steps=0, schedule="constant")
    assert lr_factor(3, total_steps=4, cfg=constant) == 1.0


def test_lora_trainable_set_and_decay_groups():
    model, _ = tiny_model("llama")
    table = make_trainable(model, "lora", LoraConfig())
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    # 4 layers x q,k,v,o (64 -> 64, or 64 -> 32 for k/v with 2 kv heads) at r=16, blocks on layers 1 and 3.
    assert table["self_attention"] == 4 * (2 * 16 * (64 + 64) + 2 * 16 * (64 + 32))
    assert table["total"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = build_optimizer(model, OptimizerConfig(weight_decay=0.1))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1]  # LoRA A/B are all matrices


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
