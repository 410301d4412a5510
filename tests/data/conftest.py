"""Shared fixtures of the data tests: a tiny tokenizer (in memory and saved to disk) and image writers."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mmgpt.data.templates import CAPTION_INSTRUCTIONS, HEADER
from mmgpt.tokens import add_special_tokens, train_tokenizer

CORPUS = [
    HEADER,
    "### Image:\n### Instruction:\n### Input:\n### Response:\n",
    "What is in the image? A red ball on the grass. What colour is it? Red.",
    "The answer is yes. Because the dog is running in the park with a ball.",
    *CAPTION_INSTRUCTIONS,
    "Write a short poem about the sea. Summarise the text below in one sentence.",
]


@pytest.fixture(scope="session")
def tokenizer():
    tok = train_tokenizer(CORPUS, vocab_size=400)
    add_special_tokens(tok)
    return tok


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


def write_image(path: Path, *, size: tuple[int, int] = (8, 6), color=(200, 30, 30)) -> Path:
    """A small real JPEG (PNG/GIF by suffix) at ``path``, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    if path.suffix == ".gif":
        image = image.convert("P")
    image.save(path)
    return path
