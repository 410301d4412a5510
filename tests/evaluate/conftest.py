"""The embedded tiny-world model (it answers questions about the generated world), a small world written with its
tokenizer, and that world's held-out scenes as benchmark files (``mmgpt.evaluate.world_files``) - once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

import mmgpt
from mmgpt.evaluate.world_files import write_world_benchmarks
from mmgpt.world.config import WorldConfig
from mmgpt.world.write import generate_world

SMALL = WorldConfig(seed=3, scenes=12, heldout=6, language=40, heldout_language=8)
# The plain question form the tiny base was pretrained on (pretrain/questions.jsonl), as a fewshot template.
WORLD_QA = "<image>Question: {question} Answer: {answer}"


@pytest.fixture(scope="session")
def tiny_world():
    return mmgpt.load("tiny-world")


@pytest.fixture(scope="session")
def world(tmp_path_factory, tiny_world) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, SMALL, tokenizer=tiny_world[1])
    return out


@pytest.fixture(scope="session")
def world_files(tmp_path_factory, world) -> dict[str, Path]:
    return write_world_benchmarks(world, tmp_path_factory.mktemp("benchmarks"))
