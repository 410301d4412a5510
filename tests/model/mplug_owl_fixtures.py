"""The tiny mPLUG-Owl release as pytest fixtures (module-scoped), for the test modules that import them: its
tokenizer model, the release directory written in ``MAGAer13/mplug-owl-llama-7b``'s layout, and it loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

import mmgpt
from tests.model.mplug_owl_tiny import tokenizer_model, write_tiny_release


@pytest.fixture(scope="module")
def spm() -> bytes:
    return tokenizer_model()


@pytest.fixture(scope="module")
def release(tmp_path_factory, spm) -> Path:
    return write_tiny_release(tmp_path_factory.mktemp("owl") / "mplug-owl-tiny", model=spm)


@pytest.fixture(scope="module")
def loaded(release):
    return mmgpt.load(release, dtype="float32")
