"""Interleaved image-text for pretraining (OpenFlamingo's LAION / MMC4 style): JSON lines
``{"images": ["a.png", ...], "text": "<image>A caption.<|endofchunk|><image>..."}``, one ``<image>`` per image
in order (``images`` may be empty: plain text). Every text token is trained; no template is applied.
"""

from __future__ import annotations

import json

from mmgpt.data.document import Document
from mmgpt.data.sources.base import NoOptions, RowContext, RowError, SourceFormat, require, text_field
from mmgpt.data.sources.jsonio import Row
from mmgpt.tokens import IMAGE


def convert(row: Row, options: NoOptions, ctx: RowContext) -> list[Document]:
    if isinstance(row.value, json.JSONDecodeError):
        raise RowError("(line)", f"not JSON: {row.value.msg} at column {row.value.colno}")
    text = text_field(row.value, "text")
    paths = require(row.value, "images", list)
    if not all(isinstance(p, str) for p in paths):
        raise RowError("images", "expected a list of image paths (strings)")
    if text.count(IMAGE) != len(paths):
        raise RowError("text", f"{text.count(IMAGE)} {IMAGE} markers for {len(paths)} images")
    images = [ctx.image(p) for p in paths]
    return [Document(text, images, source=ctx.source, id=str(row.value.get("id", row.index)))]


FORMAT = SourceFormat(
    name="interleaved",
    summary="pretraining JSON lines: images + text with one <image> per image (every token trained)",
    options_type=NoOptions,
    rows=lambda path, options, files, resolve: files.lines(path),
    convert=convert,
)
