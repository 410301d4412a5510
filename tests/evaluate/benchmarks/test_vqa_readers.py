"""Reading VQAv2 / OK-VQA, TextVQA, VizWiz, GQA and OCR-VQA as published, and writing their result files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmgpt.data.sources.jsonio import SourceError
from mmgpt.evaluate.benchmarks.common import BenchmarkFormatError, MissingImageError
from mmgpt.evaluate.benchmarks.exact_match_sets import read_gqa, read_ocrvqa, write_gqa_results
from mmgpt.evaluate.benchmarks.vqa_accuracy import score_vqa
from mmgpt.evaluate.benchmarks.vqa_sets import (
    read_textvqa,
    read_vizwiz,
    read_vqa,
    write_vizwiz_results,
    write_vqa_results,
)
from tests.evaluate.benchmarks import published


def test_vqav2_joins_questions_and_annotations(tmp_path: Path) -> None:
    path = published.write_vqav2(tmp_path)
    items = read_vqa(path, tmp_path / "coco")
    assert [i.question_id for i in items] == [420, 421, 70]  # the questions file's order
    first = items[0]
    assert first.image == tmp_path / "coco/val2014/COCO_val2014_000000000042.jpg"
    assert (first.question, first.answers, first.answer_type, first.question_type) == (
        "Is it raining?",
        ("no",) * 10,
        "yes/no",
        "is it",
    )
    assert items[1].answers == ("2",) * 7 + ("two", "3", "3")
    # "two" and 8 others: "2" matches 8 (after normalisation) -> 1.0; "3" matches 2 -> 0.6.
    score = score_vqa({420: "no", 421: "3", 70: "laptop"}, items)
    assert score.per_item == {420: 1.0, 421: 0.6, 70: 0.9}
    assert [i.key for i in read_vqa(path, limit=2)] == [420, 421]


def test_vqav2_errors_name_the_file_the_row_and_the_field(tmp_path: Path) -> None:
    path = published.write_vqav2(tmp_path)
    document = json.loads(path.read_text())
    del document["questions"][1]["question"]
    path.write_text(json.dumps(document))
    with pytest.raises(BenchmarkFormatError, match=r"questions\.json questions\[1\], field 'question': missing"):
        read_vqa(path)
    document["questions"][1]["question"] = "?"
    document["questions"][1]["question_id"] = 999
    path.write_text(json.dumps(document))
    with pytest.raises(BenchmarkFormatError, match=r"999 has no entry in v2_mscoco_val2014_annotations\.json"):
        read_vqa(path)
    with pytest.raises(SourceError, match="no annotations file"):
        read_vqa(path, annotations=tmp_path / "nope.json")


def test_vqav2_missing_images_are_reported_when_checked(tmp_path: Path) -> None:
    path = published.write_vqav2(tmp_path)
    with pytest.raises(MissingImageError, match=r"questions\[0\]: image .*COCO_val2014_000000000042\.jpg not found"):
        read_vqa(path, check_images=True)


def test_vqa_results_file(tmp_path: Path) -> None:
    items = read_vqa(published.write_vqav2(tmp_path))
    out = write_vqa_results(tmp_path / "out/results.json", {420: "no", 421: "2", 70: "laptop"}, items)
    assert json.loads(out.read_text()) == [
        {"question_id": 420, "answer": "no"},
        {"question_id": 421, "answer": "2"},
        {"question_id": 70, "answer": "laptop"},
    ]


def test_textvqa(tmp_path: Path) -> None:
    items = read_textvqa(published.write_textvqa(tmp_path), tmp_path / "textvqa")
    (item,) = items
    assert (item.question_id, item.image) == (34602, tmp_path / "textvqa/train_images/003a8ae2ef43b901.jpg")
    assert item.answers == ("nokia",) * 6 + ("NOKIA",) * 2 + ("nokia phone",) * 2
    # answers differ, so all are normalised: "Nokia" matches 8 of 10 -> 1.0
    assert score_vqa({34602: "Nokia"}, items).accuracy == 1.0


def test_vizwiz(tmp_path: Path) -> None:
    items = read_vizwiz(published.write_vizwiz(tmp_path), tmp_path / "val")
    assert [(i.key, i.answer_type) for i in items] == [
        ("VizWiz_val_00000000.jpg", "unanswerable"),
        ("VizWiz_val_00000001.jpg", "other"),
    ]
    assert items[1].image == tmp_path / "val/VizWiz_val_00000001.jpg"
    score = score_vqa({"VizWiz_val_00000000.jpg": "unanswerable", "VizWiz_val_00000001.jpg": "right"}, items)
    assert score.per_item == {"VizWiz_val_00000000.jpg": 1.0, "VizWiz_val_00000001.jpg": 0.6}
    out = write_vizwiz_results(tmp_path / "vizwiz.json", {i.key: "left" for i in items}, items)
    assert json.loads(out.read_text())[1] == {"image": "VizWiz_val_00000001.jpg", "answer": "left"}


def test_vizwiz_missing_answers_field(tmp_path: Path) -> None:
    path = published.write_vizwiz(tmp_path)
    rows = json.loads(path.read_text())
    del rows[1]["answers"][3]["answer"]
    path.write_text(json.dumps(rows))
    with pytest.raises(BenchmarkFormatError, match=r"val\.json row 1, field 'answers\[3\]\.answer': missing"):
        read_vizwiz(path)


def test_gqa(tmp_path: Path) -> None:
    path = published.write_gqa(tmp_path)
    items = read_gqa(path, tmp_path / "images")
    assert [(i.key, i.answers, i.answer_type, i.question_type) for i in items] == [
        ("20968379", ("man",), "query", "rel"),
        ("20968380", ("yes",), "verify", "attr"),
    ]
    assert items[0].image == tmp_path / "images/n288870.jpg"
    out = write_gqa_results(tmp_path / "gqa.json", {"20968379": "man", "20968380": "no"}, items)
    assert json.loads(out.read_text()) == [
        {"questionId": "20968379", "prediction": "man"},
        {"questionId": "20968380", "prediction": "no"},
    ]


def test_ocrvqa_test_split_with_missing_images_skipped_and_counted(tmp_path: Path) -> None:
    path = published.write_ocrvqa(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    (images / "000000001.png").write_bytes(b"png")  # the downloader saved a .png; 000000003 failed
    missing: list[Path] = []
    items = read_ocrvqa(path, images, missing_images=missing)
    assert [(i.key, i.question, i.answers) for i in items] == [
        ("000000001:0", "Who wrote this book?", ("Jane Doe",)),
        ("000000001:1", "What is the title?", ("A Book",)),
    ]
    assert items[0].image == images / "000000001.png"
    assert missing == [images / "000000003.jpg"]
    unchecked = read_ocrvqa(path, images, check_images=False)
    assert [i.key for i in unchecked] == ["000000001:0", "000000001:1", "000000003:0"]
    assert unchecked[2].answers == ("1999",)  # a JSON number answer
    assert [i.key for i in read_ocrvqa(path, images, split="train", check_images=False)] == ["000000002:0"]
    assert len(read_ocrvqa(path, images, check_images=False, limit=1)) == 1
