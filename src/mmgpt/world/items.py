"""The evaluation set of a world: prompts about held-out scenes and held-out language-only tasks, with the truth.

Per scene: one question of each kind (colour, shape, count, position, and word reading when the scene has a
word), one A-OKVQA-style reasoning question, one detail-description request and one caption request. The
questions come from the same generators as training (``mmgpt.world.questions``), drawn with the scene's own
``"{key}:eval"`` random stream, so the prompts are in-distribution and the scenes are new.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mmgpt.data.conversation import Conversation, ImageRef, single_turn
from mmgpt.world.describe import captions, detailed_description
from mmgpt.world.language import LanguageTask
from mmgpt.world.questions import ask, rationale_question
from mmgpt.world.scene import Scene
from mmgpt.world.tasks import DETAIL_INSTRUCTIONS, caption_instruction, rationale_prompt

SCENE_QUESTIONS = ("colour", "shape", "count", "position", "word")
# Token budgets per instruction kind: a description runs to ~150 tokens, everything else to a few dozen.
MAX_NEW_TOKENS = {"question": 40, "rationale": 64, "detail": 200, "caption": 64, "language": 40}


@dataclass(frozen=True)
class EvalItem:
    """``kind`` is what is scored (a question kind, ``description``, ``caption`` or ``language``);
    ``instruction`` is the instruction kind response lengths are grouped by."""

    kind: str
    instruction: str
    prompt: Conversation
    truth: str
    reference: str  # the answer training would give (scores as correct)
    scene: str = ""  # the scene's id
    task: str = ""  # the language task's kind

    @property
    def max_new_tokens(self) -> int:
        return MAX_NEW_TOKENS[self.instruction]


def scene_items(scene: Scene, image: ImageRef) -> list[EvalItem]:
    rng = random.Random(f"{scene.key}:eval")
    items = []

    def item(kind: str, instruction: str, text: str, truth: str, reference: str) -> EvalItem:
        prompt = single_turn(text, None, images=[image], id=scene.id)
        return EvalItem(kind, instruction, prompt, truth, reference, scene.id)

    for kind in SCENE_QUESTIONS:
        if kind == "word" and scene.word is None:
            continue
        question = ask(kind, scene, rng)
        if question is not None:
            items.append(item(kind, "question", question.text, question.truth, question.answer))
    reasoning = rationale_question(scene, rng)
    prompt = rationale_prompt(scene, reasoning)
    items.append(item("reasoning", "rationale", prompt, reasoning.truth, reasoning.answer))
    # The reference description draws from its own stream, so the prompts do not depend on it.
    description = detailed_description(scene, random.Random(f"{scene.key}:eval:reference"))
    items.append(item("description", "detail", rng.choice(DETAIL_INSTRUCTIONS), "", description))
    items.append(item("caption", "caption", caption_instruction(scene, 0), "", captions(scene)[0]))
    return items


def language_items(tasks: Sequence[LanguageTask]) -> list[EvalItem]:
    return [
        EvalItem(
            "language",
            "language",
            single_turn(task.instruction, None, input=task.input or None, id=f"language:{i}"),
            task.answer,
            task.output,
            task=task.kind,
        )
        for i, task in enumerate(tasks)
    ]
