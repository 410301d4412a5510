"""The committed pretraining configs of the tiny base (configs/tiny-world): each stage loads with strict keys,
continues the previous stage's output, and reads only corpus files that `mmgpt world generate` writes."""

from __future__ import annotations

import os
from pathlib import Path

from mmgpt.train.config import load_train_config
from tests.world.conftest import tokenizer, world

__all__ = ["tokenizer", "world"]

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tiny-world"
STAGES = ["pretrain.yaml", *(f"pretrain-{n}.yaml" for n in range(2, 10))]


def resolved(path: str) -> Path:
    """Relative paths of a config are relative to its folder; ``os.path.normpath`` folds the ``..``s."""
    return Path(os.path.normpath(CONFIGS / path))


def test_every_stage_of_the_tiny_base_is_listed():
    committed = sorted(p.name for p in CONFIGS.glob("pretrain*.yaml") if not p.name.startswith("pretrain-data"))
    assert committed == sorted(STAGES)


def test_each_stage_continues_the_last_and_reads_the_world_corpus(world):
    written = {f"pretrain/{p.name}" for p in (world / "pretrain").iterdir()}
    previous = None
    for name in STAGES:
        cfg = load_train_config(CONFIGS / name)
        assert cfg.trainable == "all", name
        if previous is None:
            assert cfg.init == "random" and cfg.model == "tiny-world" and cfg.gate_init == 1.0
        else:
            assert resolved(cfg.model) == resolved(previous.run_dir) / "model", name
        sources = cfg.data.vision_language + cfg.data.language
        assert {s.path for s in sources} <= written, (name, {s.path for s in sources} - written)
        previous = cfg
