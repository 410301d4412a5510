"""MiniGPT-4's aligned descriptions (cc_sbu_align: ``filter_cap.json`` + ``image/``).

``{"annotations": [{"image_id": "2", "caption": "The image shows ..."}, ...]}``; the image is
``image/{image_id}.jpg`` next to the file (the default image root is the file's folder). The caption is the
answer; the instruction is one of MiniGPT-4's description requests, fixed per row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmgpt.data.conversation import Conversation, single_turn
from mmgpt.data.sources.base import RowContext, RowError, SourceFormat, require, text_field
from mmgpt.data.sources.jsonio import JsonFiles, Row, SourceError
from mmgpt.data.templates import DESCRIPTION_INSTRUCTIONS


@dataclass(frozen=True)
class MiniGPT4Options:
    instructions: list[str] = field(default_factory=lambda: list(DESCRIPTION_INSTRUCTIONS))


def rows(path: Path, options: MiniGPT4Options, files: JsonFiles, resolve: object) -> Iterator[Row]:
    data = files.load(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise SourceError(f"{path}: expected {{'annotations': [...]}} at the top level (cc_sbu_align filter_cap.json)")
    for i, annotation in enumerate(data["annotations"]):
        yield Row(i, f"annotations[{i}]", annotation)


def convert(row: Row, options: MiniGPT4Options, ctx: RowContext) -> list[Conversation]:
    image_id = require(row.value, "image_id", (str, int))
    if not str(image_id).strip():
        raise RowError("image_id", "empty")
    caption = text_field(row.value, "caption").strip()
    image = ctx.image(f"image/{image_id}.jpg")
    question = ctx.pick(options.instructions, row)
    return [single_turn(question, caption, images=[image], source=ctx.source, id=str(image_id))]


FORMAT = SourceFormat(
    name="minigpt4",
    summary="MiniGPT-4 cc_sbu_align filter_cap.json ({'annotations': [{image_id, caption}]})",
    options_type=MiniGPT4Options,
    rows=rows,
    convert=convert,
)
