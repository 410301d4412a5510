"""Published benchmarks as validation metrics during training, the best checkpoint picked by one of them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mmgpt.config import ConfigError, from_dict
from mmgpt.train.checkpoint import load_trainer_state
from mmgpt.train.config import ValidationConfig, load_train_config
from mmgpt.train.run import run_evaluators, train
from tests.train.conftest import data_config, tiny_model_dir, train_config  # noqa: F401  (fixtures)


def pope_entry(world, world_files) -> dict:
    return {"benchmark": "pope", "data": str(world_files["pope"]), "images": str(world), "limit": 4,
            "max_new_tokens": 3}  # fmt: skip


def test_benchmark_validation_config_and_evaluator(tiny_world, world, world_files):
    validation = from_dict(ValidationConfig, {"benchmarks": [pope_entry(world, world_files)]})
    evaluators = run_evaluators(SimpleNamespace(validation=validation), None)
    figures = evaluators["pope"](*tiny_world)
    assert set(figures) == {"pope_accuracy", "pope_precision", "pope_recall", "pope_f1", "pope_yes_ratio"}
    with pytest.raises(ConfigError, match="benchmark 'popes' is unknown \\(did you mean 'pope'\\?\\)"):
        from_dict(ValidationConfig, {"benchmarks": [{"benchmark": "popes", "data": "x"}]})
    with pytest.raises(ConfigError, match="shots=2 needs shots >= 0 and, above 0, a support file"):
        from_dict(ValidationConfig, {"benchmarks": [{"benchmark": "pope", "data": "x", "shots": 2}]})


def test_a_benchmark_figure_picks_the_best_checkpoint(train_config, world, world_files, tmp_path):  # noqa: F811
    config = {**train_config, "validation": {"benchmarks": [pope_entry(world, world_files)], "every": 2,
                                              "metric": "pope_pope_f1", "mode": "max"}}  # fmt: skip
    train(load_train_config(config))
    run_dir = tmp_path / "run"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    validated = [r for r in records if "pope_pope_f1" in r]
    assert [r["step"] for r in validated] == [2, 4]
    assert all(0.0 <= r["pope_pope_accuracy"] <= 1.0 for r in validated)
    best = max(validated, key=lambda r: (r["pope_pope_f1"], -r["step"]))["step"]
    assert load_trainer_state(run_dir / "best").step == best
