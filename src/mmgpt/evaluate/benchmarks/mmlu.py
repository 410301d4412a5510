"""MMLU (language retention): the reader of both published layouts and the accuracy per subject.

- the original release: ``data/{split}/{subject}_{split}.csv`` without a header, columns question, A, B, C, D and
  the answer letter. ``path`` may be the ``data`` folder, the split folder or one CSV file.
- a parquet file with columns ``question, subject, choices, answer`` (answer a 0-3 index; Hugging Face's
  ``cais/mmlu``). Reading it needs pandas with pyarrow (or fastparquet).

Items are ordered by subject (sorted), then file order; ``limit`` takes at most that many questions of EACH
subject (as harnesses limit MMLU), so a limited run still covers every subject. ``dev`` (five per subject) is the
few-shot pool. The headline is the accuracy over all questions (micro, as the original ``evaluate.py`` reports);
the macro average over subjects is given too.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmgpt.data.sources.jsonio import SourceError
from mmgpt.evaluate.benchmarks.common import ItemId, aligned, check_limit, mean, write_json
from mmgpt.evaluate.benchmarks.items import MmluItem

LETTERS = ("A", "B", "C", "D")
SPLITS = ("dev", "val", "test")


def _csv_files(path: Path, split: str) -> list[Path]:
    if path.is_file():
        return [path]
    for folder in (path / split, path / "data" / split, path):
        files = sorted(folder.glob(f"*_{split}.csv")) if folder.is_dir() else []
        if files:
            return files
    raise SourceError(f"{path}: no {{subject}}_{split}.csv files here or in {split}/ or data/{split}/")


def _read_csv(file: Path, split: str) -> list[MmluItem]:
    subject = file.stem.removesuffix(f"_{split}")
    items = []
    with file.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 6:
                expected = "6 columns (question, A, B, C, D, answer letter)"
                raise SourceError(f"{file} line {number}: expected {expected}, got {len(row)}")
            answer = row[5].strip()
            if answer not in LETTERS:
                raise SourceError(f"{file} line {number}, field 'answer': expected one of {LETTERS}, got {answer!r}")
            items.append(MmluItem(f"{subject}/{len(items)}", subject, row[0], tuple(row[1:5]), LETTERS.index(answer)))
    return items


def _read_parquet(path: Path) -> list[MmluItem]:
    try:
        import pandas
    except ImportError:
        fix = "pip install pandas pyarrow, or use the original CSV release (data/test/*_test.csv)"
        raise ImportError(f"reading {path} needs pandas and pyarrow: {fix}") from None
    try:
        frame = pandas.read_parquet(path)
    except ImportError as error:
        raise ImportError(f"reading {path} needs a parquet engine: pip install pyarrow ({error})") from None
    missing = [c for c in ("question", "subject", "choices", "answer") if c not in frame.columns]
    if missing:
        raise SourceError(f"{path}: no column(s) {missing}; expected question, subject, choices, answer")
    counts: dict[str, int] = defaultdict(int)
    items = []
    for number, row in enumerate(frame[["question", "subject", "choices", "answer"]].itertuples(index=False)):
        question, subject, choices, answer = row
        choices = tuple(str(c) for c in choices)
        if isinstance(answer, str) and answer in LETTERS:
            answer = LETTERS.index(answer)
        if not 0 <= int(answer) < len(choices):
            problem = f"{answer!r} is not an index of the {len(choices)} choices"
            raise SourceError(f"{path} row {number}, field 'answer': {problem}")
        items.append(MmluItem(f"{subject}/{counts[subject]}", str(subject), str(question), choices, int(answer)))
        counts[subject] += 1
    return items


def _per_subject(items: Iterable[MmluItem], subjects: Sequence[str] | None, limit: int | None) -> list[MmluItem]:
    grouped: dict[str, list[MmluItem]] = defaultdict(list)
    for item in items:
        grouped[item.subject].append(item)
    if subjects is not None:
        unknown = sorted(set(subjects) - set(grouped))
        if unknown:
            raise ValueError(f"no MMLU subject(s) {unknown}; the files have {sorted(grouped)[:5]}...")
    chosen = sorted(grouped) if subjects is None else sorted(subjects)
    return [item for subject in chosen for item in grouped[subject][: limit if limit is not None else None]]


def read_mmlu(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    split: str = "test",
    subjects: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[MmluItem]:
    """MMLU questions of ``split``; ``image_root`` is unused (text only); ``limit`` is per subject."""
    if split not in SPLITS:
        raise ValueError(f"MMLU split must be one of {SPLITS}, got {split!r}")
    check_limit(limit)
    path = Path(path)
    if path.suffix == ".parquet":
        items = _read_parquet(path)
    else:
        items = [item for file in _csv_files(path, split) for item in _read_csv(file, split)]
    return _per_subject(items, subjects, limit)


@dataclass(frozen=True)
class MmluScore:
    """Accuracy over all questions (micro), the mean of the subjects' accuracies (macro), and each subject's."""

    micro: float
    macro: float
    per_subject: dict[str, float]
    n: int

    metric = "mmlu_accuracy"

    @property
    def headline(self) -> float:
        return self.micro

    def summary(self) -> dict[str, float]:
        return {"mmlu_accuracy": self.micro, "mmlu_macro_accuracy": self.macro}


def _index(prediction: Any, key: ItemId) -> int:
    if isinstance(prediction, str) and prediction in LETTERS:
        return LETTERS.index(prediction)
    if isinstance(prediction, int) and not isinstance(prediction, bool) and 0 <= prediction < len(LETTERS):
        return prediction
    raise TypeError(f"MMLU: the prediction for {key!r} must be a choice index 0-3 or a letter A-D, got {prediction!r}")


def score_mmlu(predictions: Mapping[ItemId, int | str], items: Sequence[MmluItem]) -> MmluScore:
    """Accuracy of predicted choices (index or letter) keyed by item id."""
    guesses = aligned(predictions, items, "MMLU")
    by_subject: dict[str, list[bool]] = defaultdict(list)
    for item, guess in zip(items, guesses, strict=True):
        by_subject[item.subject].append(_index(guess, item.key) == item.answer_index)
    per_subject = {subject: mean(hits) for subject, hits in sorted(by_subject.items())}
    every = [hit for hits in by_subject.values() for hit in hits]
    return MmluScore(mean(every), mean(list(per_subject.values())), per_subject, len(items))


def write_mmlu_results(path: str | Path, predictions: Mapping[ItemId, int | str], items: Sequence[MmluItem]) -> Path:
    """``{id: letter}`` (MMLU has no official result file)."""
    guesses = aligned(predictions, items, "MMLU results")
    return write_json(path, {item.key: LETTERS[_index(g, item.key)] for item, g in zip(items, guesses, strict=True)})
