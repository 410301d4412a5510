"""A-OKVQA (``aokvqa_v1p0_val.json``): the reader, the official multiple-choice and direct-answer accuracies, and the
result file.

The file is a JSON list of ``{"split", "image_id", "question_id", "question", "choices", "correct_choice_idx",
"direct_answers": [10], "difficult_direct_answer", "rationales"}``; images ``{split}2017/{image_id:012d}.jpg``
under the COCO root (or the row's own ``image`` path, which some redistributions add).

Scoring follows allenai/aokvqa ``evaluation/eval_predictions.py`` (as its ``__main__`` calls it, non-strict):

- multiple choice, over every question: 1 when the predicted string equals ``choices[correct_choice_idx]``;
- direct answer, over the questions with ``difficult_direct_answer`` false: min(1, matches / 3) where matches
  counts the ten direct answers equal to the prediction - plain string equality, no normalisation, no leave-one-out;
- a setting is scored only when some prediction has it, and then a question without one scores 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmgpt.data.sources.aokvqa import aokvqa_image
from mmgpt.data.sources.base import RowError, require, string_list, text_field
from mmgpt.data.sources.jsonio import JsonFiles
from mmgpt.evaluate.benchmarks.common import ItemId, aligned, image_path, located, mean, take, write_json
from mmgpt.evaluate.benchmarks.items import MultipleChoiceItem

SETTINGS = ("multiple_choice", "direct_answer")


@dataclass(frozen=True)
class AokvqaPrediction:
    """One question's predictions: the chosen choice (a string of ``choices``) and a free-form answer."""

    multiple_choice: str | None = None
    direct_answer: str | None = None


def read_aokvqa(
    path: str | Path, image_root: str | Path | None = None, *, limit: int | None = None, check_images: bool = False
) -> list[MultipleChoiceItem]:
    """A-OKVQA questions with their answers (train or val; the test file has no answers to score)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    items = []
    for row in take(JsonFiles().array(path), limit):
        with located(path, row.where, "A-OKVQA"):
            value = row.value
            question_id = require(value, "question_id", (str, int))
            question = text_field(value, "question")
            choices = string_list(value, "choices", min_items=2)
            correct = require(value, "correct_choice_idx", int)
            if not 0 <= correct < len(choices):
                raise RowError("correct_choice_idx", f"{correct} is outside the {len(choices)} choices")
            direct = string_list(value, "direct_answers")
            difficult = require(value, "difficult_direct_answer", bool)
            rationales = string_list(value, "rationales", min_items=0) if "rationales" in value else []
            relative = aokvqa_image(value)
        image = image_path(root, relative, check=check_images, path=path, where=row.where)
        fields = (tuple(choices), correct, tuple(direct), difficult, tuple(rationales))
        items.append(MultipleChoiceItem(question_id, image, question, *fields))
    return items


def _prediction(value: AokvqaPrediction | Mapping[str, Any], key: ItemId) -> AokvqaPrediction:
    if isinstance(value, AokvqaPrediction):
        return value
    if isinstance(value, Mapping) and set(value) <= set(SETTINGS):
        return AokvqaPrediction(value.get("multiple_choice"), value.get("direct_answer"))
    expected = f"an AokvqaPrediction or a dict with keys {SETTINGS}"
    raise TypeError(f"A-OKVQA: the prediction for {key!r} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class AokvqaScore:
    """Accuracies in [0, 1] (None: no prediction had that setting) and each question's scores."""

    multiple_choice: float | None
    direct_answer: float | None
    n_multiple_choice: int
    n_direct_answer: int
    per_item_multiple_choice: dict[ItemId, float]
    per_item_direct_answer: dict[ItemId, float]

    metric = "aokvqa_multiple_choice"

    @property
    def headline(self) -> float:
        value = self.multiple_choice if self.multiple_choice is not None else self.direct_answer
        return 0.0 if value is None else value

    def summary(self) -> dict[str, float]:
        out = {}
        if self.multiple_choice is not None:
            out["aokvqa_multiple_choice"] = self.multiple_choice
        if self.direct_answer is not None:
            out["aokvqa_direct_answer"] = self.direct_answer
        return out


def direct_answer_accuracy(prediction: str, direct_answers: Sequence[str]) -> float:
    """min(1, matches / 3) over the ten direct answers, exact strings (A-OKVQA's own rule)."""
    return min(1.0, sum(prediction == answer for answer in direct_answers) / 3.0)


def score_aokvqa(
    predictions: Mapping[ItemId, AokvqaPrediction | Mapping[str, Any]], items: Sequence[MultipleChoiceItem]
) -> AokvqaScore:
    """The official MC and DA accuracies; ``predictions`` keyed by question id."""
    values = aligned(predictions, items, "A-OKVQA")
    given = [_prediction(value, item.key) for value, item in zip(values, items, strict=True)]
    mc: dict[ItemId, float] = {}
    da: dict[ItemId, float] = {}
    any_mc = any(p.multiple_choice is not None for p in given)
    any_da = any(p.direct_answer is not None for p in given)
    for item, prediction in zip(items, given, strict=True):
        if any_mc:
            mc[item.key] = float(prediction.multiple_choice == item.answer)
        if any_da and not item.difficult_direct_answer:
            guess = prediction.direct_answer
            da[item.key] = 0.0 if guess is None else direct_answer_accuracy(guess, item.direct_answers)
    return AokvqaScore(
        multiple_choice=mean(list(mc.values())) if any_mc else None,
        direct_answer=mean(list(da.values())) if any_da else None,
        n_multiple_choice=len(mc),
        n_direct_answer=len(da),
        per_item_multiple_choice=mc,
        per_item_direct_answer=da,
    )


def write_aokvqa_results(
    path: str | Path,
    predictions: Mapping[ItemId, AokvqaPrediction | Mapping[str, Any]],
    items: Sequence[MultipleChoiceItem],
) -> Path:
    """``{question_id: {"multiple_choice": str, "direct_answer": str}}``; a setting not predicted is left out."""
    out: dict[str, dict[str, str]] = {}
    for item, value in zip(items, aligned(predictions, items, "A-OKVQA results"), strict=True):
        prediction = _prediction(value, item.key)
        pair = (prediction.multiple_choice, prediction.direct_answer)
        out[str(item.key)] = {k: v for k, v in zip(SETTINGS, pair, strict=True) if v is not None}
    return write_json(path, out)
