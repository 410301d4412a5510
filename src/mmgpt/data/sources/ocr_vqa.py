"""OCR-VQA (``dataset.json`` + the images the user's downloader saved).

A JSON object keyed by image id: ``{"000000000": {"imageURL", "questions": [...], "answers": [...],
"title", "authorName", "genre", "genreID", "split"}}`` with split 1 = train, 2 = val, 3 = test. Images are
``{id}.jpg`` (sometimes ``.png``/``.gif``); many downloads fail, so missing images are skipped and counted.
Each question/answer pair is one conversation, or all pairs of an image one multi-turn conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mmgpt.data.conversation import Conversation, Message
from mmgpt.data.sources.base import RowContext, RowError, RowFiltered, SourceFormat, require, string_list
from mmgpt.data.sources.jsonio import Row

SPLITS = {"train": 1, "val": 2, "test": 3}


@dataclass(frozen=True)
class OCRVQAOptions:
    split: Literal["train", "val", "test", "all"] = "train"
    multi_turn: bool = False


def convert(row: Row, options: OCRVQAOptions, ctx: RowContext) -> list[Conversation]:
    value = row.value
    split = require(value, "split", int)
    if options.split != "all" and split != SPLITS[options.split]:
        raise RowFiltered(f"not in split {options.split!r}")
    questions = string_list(value, "questions")
    answers = require(value, "answers", list)
    if len(answers) != len(questions):
        raise RowError("answers", f"{len(answers)} answers for {len(questions)} questions")
    for i, answer in enumerate(answers):
        # Some answers are numbers in the published file (years, volumes); they are still answers.
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool) or not str(answer).strip():
            raise RowError(f"answers[{i}]", f"expected a non-empty answer, got {answer!r}")
    key = row.key or str(row.index)
    image = ctx.image(f"{key}.jpg", f"{key}.png", f"{key}.gif")
    pairs = [(q.strip(), str(a).strip()) for q, a in zip(questions, answers, strict=True)]
    if options.multi_turn:
        messages = []
        for k, (q, a) in enumerate(pairs):
            messages += [Message("user", q, [image] if k == 0 else ()), Message("assistant", a)]
        return [Conversation(messages, source=ctx.source, id=key)]
    return [
        Conversation([Message("user", q, [image]), Message("assistant", a)], source=ctx.source, id=f"{key}:{k}")
        for k, (q, a) in enumerate(pairs)
    ]


FORMAT = SourceFormat(
    name="ocr_vqa",
    summary="OCR-VQA dataset.json keyed by image id; split filter; images {id}.jpg/.png/.gif",
    options_type=OCRVQAOptions,
    rows=lambda path, options, files, resolve: files.keyed(path),
    convert=convert,
)
