"""A-OKVQA (aokvqa_v1p0_{train,val}.json): questions answered with the correct choice and its rationales.

A JSON list of ``{"split", "image_id", "question", "choices", "correct_choice_idx", "rationales", ...}``;
the image is ``{split}2017/{image_id:012d}.jpg`` under the COCO root (or the row's own ``image`` path, which
some redistributions add). Target: ``The answer is {choice}. Because {rationales}``; the question gets a
"why" follow-up (reference.md section 5). ``variant: multiple_choice`` also lists the choices in the
``### Input:`` section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmgpt.data.conversation import Conversation, single_turn
from mmgpt.data.sources.base import RowContext, RowError, SourceFormat, require, string_list, text_field
from mmgpt.data.sources.jsonio import Row
from mmgpt.data.templates import REASON_QUESTIONS, aokvqa_answer, join_options


@dataclass(frozen=True)
class AOKVQAOptions:
    variant: Literal["rationale", "multiple_choice"] = "rationale"
    reason_questions: list[str] = field(default_factory=lambda: list(REASON_QUESTIONS))


def aokvqa_image(value: dict) -> str:
    """The image of an A-OKVQA row, relative to the COCO root: ``image``, or ``{split}2017/{image_id:012d}.jpg``."""
    if "image" in value:
        return require(value, "image", str)
    split = text_field(value, "split")
    image_id = require(value, "image_id", (int, str))
    try:
        number = int(image_id)
    except ValueError:
        raise RowError("image_id", f"expected a COCO image number, got {image_id!r}") from None
    return f"{split}2017/{number:012d}.jpg"


def convert(row: Row, options: AOKVQAOptions, ctx: RowContext) -> list[Conversation]:
    value = row.value
    question = text_field(value, "question").strip()
    choices = string_list(value, "choices", min_items=2)
    correct = require(value, "correct_choice_idx", int)
    if not 0 <= correct < len(choices):
        raise RowError("correct_choice_idx", f"{correct} is outside the {len(choices)} choices")
    rationales = [r.strip() for r in string_list(value, "rationales")]
    image = ctx.image(aokvqa_image(value))
    instruction = f"{question} {ctx.pick(options.reason_questions, row)}"
    options_text = join_options(choices) if options.variant == "multiple_choice" else None
    return [
        single_turn(
            instruction,
            aokvqa_answer(choices[correct], rationales),
            images=[image],
            input=options_text,
            source=ctx.source,
            id=str(value.get("question_id", row.index)),
        )
    ]


FORMAT = SourceFormat(
    name="aokvqa",
    summary="A-OKVQA JSON list; rationale answers, optional multiple-choice variant",
    options_type=AOKVQAOptions,
    rows=lambda path, options, files, resolve: files.array(path),
    convert=convert,
)
