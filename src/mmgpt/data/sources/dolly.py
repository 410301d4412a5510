"""Dolly 15k (``databricks-dolly-15k.jsonl``): one ``{"instruction", "context", "response", "category"}`` per
line. A non-empty ``context`` is the template's ``### Input:`` section. Language-only.
"""

from __future__ import annotations

import json

from mmgpt.data.conversation import Conversation, single_turn
from mmgpt.data.sources.base import NoOptions, RowContext, RowError, SourceFormat, text_field
from mmgpt.data.sources.jsonio import Row


def convert(row: Row, options: NoOptions, ctx: RowContext) -> list[Conversation]:
    if isinstance(row.value, json.JSONDecodeError):
        raise RowError("(line)", f"not JSON: {row.value.msg} at column {row.value.colno}")
    instruction = text_field(row.value, "instruction").strip()
    context = text_field(row.value, "context", allow_empty=True).strip() if "context" in row.value else ""
    response = text_field(row.value, "response").strip()
    return [single_turn(instruction, response, input=context or None, source=ctx.source, id=str(row.index))]


FORMAT = SourceFormat(
    name="dolly",
    summary="Dolly 15k JSON lines (instruction, context, response)",
    options_type=NoOptions,
    rows=lambda path, options, files, resolve: files.lines(path),
    convert=convert,
)
