"""Text beyond the instruction data: the pretraining corpus of the tiny base, and the world's tokenizer.

Pretraining rows (OpenFlamingo style, every row ``{"images": [...], "text": ...}``, one ``<image>`` per image):

- ``captions``: one image, its dense caption (every shape with size, colour and position, and the word) - LAION;
- ``grid``: one image, every grid cell in reading order with its shape or "no shape" (:func:`grid_caption`) -
  alt-text that names each place before what is there, so every attribute is read off one named cell;
- ``index``: one image, its shapes looked up by kind and then by colour (:func:`index_caption`) - the same for
  finding a shape by what it is ("The circle is red. ... The red shape is a circle.");
- ``where``: one image, the places of its shapes looked up by kind and then by colour (:func:`where_caption`) -
  finding a shape by what it is and naming its cell ("The circle is at the top left. ... The red shape is at the
  top left.");
- ``tally``: one image, how many shapes, of each kind and of each colour (:func:`tally_caption`) - counting a
  subset ("There are two red shapes.");
- ``interleaved``: 2-3 images, each followed by a caption or a description - MMC4;
- ``text``: no image, statements of the language-only skills ("3 plus 4 is 7.") - the LM's own pretraining, so
  the base knows facts that instruction tuning can keep or lose (the paper's finding 2);
- ``questions``: one image, then questions about it with full-sentence answers in plain ``Question: ... Answer:``
  text (never the instruction template) - web pages of questions about a picture;
- ``qa``: no image, the language tasks as ``Question: ... Answer: ...`` text - the LM's own web Q&A;
- ``dialogues`` / ``text-dialogues``: the same two again, each row set out in one of several layouts
  (:data:`DIALOGUE_FORMS`: "Q:/A:", "User:/Assistant:", headings on their own lines...), the image sometimes after
  a line of text - web pages do not agree on one layout, and a base that has seen several reads a new one (the
  instruction template) as a question to answer rather than as text to continue.

Why the last two: in captions and statements nothing later depends on earlier text, so a base pretrained on them
alone never learns to read a question (measured: after tuning it answered "What is 3 plus 1?" with "9 plus 3 is
12." and "How many shapes?" with "The shape on the left is a triangle."). A real LLaMA learnt that from the web;
these rows are the tiny LM's share of it (docs/world.md).

The tokenizer is trained on a canonical corpus that depends on nothing but the code: every world generated with
any seed or size gets the same tokenizer, so a base pretrained once serves every later world.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from mmgpt.data.templates import (
    CAPTION_INSTRUCTIONS,
    DESCRIPTION_INSTRUCTIONS,
    REASON_QUESTIONS,
    render_text,
    template_texts,
)
from mmgpt.tokens import END_OF_CHUNK, IMAGE, add_special_tokens, train_tokenizer
from mmgpt.world.config import VOCAB_SIZE
from mmgpt.world.describe import (
    NUMBER_WORDS,
    POSITION_PHRASES,
    captions,
    dense_caption,
    detailed_description,
    grid_caption,
    index_caption,
    tally_caption,
    where_caption,
)
from mmgpt.world.language import LanguageTask, language_tasks
from mmgpt.world.questions import questions
from mmgpt.world.scene import COLOURS, SHAPES, SIZES, WORDS, Scene, sample_scenes
from mmgpt.world.tasks import DETAIL_INSTRUCTIONS, OCR_QUESTIONS, scene_tasks, task_conversations

TOKENIZER_SEED = 20230508  # the paper's arXiv date; any fixed number would do
TOKENIZER_SCENES = 400
TOKENIZER_LANGUAGE = 2000
STATEMENTS_PER_ROW = 4
QUESTIONS_PER_IMAGE = 3
DIALOGUE_QUESTIONS = (2, 4)  # questions per image in a dialogue row, inclusive


@dataclass(frozen=True)
class DialogueForm:
    """One layout of questions and answers: what comes before a question, between it and its answer, and between
    one answer and the next question. None is the instruction template (no "###", no "Instruction")."""

    question: str
    answer: str
    separator: str

    def render(self, pairs: list[tuple[str, str]]) -> str:
        return self.separator.join(f"{self.question}{q}{self.answer}{a}" for q, a in pairs)

    def prompt(self, question: str) -> str:
        """The text up to an answer (its leading space is the answer's first token): how to ask a base."""
        return f"{self.question}{question}{self.answer.rstrip(' ')}"

    @property
    def next_question(self) -> str:
        """Where a generated answer ends: the start of the next question."""
        return self.separator + self.question.rstrip(" ")


# The layout of questions.jsonl and qa.jsonl, and of `mmgpt eval --prompt-format qa`.
PLAIN_QA = DialogueForm("Question: ", " Answer: ", " ")
DIALOGUE_FORMS: tuple[DialogueForm, ...] = (
    DialogueForm("Q: ", "\nA: ", "\n"),
    DialogueForm("User: ", "\nAssistant: ", "\n"),
    DialogueForm("Human: ", "\nAI: ", "\n\n"),
    DialogueForm("Question:\n", "\n\nAnswer:\n", "\n\n"),
    DialogueForm("**Question:** ", "\n**Answer:** ", "\n\n"),
)
# Text a page may put before its picture (a dialogue row has one of these or none, half and half).
DIALOGUE_LEADS: tuple[str, ...] = ("Here is a picture.\n", "Look at this image:\n", "Image:\n", "A photo.\n\n")


def chunk(text: str) -> str:
    return f"{IMAGE}{text}{END_OF_CHUNK}"


# The one-image captions, by the name of their corpus file (pretrain/NAME.jsonl); the docstring above says why each.
IMAGE_CAPTIONS: dict[str, Callable[[Scene], str]] = {
    "captions": dense_caption,
    "grid": grid_caption,
    "index": index_caption,
    "where": where_caption,
    "tally": tally_caption,
}


def caption_rows(
    scenes: list[Scene], image_paths: list[str], caption: Callable[[Scene], str]
) -> Iterator[dict[str, Any]]:
    """One row per scene: its image, then ``caption(scene)``."""
    for scene, path in zip(scenes, image_paths, strict=True):
        yield {"images": [path], "text": chunk(caption(scene))}


def interleaved_rows(scenes: list[Scene], image_paths: list[str], *, seed: int) -> Iterator[dict[str, Any]]:
    """Consecutive scenes in groups of 2-3 (the last group may be shorter), each with a text drawn per image."""
    rng = random.Random(f"{seed}:interleaved")
    start = 0
    while start < len(scenes):
        end = min(len(scenes), start + rng.randint(2, 3))
        texts = []
        for scene in scenes[start:end]:
            options = [dense_caption(scene), *captions(scene), detailed_description(scene, rng)]
            texts.append(chunk(rng.choice(options)))
        yield {"images": image_paths[start:end], "text": "".join(texts)}
        start = end


def _text_only(tasks: list[LanguageTask], text: Callable[[LanguageTask], str]) -> Iterator[dict[str, Any]]:
    """Rows of ``STATEMENTS_PER_ROW`` tasks each, ``text(task)`` joined by spaces."""
    for start in range(0, len(tasks), STATEMENTS_PER_ROW):
        yield {"images": [], "text": " ".join(text(t) for t in tasks[start : start + STATEMENTS_PER_ROW])}


def text_rows(tasks: list[LanguageTask]) -> Iterator[dict[str, Any]]:
    return _text_only(tasks, lambda t: t.output)


def question_rows(scenes: list[Scene], image_paths: list[str], *, seed: int) -> Iterator[dict[str, Any]]:
    """One image, then up to ``QUESTIONS_PER_IMAGE`` questions of different kinds with their sentence answers."""
    for scene, path in zip(scenes, image_paths, strict=True):
        rng = random.Random(f"{seed}:{scene.key}:pretrain-questions")
        asked = questions(scene, rng, QUESTIONS_PER_IMAGE)
        yield {"images": [path], "text": chunk(PLAIN_QA.render([(q.text, q.answer) for q in asked]))}


def qa_rows(tasks: list[LanguageTask]) -> Iterator[dict[str, Any]]:
    """The language tasks as questions and answers (the input, if any, after the instruction)."""
    return _text_only(tasks, lambda t: PLAIN_QA.render([(_task_question(t), t.output)]))


def question_text(instruction: str, input: str | None = None) -> str:
    """What a Q&A text asks: the instruction, then its input (if any) after a space."""
    return " ".join(filter(None, (instruction, input)))


def _task_question(task: LanguageTask) -> str:
    return question_text(task.instruction, task.input)


def dialogue_rows(scenes: list[Scene], image_paths: list[str], *, seed: int) -> Iterator[dict[str, Any]]:
    """One image, then 2-4 questions about it with their sentence answers, in one of :data:`DIALOGUE_FORMS`; half
    the rows start with a line of text (:data:`DIALOGUE_LEADS`) before the image."""
    for scene, path in zip(scenes, image_paths, strict=True):
        rng = random.Random(f"{seed}:{scene.key}:pretrain-dialogues")
        form = rng.choice(DIALOGUE_FORMS)
        lead = rng.choice(DIALOGUE_LEADS) if rng.random() < 0.5 else ""
        asked = questions(scene, rng, rng.randint(*DIALOGUE_QUESTIONS))
        yield {"images": [path], "text": lead + chunk(form.render([(q.text, q.answer) for q in asked]))}


def text_dialogue_rows(tasks: list[LanguageTask], *, seed: int) -> Iterator[dict[str, Any]]:
    """The language tasks as questions and answers, ``STATEMENTS_PER_ROW`` to a row, each row in one form."""
    for start in range(0, len(tasks), STATEMENTS_PER_ROW):
        form = random.Random(f"{seed}:text-dialogues:{start}").choice(DIALOGUE_FORMS)
        pairs = [(_task_question(t), t.output) for t in tasks[start : start + STATEMENTS_PER_ROW]]
        yield {"images": [], "text": form.render(pairs)}


def tokenizer_corpus() -> Iterator[str]:
    """Every kind of string the world writes: rendered training conversations of every task (template included),
    pretraining texts, language tasks, instruction lists and the whole vocabulary."""
    yield from template_texts()
    yield from (
        *CAPTION_INSTRUCTIONS,
        *DESCRIPTION_INSTRUCTIONS,
        *REASON_QUESTIONS,
        *DETAIL_INSTRUCTIONS,
        *OCR_QUESTIONS,
    )
    yield " ".join([*COLOURS, *SHAPES, *(s + "s" for s in SHAPES), *SIZES, *WORDS, *NUMBER_WORDS, *POSITION_PHRASES])
    yield " ".join([*POSITION_PHRASES.values(), *map(str, range(20))])
    for scene in sample_scenes(TOKENIZER_SEED, "tokenizer", TOKENIZER_SCENES):
        for conversations in task_conversations(scene_tasks(scene), "image.png").values():
            for conversation in conversations:
                yield render_text(conversation)
        yield dense_caption(scene)
    for task in language_tasks(TOKENIZER_SEED, "tokenizer", TOKENIZER_LANGUAGE):
        yield render_text(task.conversation())


def world_tokenizer(*, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerBase:
    """The world's byte-level BPE tokenizer (any string encodes, none to ``<unk>``), special tokens added."""
    tokenizer = train_tokenizer(tokenizer_corpus(), vocab_size=vocab_size)
    add_special_tokens(tokenizer)
    return tokenizer
