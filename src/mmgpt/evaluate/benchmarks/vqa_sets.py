"""Readers of the sets scored with the official VQA accuracy, and their result files.

- VQAv2 / OK-VQA: ``v2_OpenEnded_mscoco_val2014_questions.json`` ``{"questions": [{"image_id", "question",
  "question_id"}], "data_subtype"}`` joined by ``question_id`` with ``v2_mscoco_val2014_annotations.json``
  ``{"annotations": [{"question_id", "answers": [{"answer", ...}], "answer_type", "question_type"}]}`` (OK-VQA:
  ``OpenEnded_mscoco_val2014_questions.json`` + ``mscoco_val2014_annotations.json``). Images
  ``{subtype}/COCO_{subtype}_{image_id:012d}.jpg``. Results ``[{"question_id", "answer"}]``.
- TextVQA: ``TextVQA_0.5.1_val.json`` ``{"data": [{"question_id", "image_id", "question", "answers": [10]}]}``,
  images ``train_images/{image_id}.jpg`` (the val images ship in that folder). Results as VQAv2.
- VizWiz: ``val.json``, a list of ``{"image", "question", "answers": [{"answer", "answer_confidence"}],
  "answerable", "answer_type"}``; the image file name is the question's id. Results ``[{"image", "answer"}]``.

The image root defaults to the questions file's folder. Items keep file order; ``limit`` takes the first ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmgpt.data.sources.base import RowError, require, text_field
from mmgpt.data.sources.jsonio import JsonFiles, SourceError
from mmgpt.data.sources.vqa import default_annotations
from mmgpt.evaluate.benchmarks.common import (
    ItemId,
    aligned,
    image_path,
    located,
    take,
    top_level,
    write_json,
)
from mmgpt.evaluate.benchmarks.items import VqaItem

_SUBTYPE = re.compile(r"(train|val|test)20\d\d")


def _answer_strings(row: Any, *, at: str = "") -> tuple[str, ...]:
    """The human answers: ``[{"answer": ...}]`` (VQAv2, OK-VQA, VizWiz) or plain strings (TextVQA)."""
    answers = require(row, "answers", list, at=at)
    if not answers:
        raise RowError(at + "answers", "empty list; scoring needs the human answers")
    out = []
    for i, answer in enumerate(answers):
        if isinstance(answer, dict):
            answer = require(answer, "answer", str, at=f"{at}answers[{i}].")
        elif not isinstance(answer, str):
            raise RowError(f"{at}answers[{i}]", f"expected a string or {{'answer': ...}}, got {answer!r}")
        out.append(answer)
    return tuple(out)


def _optional_text(row: dict, key: str, *, at: str = "") -> str | None:
    return require(row, key, str, at=at) if key in row else None


def read_vqa(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    annotations: str | Path | None = None,
    subtype: str | None = None,
    limit: int | None = None,
    check_images: bool = False,
    benchmark: str = "VQAv2",
) -> list[VqaItem]:
    """VQAv2 / OK-VQA questions joined with their annotations (default: the sibling file the datasets name)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    files = JsonFiles()
    questions = top_level(files.load(path), dict, path, "{'questions': [...]} (a VQA questions file)")
    rows = top_level(questions.get("questions"), list, path, "a 'questions' list")
    subtype = subtype or questions.get("data_subtype")
    if not subtype:
        match = _SUBTYPE.search(path.name)
        if match is None:
            raise SourceError(f"{path}: no 'data_subtype' and none in the name; pass subtype='val2014'")
        subtype = match.group(0)
    annotations_path = Path(annotations) if annotations is not None else default_annotations(path)
    if not annotations_path.is_file():
        raise SourceError(f"{annotations_path}: no annotations file for {path.name}; pass annotations=PATH")
    loaded = top_level(files.load(annotations_path), dict, annotations_path, "{'annotations': [...]}")
    by_id = {
        a.get("question_id"): a
        for a in top_level(loaded.get("annotations"), list, annotations_path, "an 'annotations' list")
        if isinstance(a, dict)
    }

    def item(i: int, row: Any) -> VqaItem:
        where = f"questions[{i}]"
        with located(path, where, benchmark):
            question_id = require(row, "question_id", (int, str))
            image_id = require(row, "image_id", int)
            question = text_field(row, "question")
            annotation = by_id.get(question_id)
            if annotation is None:
                raise RowError("question_id", f"{question_id!r} has no entry in {annotations_path.name}")
        with located(annotations_path, f"annotation of question {question_id!r}", benchmark):
            answers = _answer_strings(annotation)
            answer_type = _optional_text(annotation, "answer_type")
            question_type = _optional_text(annotation, "question_type")
        relative = f"{subtype}/COCO_{subtype}_{image_id:012d}.jpg"
        image = image_path(root, relative, check=check_images, path=path, where=where)
        return VqaItem(question_id, image, question, answers, answer_type, question_type, image_id)

    return [item(i, row) for i, row in take(enumerate(rows), limit)]


def read_textvqa(
    path: str | Path, image_root: str | Path | None = None, *, limit: int | None = None, check_images: bool = False
) -> list[VqaItem]:
    """TextVQA ``{"data": [...]}`` with ten answer strings per question."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    document = top_level(JsonFiles().load(path), dict, path, "{'data': [...]} (TextVQA_0.5.1_*.json)")
    rows = top_level(document.get("data"), list, path, "a 'data' list")

    def item(i: int, row: Any) -> VqaItem:
        where = f"data[{i}]"
        with located(path, where, "TextVQA"):
            question_id = require(row, "question_id", (int, str))
            image_id = require(row, "image_id", str)
            question = text_field(row, "question")
            answers = _answer_strings(row)
        image = image_path(root, f"train_images/{image_id}.jpg", check=check_images, path=path, where=where)
        return VqaItem(question_id, image, question, answers, image_id=image_id)

    return [item(i, row) for i, row in take(enumerate(rows), limit)]


def read_vizwiz(
    path: str | Path, image_root: str | Path | None = None, *, limit: int | None = None, check_images: bool = False
) -> list[VqaItem]:
    """VizWiz ``val.json``; the question id is the image's file name, as in VizWiz's result format."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent

    def item(where: str, row: Any) -> VqaItem:
        with located(path, where, "VizWiz"):
            image = require(row, "image", str)
            question = text_field(row, "question")
            answers = _answer_strings(row)
            answer_type = _optional_text(row, "answer_type")
        file = image_path(root, image, check=check_images, path=path, where=where)
        return VqaItem(image, file, question, answers, answer_type=answer_type, image_id=image)

    return [item(row.where, row.value) for row in take(JsonFiles().array(path), limit)]


def vqa_results(predictions: Mapping[ItemId, str], items: Sequence[VqaItem]) -> list[dict[str, Any]]:
    """``[{"question_id", "answer"}]`` in item order (VQAv2, OK-VQA, TextVQA; OCR-VQA uses it too)."""
    answers = aligned(predictions, items, "VQA results")
    return [{"question_id": item.key, "answer": answer} for item, answer in zip(items, answers, strict=True)]


def write_vqa_results(path: str | Path, predictions: Mapping[ItemId, str], items: Sequence[VqaItem]) -> Path:
    return write_json(path, vqa_results(predictions, items))


def write_vizwiz_results(path: str | Path, predictions: Mapping[ItemId, str], items: Sequence[VqaItem]) -> Path:
    """``[{"image", "answer"}]``, the VizWiz evaluation server's format."""
    answers = aligned(predictions, items, "VizWiz results")
    return write_json(path, [{"image": i.key, "answer": a} for i, a in zip(items, answers, strict=True)])
