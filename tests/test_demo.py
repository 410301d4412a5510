"""The embedded default: the shipped tiny model loads by name, and `mmgpt demo` runs every stage end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

import mmgpt
from mmgpt.demo import DemoConfig, print_next_commands, run_demo
from mmgpt.embedded import TINY_WORLD


def test_the_shipped_tiny_model_loads_by_name_and_is_small():
    model, tokenizer = mmgpt.load("tiny-world")
    assert sum(p.numel() for p in model.parameters()) == 2_978_980
    assert len(tokenizer) == 888 and model.config.cross_attention.media_mask == "previous"
    size = sum(f.stat().st_size for f in TINY_WORLD.rglob("*") if f.is_file())
    assert size < 25 * 2**20  # the budget for a committed model


def test_the_demo_tunes_the_shipped_base_unless_given_another(tmp_path):
    assert DemoConfig().base_path == TINY_WORLD
    assert DemoConfig(base=tmp_path).base_path == tmp_path


def test_the_next_commands_name_the_shipped_model_and_are_never_wrapped(tmp_path):
    console = Console(record=True, width=40)
    adapter, image, world = Path("build/demo/run/adapter"), Path("build/demo/new-image.png"), Path("build/demo/world")
    print_next_commands(console, DemoConfig(), adapter, image, world)
    lines = console.export_text().splitlines()
    assert lines == [
        f"  .venv/bin/mmgpt chat --model tiny-world --adapter {adapter} --image {image}",
        f"  .venv/bin/mmgpt serve --model tiny-world --adapter tuned={adapter}   # web demo on http://127.0.0.1:8000/",
        f"evaluate again: .venv/bin/mmgpt eval --model tiny-world --adapter {adapter} --world {world}",
    ]
    console = Console(record=True, width=40)
    print_next_commands(console, DemoConfig(base=tmp_path), adapter, image, world)
    assert f"chat --model {tmp_path} --adapter" in console.export_text()


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path):
    console = Console(record=True, width=120)
    assert run_demo(DemoConfig(out=tmp_path, steps=2, eval_scenes=2, batch_size=2), console) == 0
    text = console.export_text()
    for stage in ("1. a generated world", "before tuning", "LoRA", "held-out evaluation", "a chat about a new image"):
        assert stage in text
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert "mmgpt chat --model" in text and "mmgpt serve --model" in text


@pytest.mark.slow
def test_paper_findings_runs_each_variant(tmp_path):
    from mmgpt.experiments.paper_findings import VARIANTS, run

    console = Console(record=True, width=160)
    results = run(
        DemoConfig(out=tmp_path, steps=1, eval_scenes=1, batch_size=2), console=console, variants=VARIANTS[:2]
    )
    assert list(results) == ["paper", "+one-word"]
    assert "description words" in console.export_text()
    assert all("accuracy" in r and "language" in r for r in results.values())
