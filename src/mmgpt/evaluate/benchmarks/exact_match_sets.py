"""Readers of the one-answer VQA sets, scored by exact match after the VQA normalisation: GQA and OCR-VQA.

- GQA: ``testdev_balanced_questions.json`` ``{"qid": {"imageId", "question", "answer", "fullAnswer", "types":
  {"structural", "semantic", "detailed"}, ...}}``; images ``{imageId}.jpg``. The breakdown is by the structural type
  (verify, query, choose, logical, compare), as GQA's own evaluation reports it. Results in GQA's submission format
  ``[{"questionId", "prediction"}]``.
- OCR-VQA: ``dataset.json`` keyed by image id ``{"id": {"imageURL", "questions", "answers", "title", ..., "split"}}``,
  split 1 = train, 2 = val, 3 = test (default); one item per question, id ``{image id}:{k}``; images ``{id}.jpg``
  (or ``.png``/``.gif``, as the downloader saved it). Downloads fail often, so by default an item whose image is
  missing is skipped, and its path appended to ``missing_images`` when the caller passes a list. OCR-VQA publishes
  no result format; results are written as VQAv2's ``[{"question_id", "answer"}]``.

GQA and OCR-VQA files are keyed objects: they are streamed in file order, which is also the items' order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmgpt.data.sources.base import RowError, require, string_list, text_field
from mmgpt.data.sources.jsonio import JsonFiles
from mmgpt.evaluate.benchmarks.common import ItemId, aligned, image_path, located, take, write_json
from mmgpt.evaluate.benchmarks.items import VqaItem

OCRVQA_SPLITS = {"train": 1, "val": 2, "test": 3}
OCRVQA_IMAGE_SUFFIXES = (".jpg", ".png", ".gif")


def read_gqa(
    path: str | Path, image_root: str | Path | None = None, *, limit: int | None = None, check_images: bool = False
) -> list[VqaItem]:
    """GQA questions keyed by question id (e.g. ``testdev_balanced_questions.json``)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent

    def items() -> Iterator[VqaItem]:
        for row in JsonFiles().keyed(path):
            with located(path, row.where, "GQA"):
                value = row.value
                question = text_field(value, "question")
                answer = require(value, "answer", str)
                image_id = require(value, "imageId", str)
                types = require(value, "types", dict) if "types" in value else {}
            structural, semantic = types.get("structural"), types.get("semantic")
            image = image_path(root, f"{image_id}.jpg", check=check_images, path=path, where=row.where)
            yield VqaItem(str(row.key), image, question, (answer,), structural, semantic, image_id)

    return take(items(), limit)


def write_gqa_results(path: str | Path, predictions: Mapping[ItemId, str], items: Sequence[VqaItem]) -> Path:
    """``[{"questionId", "prediction"}]``, GQA's submission format."""
    answers = aligned(predictions, items, "GQA results")
    return write_json(path, [{"questionId": i.key, "prediction": a} for i, a in zip(items, answers, strict=True)])


def _answers(value: Any, questions: list[str]) -> list[str]:
    answers = require(value, "answers", list)
    if len(answers) != len(questions):
        raise RowError("answers", f"{len(answers)} answers for {len(questions)} questions")
    out = []
    for i, answer in enumerate(answers):
        # Some published answers are JSON numbers (years, volume numbers); they are still answers.
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
            raise RowError(f"answers[{i}]", f"expected a non-empty answer, got {answer!r}")
        out.append(str(answer))
    return out


def read_ocrvqa(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    split: str = "test",
    limit: int | None = None,
    check_images: bool = True,
    missing_images: list[Path] | None = None,
) -> list[VqaItem]:
    """OCR-VQA questions of one split (``train``, ``val``, ``test``); see the module notes on missing images."""
    if split not in OCRVQA_SPLITS:
        raise ValueError(f"OCR-VQA split must be one of {sorted(OCRVQA_SPLITS)}, got {split!r}")
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent

    def image_of(key: str) -> Path | None:
        candidates = [root / f"{key}{suffix}" for suffix in OCRVQA_IMAGE_SUFFIXES]
        if not check_images:
            return candidates[0]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None and missing_images is not None:
            missing_images.append(candidates[0])
        return found

    def items() -> Iterator[VqaItem]:
        for row in JsonFiles().keyed(path):
            with located(path, row.where, "OCR-VQA"):
                value = row.value
                if require(value, "split", int) != OCRVQA_SPLITS[split]:
                    continue
                questions = string_list(value, "questions")
                answers = _answers(value, questions)
            key = str(row.key)
            image = image_of(key)
            if image is None:
                continue
            for k, (question, answer) in enumerate(zip(questions, answers, strict=True)):
                yield VqaItem(f"{key}:{k}", image, question, (answer,), image_id=key)

    return take(items(), limit)
