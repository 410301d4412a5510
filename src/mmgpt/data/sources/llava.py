"""LLaVA-Instruct (detail_23k, complex_reasoning_77k, conversation_58k, llava_instruct_150k).

A JSON list of ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}, ...]}``. Turns 2k and
2k+1 form a (question, answer) pair and every answer is trained (the reference paired i with i+1). The
``<image>`` marker may stand before or after the first question; it is removed from the text and the image
is attached to the first user message, where the template puts it. A row without ``image`` (text-only rows of
later LLaVA mixes) becomes a language-only conversation.
"""

from __future__ import annotations

from mmgpt.data.conversation import Conversation, Message
from mmgpt.data.sources.base import NoOptions, RowContext, RowError, SourceFormat, require, text_field
from mmgpt.data.sources.jsonio import Row
from mmgpt.tokens import IMAGE

USER_NAMES = ("human", "user")
ASSISTANT_NAMES = ("gpt", "assistant")


def _clean(text: str) -> str:
    return text.replace(IMAGE, "").strip()


def convert(row: Row, options: NoOptions, ctx: RowContext) -> list[Conversation]:
    turns = require(row.value, "conversations", list)
    if len(turns) < 2 or len(turns) % 2:
        raise RowError(
            "conversations",
            f"{len(turns)} turns; expected human/gpt pairs (an even number, at least 2)",
        )
    images = [ctx.image(require(row.value, "image", str))] if "image" in row.value else []
    messages: list[Message] = []
    for k in range(0, len(turns), 2):
        for i, names in ((k, USER_NAMES), (k + 1, ASSISTANT_NAMES)):
            speaker = require(turns[i], "from", str, at=f"conversations[{i}].")
            if speaker not in names:
                raise RowError(
                    f"conversations[{i}].from",
                    f"expected {names[0]!r} (turns alternate human/gpt, starting with human), got {speaker!r}",
                )
        question = _clean(text_field(turns[k], "value", at=f"conversations[{k}]."))
        if not question:
            raise RowError(f"conversations[{k}].value", "no question besides the <image> marker")
        answer = text_field(turns[k + 1], "value", at=f"conversations[{k + 1}].").strip()
        messages.append(Message("user", question, images if k == 0 else ()))
        messages.append(Message("assistant", answer))
    return [Conversation(messages, source=ctx.source, id=str(row.value.get("id", row.index)))]


FORMAT = SourceFormat(
    name="llava",
    summary="LLaVA-Instruct JSON list with 'conversations' (single- and multi-turn)",
    options_type=NoOptions,
    rows=lambda path, options, files, resolve: files.array(path),
    convert=convert,
)
