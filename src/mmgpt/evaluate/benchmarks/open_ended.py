"""Open-ended benchmarks judged by people or by GPT-4 (no automatic scorer here): OwlEval, LLaVA-Bench (in the
Wild) and MM-Vet - their readers, conversation grouping and answer files.

- OwlEval (mPLUG-Owl's ``OwlEval/questions.jsonl``, images ``cases/{image}``): ``{"image", "question_id",
  "question", "ability", "category": ["single_turn"] | ["multi_turn"] | both}``. Questions whose category has
  ``multi_turn`` are asked, in file order, in one conversation per image (the first of them is also the single-turn
  question); the others alone. Answers: the question objects with ``"answer"`` and ``"model_id"`` added, one JSON
  line each, one file per model (the layout of ``OwlEval/answer/*.jsonl``).
- LLaVA-Bench in the Wild (``questions.jsonl``, images ``images/{image}``): ``{"question_id", "image", "text",
  "category"}``. Answers in LLaVA's ``model_vqa`` layout, which its GPT-4 review script reads: ``{"question_id",
  "prompt", "text", "answer_id", "model_id", "metadata"}`` per line (``answer_id`` is ``{model_id}:{question_id}``
  instead of a random uuid, so a rerun writes the same file).
- MM-Vet (``mm-vet.json``, images ``images/{imagename}``): ``{"v1_0": {"imagename", "question", "answer",
  "capability": [...]}}``; the published answer is the item's ``reference``. Answers as its evaluator reads them:
  ``{"v1_0": "model answer", ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmgpt.data.sources.base import require, string_list, text_field
from mmgpt.data.sources.jsonio import JsonFiles
from mmgpt.evaluate.benchmarks.common import (
    ItemId,
    aligned,
    image_path,
    json_row,
    located,
    take,
    write_json,
    write_jsonl,
)
from mmgpt.evaluate.benchmarks.items import OpenEndedItem

MULTI_TURN = "multi_turn"


def _root(path: Path, image_root: str | Path | None, folder: str) -> Path:
    return Path(image_root) if image_root is not None else path.parent / folder


def read_owleval(
    path: str | Path, image_root: str | Path | None = None, *, limit: int | None = None, check_images: bool = False
) -> list[OpenEndedItem]:
    """OwlEval questions in file order; images default to ``cases/`` beside the file."""
    path = Path(path)
    root = _root(path, image_root, "cases")
    turns: dict[str, int] = {}
    items = []
    for row in take(JsonFiles().lines(path), limit):
        with located(path, row.where, "OwlEval"):
            value = json_row(row.value)
            image = require(value, "image", str)
            question_id = require(value, "question_id", (int, str))
            question = text_field(value, "question")
            category = string_list(value, "category")
        conversation, turn = None, 0
        if MULTI_TURN in category:
            conversation = f"owleval:{image}"
            turn = turns.get(conversation, 0)
            turns[conversation] = turn + 1
        file = image_path(root, image, check=check_images, path=path, where=row.where)
        items.append(OpenEndedItem(question_id, file, question, tuple(category), None, conversation, turn, value))
    return items


def read_llava_bench(
    path: str | Path, image_root: str | Path | None = None, *, limit: int | None = None, check_images: bool = False
) -> list[OpenEndedItem]:
    """LLaVA-Bench questions; images default to ``images/`` beside the file."""
    path = Path(path)
    root = _root(path, image_root, "images")
    items = []
    for row in take(JsonFiles().lines(path), limit):
        with located(path, row.where, "LLaVA-Bench"):
            value = json_row(row.value)
            question_id = require(value, "question_id", (int, str))
            image = require(value, "image", str)
            question = text_field(value, "text")
            category = require(value, "category", str)
        file = image_path(root, image, check=check_images, path=path, where=row.where)
        items.append(OpenEndedItem(question_id, file, question, (category,), row=value))
    return items


def read_mmvet(
    path: str | Path, image_root: str | Path | None = None, *, limit: int | None = None, check_images: bool = False
) -> list[OpenEndedItem]:
    """MM-Vet questions keyed ``v1_0``...; images default to ``images/`` beside the file."""
    path = Path(path)
    root = _root(path, image_root, "images")
    items = []
    for row in take(JsonFiles().keyed(path), limit):
        with located(path, row.where, "MM-Vet"):
            value = row.value
            image = require(value, "imagename", str)
            question = text_field(value, "question")
            reference = require(value, "answer", str)
            capability = string_list(value, "capability")
        file = image_path(root, image, check=check_images, path=path, where=row.where)
        items.append(OpenEndedItem(str(row.key), file, question, tuple(capability), reference, row=value))
    return items


def conversations(items: Sequence[OpenEndedItem]) -> list[list[OpenEndedItem]]:
    """The items as the conversations they are asked in: a question alone, or the turns of one conversation in
    order; each conversation stands where its first turn is."""
    groups: list[list[OpenEndedItem]] = []
    open_groups: dict[str, list[OpenEndedItem]] = {}
    for item in items:
        if item.conversation is None:
            groups.append([item])
        elif item.conversation in open_groups:
            open_groups[item.conversation].append(item)
        else:
            open_groups[item.conversation] = [item]
            groups.append(open_groups[item.conversation])
    for group in groups:
        group.sort(key=lambda item: item.turn)
    return groups


def _answers(predictions: Mapping[ItemId, str], items: Sequence[OpenEndedItem], benchmark: str) -> list[str]:
    answers = aligned(predictions, items, benchmark)
    for item, answer in zip(items, answers, strict=True):
        if not isinstance(answer, str):
            raise TypeError(f"{benchmark}: the answer to {item.key!r} must be a string, got {answer!r}")
    return answers


def write_owleval_answers(
    path: str | Path, predictions: Mapping[ItemId, str], items: Sequence[OpenEndedItem], *, model_id: str = "mmgpt"
) -> Path:
    """One line per question: the published object plus ``answer`` and ``model_id``."""
    answers = _answers(predictions, items, "OwlEval answers")
    rows: list[dict[str, Any]] = [
        {**item.row, "answer": answer, "model_id": model_id} for item, answer in zip(items, answers, strict=True)
    ]
    return write_jsonl(path, rows)


def write_llava_bench_answers(
    path: str | Path, predictions: Mapping[ItemId, str], items: Sequence[OpenEndedItem], *, model_id: str = "mmgpt"
) -> Path:
    """LLaVA's answer lines, in question order (its review script pairs questions and answers by line)."""
    answers = _answers(predictions, items, "LLaVA-Bench answers")
    rows = (
        {
            "question_id": item.key,
            "prompt": item.question,
            "text": answer,
            "answer_id": f"{model_id}:{item.key}",
            "model_id": model_id,
            "metadata": {},
        }
        for item, answer in zip(items, answers, strict=True)
    )
    return write_jsonl(path, rows)


def write_mmvet_results(path: str | Path, predictions: Mapping[ItemId, str], items: Sequence[OpenEndedItem]) -> Path:
    """``{"v1_0": answer, ...}``, the results file MM-Vet's evaluator grades."""
    answers = _answers(predictions, items, "MM-Vet results")
    return write_json(path, {str(item.key): answer for item, answer in zip(items, answers, strict=True)})
