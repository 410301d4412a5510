"""mPLUG-Owl's instruction data (its released SFT jsonl, e.g. ``sft_v0.1_train.jsonl``): one JSON object per line::

    {"image": ["xxx.jpg"], "text": "The following is a conversation between a curious human and AI assistant.
     ...\\nHuman: <image>\\nHuman: Where is the man?\\nAI: In a restaurant.\\nHuman: ...\\nAI: ...",
     "task_type": "llava_sft"}

Text-only rows (``gpt4instruct_sft``, ``sharegpt_chat_sft``, ``quora_chat_sft``) have ``"image": []`` or no
``image``. The whole transcript is one string, split here on its role markers (``\\nHuman: ``, ``\\nAI: ``): the
system line before the first marker is dropped (the ``mplug-owl`` style writes it back); a ``Human:`` line that is
only ``<image>`` is an image (``<image><image>``: two images), attached to the next question, the image paths in
order; every ``AI:`` answer is a training target. Question and answer texts are kept exactly as written, so the
``mplug-owl`` style renders a row back to its ``text`` (when the row used the released system line). Option
``rows``: ``all`` (the released mix: language-only and multimodal rows in one stream, as the original trained),
``image`` or ``text`` (only the rows with / without images; the others are counted as filtered).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from mmgpt.data.conversation import Conversation, ImageRef, Message
from mmgpt.data.sources.base import RowContext, RowError, RowFiltered, SourceFormat, require, text_field
from mmgpt.data.sources.jsonio import Row
from mmgpt.tokens import IMAGE

_MARKER = re.compile(r"\n(Human|AI): ")


@dataclass(frozen=True)
class MplugOwlOptions:
    rows: Literal["all", "image", "text"] = "all"


def parse_transcript(text: str) -> list[tuple[str, str]]:
    """(speaker, text) turns, speaker "Human" or "AI", texts exact; the system line before the first marker is
    dropped (a transcript may also start with ``Human: `` directly)."""
    parts = _MARKER.split("\n" + text if text.startswith(("Human: ", "AI: ")) else text)
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]


def _image_paths(row: Row) -> list[str]:
    paths = row.value.get("image", [])
    paths = [paths] if isinstance(paths, str) else paths  # the original also takes one path as a string
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise RowError("image", f"expected a list of image paths (strings), got {str(paths)[:60]!r}")
    return paths


def convert(row: Row, options: MplugOwlOptions, ctx: RowContext) -> list[Conversation]:
    if isinstance(row.value, json.JSONDecodeError):
        raise RowError("(line)", f"not JSON: {row.value.msg} at column {row.value.colno}")
    require(row.value, "text", str)
    paths = _image_paths(row)
    if options.rows == "image" and not paths:
        raise RowFiltered("text-only row (rows: image)")
    if options.rows == "text" and paths:
        raise RowFiltered("row with images (rows: text)")
    turns = parse_transcript(text_field(row.value, "text"))
    if not turns:
        raise RowError("text", "no '\\nHuman: ' ... '\\nAI: ' exchange in the transcript")
    markers = sum(text.count(IMAGE) for _, text in turns)
    if markers != len(paths):
        raise RowError("image", f"{len(paths)} image paths for {markers} '<image>' markers in 'text'")
    images = iter([ctx.image(p) for p in paths])
    messages: list[Message] = []
    pending: list[ImageRef] = []
    for i, (speaker, text) in enumerate(turns):
        if speaker == "Human" and IMAGE in text and not text.replace(IMAGE, "").strip():
            pending += [next(images) for _ in range(text.count(IMAGE))]  # "<image><image>": two images
            continue
        if IMAGE in text:
            raise RowError("text", f"turn {i} ({speaker}: {text[:40]!r}) holds '<image>' inside text; each image "
                           "stands alone on a 'Human: <image>' line before its question")  # fmt: skip
        expected = "user" if len(messages) % 2 == 0 else "assistant"
        role = "user" if speaker == "Human" else "assistant"
        if role != expected:
            raise RowError("text", f"turn {i} is from {speaker}, expected {'Human' if expected == 'user' else 'AI'}: "
                           "questions and answers alternate")  # fmt: skip
        if not text.strip():
            raise RowError("text", f"turn {i} ({speaker}) is empty")
        messages.append(Message(role, text, tuple(pending) if role == "user" else ()))
        pending = [] if role == "user" else pending
    if pending:
        raise RowError("text", "an image line without a question after it")
    if messages and messages[-1].role == "user":
        raise RowError("text", f"the last question has no answer (no '\\nAI: ' after {messages[-1].text[:40]!r})")
    return [Conversation(messages, source=ctx.source, id=str(row.value.get("id", row.index)))]


FORMAT = SourceFormat(
    name="mplug_owl",
    summary="mPLUG-Owl SFT JSON lines ({image: [...], text: '...\\nHuman: ...\\nAI: ...', task_type})",
    options_type=MplugOwlOptions,
    rows=lambda path, options, files, resolve: files.lines(path),
    convert=convert,
)
