"""POPE (object hallucination): the reader, the official answer parsing and metrics, and the answer file.

``coco_pope_{random,popular,adversarial}.json`` hold one JSON object per line: ``{"question_id", "image", "text",
"label": "yes"|"no"}``; ``image`` is a COCO val2014 file name under the image root.

Following RUCAIBox/POPE ``evaluate.py``: an answer is cut at its first period, commas are removed, and it is split
on single spaces; it means "no" when a word is exactly ``No``, ``no`` or ``not``, else "yes" (so "I don't think
so" counts as yes, as in the official script). "yes" is the positive class. Where the official script would divide
by zero (no positive predictions, say), the metric is 0.0 here.

The answer file is POPE's: one ``{"question", "answer"}`` per line in the question file's order (with the
``question_id`` added).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mmgpt.data.sources.base import RowError, require, text_field
from mmgpt.data.sources.jsonio import JsonFiles
from mmgpt.evaluate.benchmarks.common import (
    ItemId,
    aligned,
    image_path,
    json_row,
    located,
    take,
    write_jsonl,
)
from mmgpt.evaluate.benchmarks.items import YesNoItem

NO_WORDS = frozenset({"No", "no", "not"})


def read_pope(
    path: str | Path, image_root: str | Path | None = None, *, limit: int | None = None, check_images: bool = False
) -> list[YesNoItem]:
    """POPE questions in file order."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    items = []
    for row in take(JsonFiles().lines(path), limit):
        with located(path, row.where, "POPE"):
            value = json_row(row.value)
            question_id = require(value, "question_id", (int, str))
            image = require(value, "image", str)
            question = text_field(value, "text")
            label = require(value, "label", str)
            if label not in ("yes", "no"):
                raise RowError("label", f"expected 'yes' or 'no', got {label!r}")
        file = image_path(root, image, check=check_images, path=path, where=row.where)
        items.append(YesNoItem(question_id, file, question, label))  # type: ignore[arg-type]
    return items


def parse_pope_answer(text: str) -> Literal["yes", "no"]:
    """The official reading of a free-form answer as yes or no."""
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if NO_WORDS.intersection(words) else "yes"


@dataclass(frozen=True)
class PopeScore:
    """The five numbers POPE reports (fractions), the confusion counts, and each question's parsed answer."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    tp: int
    fp: int
    tn: int
    fn: int
    parsed: dict[ItemId, str]

    metric = "pope_f1"

    @property
    def headline(self) -> float:
        return self.f1

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def summary(self) -> dict[str, float]:
        return {
            "pope_accuracy": self.accuracy,
            "pope_precision": self.precision,
            "pope_recall": self.recall,
            "pope_f1": self.f1,
            "pope_yes_ratio": self.yes_ratio,
        }


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def score_pope(predictions: Mapping[ItemId, str], items: Sequence[YesNoItem]) -> PopeScore:
    """POPE's metrics of free-form answers keyed by question id."""
    answers = aligned(predictions, items, "POPE")
    parsed = {item.key: parse_pope_answer(answer) for item, answer in zip(items, answers, strict=True)}
    tp = sum(parsed[i.key] == "yes" and i.label == "yes" for i in items)
    fp = sum(parsed[i.key] == "yes" and i.label == "no" for i in items)
    tn = sum(parsed[i.key] == "no" and i.label == "no" for i in items)
    fn = sum(parsed[i.key] == "no" and i.label == "yes" for i in items)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return PopeScore(
        accuracy=_ratio(tp + tn, len(items)),
        precision=precision,
        recall=recall,
        f1=_ratio(2 * precision * recall, precision + recall),
        yes_ratio=_ratio(tp + fp, len(items)),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        parsed=parsed,
    )


def write_pope_answers(path: str | Path, predictions: Mapping[ItemId, str], items: Sequence[YesNoItem]) -> Path:
    """POPE's answer file: ``{"question_id", "question", "answer"}`` per line, in item order."""
    answers = aligned(predictions, items, "POPE answers")
    rows = ({"question_id": i.key, "question": i.question, "answer": a} for i, a in zip(items, answers, strict=True))
    return write_jsonl(path, rows)
