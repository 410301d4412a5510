"""The items a benchmark reader returns, one dataclass per kind of question, with no model in sight.

Every item has a ``key``: the id its benchmark's result file and scorer use (predictions are keyed by it). Image
paths are already resolved against the caller's image root. Text is as published (not stripped or normalised):
the scorers normalise as the official evaluations do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ItemId = int | str


@dataclass(frozen=True)
class VqaItem:
    """A short-answer question: VQAv2, OK-VQA, VizWiz, TextVQA (10 human answers), GQA and OCR-VQA (one answer).

    ``answer_type``/``question_type`` come from the annotations when they give them (VQAv2's ``yes/no``, ``number``,
    ``other``; VizWiz's ``unanswerable``...; GQA's structural type) and drive the per-type breakdown."""

    question_id: ItemId
    image: Path
    question: str
    answers: tuple[str, ...]
    answer_type: str | None = None
    question_type: str | None = None
    image_id: ItemId | None = None

    @property
    def key(self) -> ItemId:
        return self.question_id


@dataclass(frozen=True)
class CaptionItem:
    """An image with its reference captions (COCO, Flickr30K)."""

    image_id: ItemId
    image: Path
    references: tuple[str, ...]

    @property
    def key(self) -> ItemId:
        return self.image_id


@dataclass(frozen=True)
class MultipleChoiceItem:
    """A question with choices and, for A-OKVQA, ten free-form answers. ``difficult_direct_answer`` questions are
    left out of A-OKVQA's direct-answer score (its official evaluation does so)."""

    question_id: ItemId
    image: Path
    question: str
    choices: tuple[str, ...]
    answer_index: int
    direct_answers: tuple[str, ...] = ()
    difficult_direct_answer: bool = False
    rationales: tuple[str, ...] = ()

    @property
    def key(self) -> ItemId:
        return self.question_id

    @property
    def answer(self) -> str:
        return self.choices[self.answer_index]


@dataclass(frozen=True)
class YesNoItem:
    """A POPE probe: "Is there a {object} in the image?" with the truth."""

    question_id: ItemId
    image: Path
    question: str
    label: Literal["yes", "no"]

    @property
    def key(self) -> ItemId:
        return self.question_id


@dataclass(frozen=True)
class ClassificationItem:
    """An image (with the meme's text for HatefulMemes) and the index of its class in ``classes``."""

    id: ItemId
    image: Path
    label: int
    classes: tuple[str, ...]
    text: str | None = None

    @property
    def key(self) -> ItemId:
        return self.id

    @property
    def class_name(self) -> str:
        return self.classes[self.label]


@dataclass(frozen=True)
class MmluItem:
    """A four-choice MMLU question; ``id`` is ``{subject}/{row}`` (row counted from 0 in the subject's file)."""

    id: str
    subject: str
    question: str
    choices: tuple[str, ...]
    answer_index: int

    @property
    def key(self) -> ItemId:
        return self.id


@dataclass(frozen=True)
class OpenEndedItem:
    """An open question judged by a person or an LLM (OwlEval, LLaVA-Bench, MM-Vet): no automatic scorer.

    ``conversation`` groups the questions asked in order in one conversation (OwlEval's multi-turn questions about
    one image), ``turn`` is the position in it (0 for a question asked alone, whose ``conversation`` is None).
    ``reference`` is the published answer when there is one (MM-Vet). ``row`` is the question object as published,
    which the writers copy into the answer files."""

    question_id: ItemId
    image: Path
    question: str
    category: tuple[str, ...] = ()
    reference: str | None = None
    conversation: str | None = None
    turn: int = 0
    row: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> ItemId:
        return self.question_id


@dataclass(frozen=True)
class InstructionItem:
    """A held-out language-only instruction (Dolly, Alpaca): the ``### Input:`` section is ``input`` (may be "")."""

    id: int
    instruction: str
    input: str
    output: str
    category: str | None = None

    @property
    def key(self) -> ItemId:
        return self.id


Item = (
    VqaItem
    | CaptionItem
    | MultipleChoiceItem
    | YesNoItem
    | ClassificationItem
    | MmluItem
    | OpenEndedItem
    | InstructionItem
)
