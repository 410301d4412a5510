"""QLoRA: LoRA adapters trained over a language model quantized to 4 bits (``model_options: {quantize: nf4}``), and
what a quantized base cannot train."""

import json

import pytest
import torch

import mmgpt
from mmgpt.model.lora import has_lora
from mmgpt.model.quantize import is_quantized
from mmgpt.train.config import load_train_config
from mmgpt.train.run import train
from tests.model.conftest import logits

pytest.importorskip("bitsandbytes", reason="the quant extra (bitsandbytes) is not installed")


def test_lora_adapters_train_over_a_4_bit_base_and_load_on_either(train_config, tiny_model_dir, tmp_path):
    # QLoRA's usual settings: bf16 compute, activations recomputed in backward
    overrides = ["checkpoint.every=0", "precision=bf16", "gradient_checkpointing=true"]
    cfg = load_train_config({**train_config, "model_options": {"quantize": "nf4"}}, overrides)
    result = train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert result.steps == 4 and len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    quantized, _ = mmgpt.load(tiny_model_dir, lora=result.output, quantize="nf4")
    plain, _ = mmgpt.load(tiny_model_dir, lora=result.output)
    base, _ = mmgpt.load(tiny_model_dir)
    assert is_quantized(quantized) and has_lora(quantized) and has_lora(plain)
    trained = (logits(plain) - logits(base)).abs().max()
    assert trained > 0  # the adapter moved away from B = 0
    # The adapter, trained over the 4-bit base, acts alike over the bfloat16/float32 one.
    assert (logits(quantized) - logits(plain)).abs().max() <= 0.3 * logits(plain).abs().max()


def test_a_quantized_base_trains_lora_adapters_only(train_config):
    cfg = load_train_config(
        {**train_config, "model_options": {"quantize": "int8"}}, ["trainable=openflamingo", "checkpoint.every=0"]
    )
    with pytest.raises(ValueError, match="trainable: openflamingo over a quantized model"):
        train(cfg)
