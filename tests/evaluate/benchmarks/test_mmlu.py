"""MMLU: the original CSV layout, the parquet layout, and accuracy per subject, micro and macro."""

from __future__ import annotations

import json
from pathlib import Path

import pandas
import pytest

from mmgpt.data.sources.jsonio import SourceError
from mmgpt.evaluate.benchmarks.items import MmluItem
from mmgpt.evaluate.benchmarks.mmlu import read_mmlu, score_mmlu, write_mmlu_results
from tests.evaluate.benchmarks import published


def test_original_csv_layout(tmp_path: Path) -> None:
    data = published.write_mmlu(tmp_path)
    items = read_mmlu(data)
    assert items[:2] == [
        MmluItem(
            "abstract_algebra/0", "abstract_algebra", "Find the degree of Q(sqrt(2)) over Q.", ("0", "4", "2", "6"), 2
        ),
        MmluItem("abstract_algebra/1", "abstract_algebra", "Is 1, 2, or 3 prime?", ("1", "2", "3", "none"), 1),
    ]
    assert [i.key for i in items] == ["abstract_algebra/0", "abstract_algebra/1", "abstract_algebra/2", "anatomy/0"]
    # the same items from the split folder or the repository root; limit is per subject
    assert read_mmlu(data / "test") == items == read_mmlu(tmp_path)
    assert [i.key for i in read_mmlu(data, limit=1)] == ["abstract_algebra/0", "anatomy/0"]
    assert [i.key for i in read_mmlu(data, subjects=["anatomy"])] == ["anatomy/0"]
    assert [i.key for i in read_mmlu(data, split="dev")] == ["anatomy/0"]
    assert read_mmlu(data / "test" / "anatomy_test.csv")[0].choices == ("femur", "ulna", "tibia", "skull")


def test_csv_errors_name_the_file_and_line(tmp_path: Path) -> None:
    data = published.write_mmlu(tmp_path)
    (data / "test" / "anatomy_test.csv").write_text("Which bone?,femur,ulna,tibia,skull,E\n")
    with pytest.raises(SourceError, match=r"anatomy_test\.csv line 1, field 'answer': expected one of"):
        read_mmlu(data)
    (data / "test" / "anatomy_test.csv").write_text("Which bone?,femur,ulna,D\n")
    with pytest.raises(SourceError, match=r"anatomy_test\.csv line 1: expected 6 columns .*, got 4"):
        read_mmlu(data)
    with pytest.raises(SourceError, match=r"no \{subject\}_val\.csv files"):
        read_mmlu(data, split="val")


def test_parquet_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = pandas.DataFrame(
        {
            "question": ["Q1?", "Q2?", "Q3?"],
            "subject": ["virology", "anatomy", "virology"],
            "choices": [["a", "b", "c", "d"], ["e", "f", "g", "h"], ["i", "j", "k", "l"]],
            "answer": [1, 3, 0],
        }
    )
    monkeypatch.setattr(pandas, "read_parquet", lambda path: frame)
    items = read_mmlu(tmp_path / "test-00000-of-00001.parquet")
    assert items == [
        MmluItem("anatomy/0", "anatomy", "Q2?", ("e", "f", "g", "h"), 3),
        MmluItem("virology/0", "virology", "Q1?", ("a", "b", "c", "d"), 1),
        MmluItem("virology/1", "virology", "Q3?", ("i", "j", "k", "l"), 0),
    ]


def test_parquet_without_an_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_engine(path: Path) -> None:
        raise ImportError("Unable to find a usable engine; tried using: 'pyarrow', 'fastparquet'.")

    monkeypatch.setattr(pandas, "read_parquet", no_engine)
    with pytest.raises(ImportError, match=r"test\.parquet needs a parquet engine: pip install pyarrow"):
        read_mmlu(tmp_path / "test.parquet")


def test_accuracy_micro_and_macro(tmp_path: Path) -> None:
    items = read_mmlu(published.write_mmlu(tmp_path))
    # abstract_algebra: 2 of 3 right; anatomy: 0 of 1 -> micro 2/4, macro (2/3 + 0) / 2
    predictions = {"abstract_algebra/0": 2, "abstract_algebra/1": "B", "abstract_algebra/2": 3, "anatomy/0": "A"}
    score = score_mmlu(predictions, items)
    assert (score.micro, score.macro, score.n) == (0.5, 1 / 3, 4)
    assert score.per_subject == {"abstract_algebra": 2 / 3, "anatomy": 0.0}
    assert score.headline == 0.5
    out = write_mmlu_results(tmp_path / "mmlu.json", predictions, items)
    assert json.loads(out.read_text()) == {
        "abstract_algebra/0": "C",
        "abstract_algebra/1": "B",
        "abstract_algebra/2": "D",
        "anatomy/0": "A",
    }
    with pytest.raises(TypeError, match="must be a choice index 0-3 or a letter A-D, got 4"):
        score_mmlu({**predictions, "anatomy/0": 4}, items)
