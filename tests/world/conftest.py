"""A small generated world, written once per session, and the world's tokenizer (trained once: ~2 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmgpt.world.config import WorldConfig
from mmgpt.world.corpus import world_tokenizer
from mmgpt.world.write import generate_world

SMALL = WorldConfig(seed=3, scenes=12, heldout=4, language=40, heldout_language=8)


@pytest.fixture(scope="session")
def tokenizer():
    return world_tokenizer()


@pytest.fixture(scope="session")
def world(tmp_path_factory, tokenizer) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, SMALL, tokenizer=tokenizer)
    return out
