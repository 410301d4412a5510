"""VQA v2 and OK-VQA: a questions file joined with its annotations file by ``question_id``.

Questions ``{"questions": [{"image_id", "question", "question_id"}], "data_subtype": "train2014"}`` and
annotations ``{"annotations": [{"question_id", "image_id", "answers", "multiple_choice_answer"}]}``. The
answer is ``multiple_choice_answer`` (the most frequent human answer). Images are COCO 2014:
``{subtype}/COCO_{subtype}_{image_id:012d}.jpg`` under the COCO root. Excluded from the paper's recipe (one-
or two-word answers teach terse replies); loadable for evaluation and ablations.

``annotations`` defaults to the questions file's sibling named as both datasets name it
(``v2_OpenEnded_mscoco_train2014_questions.json`` -> ``v2_mscoco_train2014_annotations.json``); ``subtype``
defaults to the file's ``data_subtype``, else to the ``train2014``-like part of its name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from mmgpt.data.conversation import Conversation, single_turn
from mmgpt.data.sources.base import RowContext, RowError, SourceFormat, require, text_field
from mmgpt.data.sources.jsonio import JsonFiles, Row, SourceError

_SUBTYPE = re.compile(r"(train|val|test)20\d\d")


@dataclass(frozen=True)
class VQAOptions:
    annotations: str | None = None
    subtype: str | None = None


class _Question(NamedTuple):
    question: Any
    annotation: Any | None
    subtype: str


def default_annotations(questions: Path) -> Path:
    name = questions.name.replace("OpenEnded_", "").replace("_questions", "_annotations")
    return questions.with_name(name)


def rows(path: Path, options: VQAOptions, files: JsonFiles, resolve: Callable[[str], Path]) -> Iterator[Row]:
    questions = files.load(path)
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise SourceError(f"{path}: expected {{'questions': [...]}} (a VQA v2 / OK-VQA questions file)")
    subtype = options.subtype or questions.get("data_subtype")
    if not subtype:
        match = _SUBTYPE.search(path.name)
        if match is None:
            raise SourceError(f"{path}: cannot tell the COCO folder (e.g. train2014); set options.subtype")
        subtype = match.group(0)
    annotations_path = resolve(options.annotations) if options.annotations else default_annotations(path)
    if not annotations_path.is_file():
        raise SourceError(
            f"{annotations_path}: no such annotations file for {path.name}; set options.annotations to its path"
        )
    annotations = files.load(annotations_path)
    if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
        raise SourceError(f"{annotations_path}: expected {{'annotations': [...]}}")
    by_question = {
        a.get("question_id"): a for a in annotations["annotations"] if isinstance(a, dict) and "question_id" in a
    }
    for i, question in enumerate(questions["questions"]):
        annotation = by_question.get(question.get("question_id")) if isinstance(question, dict) else None
        yield Row(i, f"questions[{i}]", _Question(question, annotation, subtype))


def convert(row: Row, options: VQAOptions, ctx: RowContext) -> list[Conversation]:
    question, annotation, subtype = row.value
    text = text_field(question, "question").strip()
    question_id = require(question, "question_id", (int, str))
    image_id = require(question, "image_id", int)
    if annotation is None:
        raise RowError("question_id", f"{question_id!r} has no entry in the annotations file")
    answer = text_field(annotation, "multiple_choice_answer", at="annotation.").strip()
    image = ctx.image(f"{subtype}/COCO_{subtype}_{image_id:012d}.jpg")
    return [single_turn(text, answer, images=[image], source=ctx.source, id=str(question_id))]


FORMAT = SourceFormat(
    name="vqa",
    summary="VQA v2 / OK-VQA questions + annotations files (evaluation and ablations)",
    options_type=VQAOptions,
    rows=rows,
    convert=convert,
)
