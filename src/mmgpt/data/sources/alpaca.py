"""Alpaca-GPT4 (``alpaca_gpt4_data.json``, and the original Alpaca): a JSON list of ``{"instruction",
"input", "output"}``; a non-empty ``input`` is the template's ``### Input:`` section. Language-only.
"""

from __future__ import annotations

from mmgpt.data.conversation import Conversation
from mmgpt.data.sources.base import NoOptions, RowContext, SourceFormat, instruction_sample
from mmgpt.data.sources.jsonio import Row


def convert(row: Row, options: NoOptions, ctx: RowContext) -> list[Conversation]:
    return [instruction_sample(row, ctx, instruction="instruction", input="input", output="output")]


FORMAT = SourceFormat(
    name="alpaca",
    summary="Alpaca / Alpaca-GPT4 JSON list (instruction, input, output)",
    options_type=NoOptions,
    rows=lambda path, options, files, resolve: files.array(path),
    convert=convert,
)
