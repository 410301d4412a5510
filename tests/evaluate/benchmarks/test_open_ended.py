"""OwlEval, LLaVA-Bench and MM-Vet: reading, multi-turn grouping, and the answer files each benchmark's judge reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmgpt.evaluate.benchmarks.common import BenchmarkFormatError, PredictionError
from mmgpt.evaluate.benchmarks.open_ended import (
    conversations,
    read_llava_bench,
    read_mmvet,
    read_owleval,
    write_llava_bench_answers,
    write_mmvet_results,
    write_owleval_answers,
)
from tests.evaluate.benchmarks import published


def test_owleval_groups_multi_turn_questions_per_image(tmp_path: Path) -> None:
    path = published.write_owleval(tmp_path)
    items = read_owleval(path)
    assert [(i.key, i.conversation, i.turn) for i in items] == [
        (1, None, 0),
        (4, "owleval:4.jpg", 0),
        (2, None, 0),  # the published "]single_turn" typo is simply not multi-turn
        (5, "owleval:4.jpg", 1),
    ]
    assert items[0].image == tmp_path / "OwlEval/cases/1.jpg"
    assert [[i.key for i in group] for group in conversations(items)] == [[1], [4, 5], [2]]


def test_owleval_answer_file_adds_answer_and_model(tmp_path: Path) -> None:
    items = read_owleval(published.write_owleval(tmp_path))
    answers = {1: "A cat in a box.", 4: "Yes: 'Monday'.", 2: "It is ironic.", 5: "The pun."}
    out = write_owleval_answers(tmp_path / "answer/mmgpt_answer.jsonl", answers, items, model_id="mmgpt-test")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[1] == {
        "image": "4.jpg",
        "question_id": 4,
        "question": "Is there text?",
        "ability": "a,c",
        "category": ["single_turn", "multi_turn"],
        "answer": "Yes: 'Monday'.",
        "model_id": "mmgpt-test",
    }
    with pytest.raises(PredictionError, match=r"no prediction for 1 of 4 items \(first ids \[5\]\)"):
        write_owleval_answers(tmp_path / "x.jsonl", {1: "a", 4: "b", 2: "c"}, items)


def test_owleval_missing_category(tmp_path: Path) -> None:
    path = published.write_owleval(tmp_path)
    lines = path.read_text().splitlines()
    row = json.loads(lines[3])
    del row["category"]
    lines[3] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"questions\.jsonl line 4, field 'category': missing"):
        read_owleval(path)


def test_llava_bench(tmp_path: Path) -> None:
    items = read_llava_bench(published.write_llava_bench(tmp_path))
    assert [(i.key, i.question, i.category) for i in items] == [
        (0, "What is the name of this famous sight?", ("conv",)),
        (1, "Describe this photo in detail.", ("detail",)),
    ]
    assert items[0].image == tmp_path / "llava-bench-in-the-wild/images/001.jpg"
    out = write_llava_bench_answers(tmp_path / "answers/mmgpt.jsonl", {0: "The Eiffel Tower.", 1: "A city."}, items)
    first = json.loads(out.read_text().splitlines()[0])
    assert first == {
        "question_id": 0,
        "prompt": "What is the name of this famous sight?",
        "text": "The Eiffel Tower.",
        "answer_id": "mmgpt:0",
        "model_id": "mmgpt",
        "metadata": {},
    }


def test_mmvet(tmp_path: Path) -> None:
    items = read_mmvet(published.write_mmvet(tmp_path))
    assert [(i.key, i.reference, i.category) for i in items] == [
        ("v1_0", "-1 <AND> -5", ("ocr", "math")),
        ("v1_1", "a dog", ("rec",)),
    ]
    assert items[0].image == tmp_path / "mm-vet/images/v1_0.png"
    out = write_mmvet_results(tmp_path / "results/mmgpt.json", {"v1_0": "x = -1", "v1_1": "A dog."}, items)
    assert json.loads(out.read_text()) == {"v1_0": "x = -1", "v1_1": "A dog."}
