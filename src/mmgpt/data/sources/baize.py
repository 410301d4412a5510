"""Baize (``quora_chat_data.json``, ``stackoverflow_chat_data.json``, ...): a JSON list of ``{"topic",
"input"}`` where ``input`` is one transcript::

    The conversation between human and AI assistant.
    [|Human|] ...
    [|AI|] ...
    [|Human|]

The text before the first marker (the system line) is dropped, and so is a trailing human turn without an
answer (usually empty). What remains must alternate human/AI. Language-only, multi-turn.
"""

from __future__ import annotations

import re

from mmgpt.data.conversation import Conversation, Message
from mmgpt.data.sources.base import NoOptions, RowContext, RowError, SourceFormat, text_field
from mmgpt.data.sources.jsonio import Row

_MARKER = re.compile(r"\[\|(Human|AI)\|\]")


def parse_transcript(transcript: str) -> list[tuple[str, str]]:
    """(speaker, text) turns, speaker "Human" or "AI"; the system line before the first marker is dropped."""
    parts = _MARKER.split(transcript)
    # split() with one group gives [preamble, speaker, text, speaker, text, ...].
    return [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts), 2)]


def convert(row: Row, options: NoOptions, ctx: RowContext) -> list[Conversation]:
    turns = parse_transcript(text_field(row.value, "input"))
    if turns and turns[-1][0] == "Human":
        turns.pop()
    if not turns:
        raise RowError("input", "no [|Human|] ... [|AI|] exchange in the transcript")
    messages = []
    for i, (speaker, text) in enumerate(turns):
        expected = "Human" if i % 2 == 0 else "AI"
        if speaker != expected:
            raise RowError("input", f"turn {i} is from [|{speaker}|], expected [|{expected}|]: turns must alternate")
        if not text:
            raise RowError("input", f"turn {i} ([|{speaker}|]) is empty")
        messages.append(Message("user" if speaker == "Human" else "assistant", text))
    return [Conversation(messages, source=ctx.source, id=str(row.index))]


FORMAT = SourceFormat(
    name="baize",
    summary="Baize JSON list of [|Human|]/[|AI|] transcripts (multi-turn)",
    options_type=NoOptions,
    rows=lambda path, options, files, resolve: files.array(path),
    convert=convert,
)
