"""`mmgpt export`: base + MultiModal-GPT LoRA merged into one directory that mmgpt.load accepts, same logits."""

from __future__ import annotations

import torch

import mmgpt
from mmgpt.cli import main
from tests.model.conftest import logits


def export_args(files, out, *extra):
    root = files["root"]
    return ["export", str(root / "tiny-mmgpt.yaml"), "--out", str(out), "--lm", str(root / "llama"),
            "--clip", str(root / "clip"), "--checkpoint", str(root / "checkpoint.pt"),
            "--lora", str(root / "lora.pt"), *extra]  # fmt: skip


def test_exported_model_gives_the_logits_of_base_plus_adapter(downloads, tmp_path, capsys):
    assert main(export_args(downloads, tmp_path / "exported")) == 0
    assert "load it with mmgpt.load" in capsys.readouterr().out
    model, tokenizer = mmgpt.load(tmp_path / "exported")
    assert not any(".lora_" in name for name, _ in model.named_parameters())
    assert model.config.cross_attention.media_mask == "following"
    assert model.special.image == tokenizer.convert_tokens_to_ids("<image>")
    # merging folds B A * alpha/r into W: equal up to float32 rounding, not bit for bit
    torch.testing.assert_close(logits(model), logits(downloads["tuned"]), rtol=0, atol=1e-5)


def test_export_in_bf16_and_refusals(downloads, tmp_path, capsys):
    assert main(export_args(downloads, tmp_path / "bf16", "--dtype", "bfloat16")) == 0
    model, _ = mmgpt.load(tmp_path / "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    capsys.readouterr()
    assert main(export_args(downloads, tmp_path / "bf16")) == 2
    assert "already holds a model" in capsys.readouterr().out
    assert main(["export", "multimodal-gpt", "--out", str(tmp_path / "x")]) == 2
    assert "needs lm=" in capsys.readouterr().out
