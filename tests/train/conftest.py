"""A tiny training run on disk: a saved tiny model, LLaVA and Dolly files in their real formats, a config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmgpt.model.checkpoints import save_pretrained
from tests.model.conftest import IMAGE_SIZE, tiny_model

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def write_world(root: Path, rows: int = 16) -> Path:
    """LLaVA conversation JSON over solid-colour PNGs, and Dolly JSON lines; returns the data config path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    llava = []
    for i in range(rows):
        name, rgb = list(COLOURS.items())[i % len(COLOURS)]
        Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), rgb).save(root / "images" / f"{i:03d}.png")
        turns = [
            {"from": "human", "value": "<image>\nWhat colour is the image?"},
            {"from": "gpt", "value": f"It is {name}."},
        ]
        if i % 3 == 0:
            turns += [{"from": "human", "value": "Are you sure?"}, {"from": "gpt", "value": f"Yes, {name}."}]
        llava.append({"id": str(i), "image": f"{i:03d}.png", "conversations": turns})
    (root / "llava.json").write_text(json.dumps(llava))
    dolly = [
        {"instruction": f"What is {a} plus {b}?", "context": "", "response": str(a + b), "category": "qa"}
        for a, b in [(1, 2), (2, 3), (3, 4), (4, 1), (2, 2), (1, 1), (3, 3), (4, 4)]
    ]
    (root / "dolly.jsonl").write_text("".join(json.dumps(row) + "\n" for row in dolly))
    config = {
        "vision_language": [{"name": "llava", "format": "llava", "path": "llava.json", "images": "images"}],
        "language": [{"name": "dolly", "format": "dolly", "path": "dolly.jsonl"}],
        "max_length": 256,
        "image_size": IMAGE_SIZE,
        "batch_size": 2,
        "language_batch_size": 2,
    }
    path = root / "data.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    model, tokenizer = tiny_model("llama")
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def data_config(tmp_path_factory) -> Path:
    return write_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def train_config(tiny_model_dir, data_config, tmp_path) -> dict:
    """A training config (as a dict) for 4 quick steps in a fresh run directory."""
    return {
        "model": str(tiny_model_dir),
        "data": str(data_config),
        "run_dir": str(tmp_path / "run"),
        "max_steps": 4,
        "optimizer": {"lr": 1e-3, "warmup_steps": 1},
        "checkpoint": {"every": 2, "keep_last": 2},
        "logging": {"progress": False},
    }
