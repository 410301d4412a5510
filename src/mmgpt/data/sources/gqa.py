"""GQA question files (``train_balanced_questions.json`` ...): ``{"qid": {"imageId", "question", "answer",
"fullAnswer", ...}}``, images ``{imageId}.jpg`` under the GQA image folder. ``answer: full`` trains on the
sentence-long ``fullAnswer`` instead of the one-word ``answer``. Excluded from the paper's recipe; loadable for
evaluation and ablations. Streamed: the balanced training file alone is large.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mmgpt.data.conversation import Conversation, single_turn
from mmgpt.data.sources.base import RowContext, SourceFormat, require, text_field
from mmgpt.data.sources.jsonio import Row


@dataclass(frozen=True)
class GQAOptions:
    answer: Literal["short", "full"] = "short"


def convert(row: Row, options: GQAOptions, ctx: RowContext) -> list[Conversation]:
    value = row.value
    question = text_field(value, "question").strip()
    answer = text_field(value, "answer" if options.answer == "short" else "fullAnswer").strip()
    image = ctx.image(f"{require(value, 'imageId', str)}.jpg")
    return [single_turn(question, answer, images=[image], source=ctx.source, id=row.key or str(row.index))]


FORMAT = SourceFormat(
    name="gqa",
    summary="GQA questions keyed by question id (evaluation and ablations)",
    options_type=GQAOptions,
    rows=lambda path, options, files, resolve: files.keyed(path),
    convert=convert,
)
