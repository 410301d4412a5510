"""A few training steps of a shipped config, recording what trained: the configs tests' one runner."""

from __future__ import annotations

import io
import warnings

import torch

import mmgpt.train.trainer as trainer_module
from mmgpt.tokens import IGNORE_INDEX
from mmgpt.train.config import TrainConfig
from mmgpt.train.run import load_run_model
from mmgpt.train.trainer import Trainer


def fit_recording(cfg: TrainConfig):
    """Build the run's model (as ``mmgpt train`` does) and fit it; returns (trainer, result, model, the names of
    the parameters that changed, the batches that trained, tokenizer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. MiniGPT-4's stage 1: "llama_proj is freshly initialised"
        model, tokenizer = load_run_model(cfg)
    trainer = Trainer(cfg, model, tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    seen = []
    original = trainer_module.batch_loss

    def recording(module, batch, device):
        seen.append(batch)
        return original(module, batch, device)

    trainer_module.batch_loss = recording
    try:
        result = trainer.fit(progress_stream=io.StringIO())
    finally:
        trainer_module.batch_loss = original
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    return trainer, result, model, changed, seen, tokenizer


def trained_texts(batch, tokenizer) -> list[str]:
    """The trained tokens of each row of ``batch``, decoded."""
    return [tokenizer.decode(row[row != IGNORE_INDEX].tolist()) for row in batch.labels]
