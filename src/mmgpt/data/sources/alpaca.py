"""Alpaca-GPT4 (``alpaca_gpt4_data.json``, and the original Alpaca): a JSON list of ``{"instruction",
"input", "output"}``; a non-empty ``input`` is the template's ``### Input:`` section. Language-only.
"""

from __future__ import annotations

from mmgpt.data.conversation import Conversation, single_turn
from mmgpt.data.sources.base import NoOptions, RowContext, SourceFormat, text_field
from mmgpt.data.sources.jsonio import Row


def convert(row: Row, options: NoOptions, ctx: RowContext) -> list[Conversation]:
    instruction = text_field(row.value, "instruction").strip()
    extra = text_field(row.value, "input", allow_empty=True).strip() if "input" in row.value else ""
    output = text_field(row.value, "output").strip()
    return [single_turn(instruction, output, input=extra or None, source=ctx.source, id=str(row.index))]


FORMAT = SourceFormat(
    name="alpaca",
    summary="Alpaca / Alpaca-GPT4 JSON list (instruction, input, output)",
    options_type=NoOptions,
    rows=lambda path, options, files, resolve: files.array(path),
    convert=convert,
)
