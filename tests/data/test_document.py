"""Pretraining documents: the interleaved source and their tokens (every text token trained, one EOS)."""

from __future__ import annotations

import json

import pytest

from mmgpt.data.document import Document
from mmgpt.data.tokenize import tokenize_conversation
from mmgpt.tokens import END_OF_CHUNK, IGNORE_INDEX, IMAGE, special_token_ids
from tests.data.conftest import write_image
from tests.data.test_sources import read


def test_interleaved_rows_become_documents(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.png")
    rows = [
        {"images": ["a.png", "b.png"], "text": f"{IMAGE}A red ball.{END_OF_CHUNK}{IMAGE}Grass.{END_OF_CHUNK}"},
        {"images": [], "text": "Two plus two is four."},
        {"images": ["a.png"], "text": "no marker"},
    ]
    path = tmp_path / "pre.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs, stats = read(tmp_path, "interleaved", path, images="img", on_error="skip")
    assert [d.images for d in docs] == [(tmp_path / "img/a.png", tmp_path / "img/b.png"), ()]
    assert docs[1].text == "Two plus two is four." and docs[0].id == "0"
    assert stats.rows == 3 and sum(stats.skipped.values()) == 1


def test_document_tokens_train_every_text_token_and_end_with_one_eos(tokenizer):
    ids = special_token_ids(tokenizer)
    doc = Document(f"{IMAGE}A red ball.{END_OF_CHUNK}{IMAGE}Grass.{END_OF_CHUNK}", images=["a", "b"])
    sample = tokenize_conversation(doc, tokenizer)
    text = tokenizer(f"A red ball.{END_OF_CHUNK}", add_special_tokens=False).input_ids
    grass = tokenizer(f"Grass.{END_OF_CHUNK}", add_special_tokens=False).input_ids
    bos = [ids.bos] if ids.bos is not None else []
    assert sample.input_ids == [*bos, ids.image, *text, ids.image, *grass, ids.eos]
    assert sample.labels == [*[IGNORE_INDEX] * len(bos), IGNORE_INDEX, *text, IGNORE_INDEX, *grass, ids.eos]
    assert text[-1] == ids.end_of_chunk and sample.images == ["a", "b"]


def test_a_document_needs_one_marker_per_image_and_some_text():
    with pytest.raises(ValueError, match="1 <image> markers for 2 images"):
        Document(f"{IMAGE}text", images=["a", "b"])
    with pytest.raises(ValueError, match="no text"):
        Document(IMAGE, images=["a"]).segments()
