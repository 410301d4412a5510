"""Reading predictions back from a benchmark's official RESULT file - ours or another codebase's - for scoring
without a model (``mmgpt eval score``).

The formats (each benchmark's ``results`` layout: what its ``write`` writes, and what the official evaluations read):

| benchmark | result file | key, prediction |
|---|---|---|
| vqav2, okvqa, textvqa, ocrvqa | ``[{"question_id", "answer"}]`` | question_id, answer |
| vizwiz | ``[{"image", "answer"}]`` | image, answer |
| gqa | ``[{"questionId", "prediction"}]`` | questionId, prediction |
| coco, flickr30k | ``[{"image_id", "caption"}]`` | image_id, caption |
| aokvqa | ``{question_id: {"multiple_choice", "direct_answer"}}`` | question_id, the pair |
| pope | one ``{"question_id"?, "question"?, "answer"}`` per line | question_id (or the line's position), answer |
| hatefulmemes | CSV ``id,proba,label`` | id, proba |
| imagenet | ``[{"id", "label"}]`` | id, label |
| mmlu | ``{id: letter}`` | id, letter |
| dolly, alpaca | one ``{"id", "prediction"}`` per line | id, prediction |
| owleval | one ``{"question_id", ..., "answer"}`` per line | question_id, answer |
| llava-bench | one ``{"question_id", ..., "text"}`` per line | question_id, text |
| mm-vet | ``{id: answer}`` | id, answer |

Edge cases, each an explicit choice:

- a key twice: an error naming both rows, or with ``duplicates="last"`` the last one counts - as the official VQA
  API's ``loadRes`` does (it indexes results in a dict). (COCO's caption evaluation fails on a duplicate: BLEU
  asserts one caption per image.)
- items without a prediction: an error (``missing="error"``); ``"zero"`` scores them as wrong answers (an empty
  answer; A-OKVQA's ``eval_predictions.py`` run as a script does this), ``"skip"`` scores only the predicted items
  (COCO's caption evaluation scores the images of the results file). Either way the count is reported.
- a key that is not among the items: always an error (the official VQA API asserts it).
- ids written as strings where the annotations have numbers (or the reverse) match when their text is equal.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgpt.evaluate.benchmarks import Benchmark, PredictionError

DUPLICATES = ("error", "last")
MISSING = ("error", "zero", "skip")
ZERO_ALLOWED = ("vqa", "caption", "multiple_choice", "instruction")
LINE = "line"


class ResultFormatError(ValueError):
    """A results file without its benchmark's shape: names the file, the row and the field."""


@dataclass
class ReadPredictions:
    """Predictions by item key, with what was done about duplicates and missing items."""

    predictions: dict[Any, Any]
    items: list[Any]
    duplicates: list[Any] = field(default_factory=list)
    missing: list[Any] = field(default_factory=list)


def _rows(path: Path, bench: Benchmark) -> list[tuple[str, Any, Any]]:
    """(where, key, prediction) of every row, in file order, read as the benchmark's result file is laid out."""
    layout = bench.results
    text = path.read_text(encoding="utf-8")
    if layout.form == "csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and not {layout.key, layout.prediction} <= set(rows[0]):
            expected = f"{layout.key},{layout.prediction}"
            raise ResultFormatError(f"{path}: expected the columns {expected}; got {list(rows[0])}")
        out = []
        for n, row in enumerate(rows, start=2):
            try:
                out.append((f"line {n}", row[layout.key], float(row[layout.prediction])))
            except (TypeError, ValueError):
                raise ResultFormatError(
                    f"{path} line {n}, field {layout.prediction!r}: not a number: {row[layout.prediction]!r}"
                ) from None
        return out
    if layout.form == "lines":
        values = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    values.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise ResultFormatError(f"{path} line {n}: not JSON ({error.msg})") from None
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ResultFormatError(f"{path}: not JSON ({error.msg} at line {error.lineno})") from None
        if layout.form == "mapping":
            if not isinstance(document, dict):
                found = type(document).__name__
                raise ResultFormatError(f"{path}: expected an object of predictions by id, found {found}")
            return [(f"key {k!r}", k, v) for k, v in document.items()]
        if not isinstance(document, list):
            raise ResultFormatError(f"{path}: expected a list of result objects, found {type(document).__name__}")
        values = [(f"row {n}", value) for n, value in enumerate(document)]
    out = []
    for position, (where, value) in enumerate(values):
        if not isinstance(value, dict):
            raise ResultFormatError(f"{path} {where}: expected an object, got {value!r}")
        if layout.by_line and layout.key not in value:
            key = (LINE, position)  # answers without ids pair with the questions by line
        elif layout.key not in value:
            raise ResultFormatError(f"{path} {where}, field {layout.key!r}: missing ({bench.name} results)")
        else:
            key = value[layout.key]
        if layout.prediction not in value:
            raise ResultFormatError(f"{path} {where}, field {layout.prediction!r}: missing ({bench.name} results)")
        out.append((where, key, value[layout.prediction]))
    return out


def read_predictions(
    path: str | Path,
    bench: Benchmark,
    items: Sequence[Any],
    *,
    duplicates: str = "error",
    missing: str = "error",
) -> ReadPredictions:
    """The predictions of ``path`` keyed as ``items`` are, and the items to score (see the module docstring)."""
    if duplicates not in DUPLICATES or missing not in MISSING:
        raise ValueError(f"duplicates must be one of {DUPLICATES} and missing one of {MISSING}")
    if missing == "zero" and bench.kind not in ZERO_ALLOWED:
        raise ValueError(f"{bench.name} predictions are not answers that can be empty; use missing='skip' or 'error'")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file")
    by_text: dict[Any, Any] = {str(item.key): item.key for item in items}
    by_text.update({str((LINE, n)): item.key for n, item in enumerate(items)})  # POPE answers without ids
    seen: dict[Any, str] = {}
    predictions: dict[Any, Any] = {}
    repeated: list[Any] = []
    unknown: list[tuple[str, Any]] = []
    for where, raw_key, value in _rows(path, bench):
        key = by_text.get(str(raw_key))
        if key is None:
            unknown.append((where, raw_key))
            continue
        if key in seen:
            if duplicates == "error":
                raise PredictionError(
                    f"{path} {where}: id {raw_key!r} was already predicted at {seen[key]}; remove one, or pass "
                    "--duplicates last to keep the last (the official VQA API keeps the last)"
                )
            repeated.append(key)
        seen[key] = where
        predictions[key] = value
    if unknown:
        shown = ", ".join(f"{w}: {k!r}" for w, k in unknown[:3])
        raise PredictionError(
            f"{path}: {len(unknown)} predictions have ids that are not in the annotations ({shown}); are these "
            f"predictions of another split or file? (annotation ids look like {items[0].key!r})"
            if items
            else f"{path}: there are no annotation items to match the predictions against"
        )
    absent = [item.key for item in items if item.key not in predictions]
    if absent and missing == "error":
        raise PredictionError(
            f"{path}: no prediction for {len(absent)} of {len(items)} items (first ids {absent[:3]!r}); predict every "
            "item, or pass --missing zero (count them wrong) or --missing skip (score the predicted ones only)"
        )
    scored = list(items)
    if missing == "zero":
        empty = {"multiple_choice": None, "direct_answer": None} if bench.kind == "multiple_choice" else ""
        predictions.update({key: empty for key in absent})
    elif missing == "skip":
        scored = [item for item in items if item.key in predictions]
    return ReadPredictions(predictions, scored, repeated, absent)
