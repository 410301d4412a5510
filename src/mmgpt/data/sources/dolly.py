"""Dolly 15k (``databricks-dolly-15k.jsonl``): one ``{"instruction", "context", "response", "category"}`` per
line. A non-empty ``context`` is the template's ``### Input:`` section. Language-only.
"""

from __future__ import annotations

import json

from mmgpt.data.conversation import Conversation
from mmgpt.data.sources.base import NoOptions, RowContext, RowError, SourceFormat, instruction_sample
from mmgpt.data.sources.jsonio import Row


def convert(row: Row, options: NoOptions, ctx: RowContext) -> list[Conversation]:
    if isinstance(row.value, json.JSONDecodeError):
        raise RowError("(line)", f"not JSON: {row.value.msg} at column {row.value.colno}")
    return [instruction_sample(row, ctx, instruction="instruction", input="context", output="response")]


FORMAT = SourceFormat(
    name="dolly",
    summary="Dolly 15k JSON lines (instruction, context, response)",
    options_type=NoOptions,
    rows=lambda path, options, files, resolve: files.lines(path),
    convert=convert,
)
