"""The paper's vision-language mix, in miniature: every task a scene gives, and the Conversations they become.

| task | stands in for | answer style |
|---|---|---|
| ``detail`` | LLaVA detail_23k | a long description |
| ``conversation`` | LLaVA conversation_58k | 3-4 turns, full sentences |
| ``rationale`` | A-OKVQA | ``The answer is X. Because ...`` |
| ``caption`` | COCO Captions | a short caption, asked with a Table 3 instruction |
| ``ocr`` | OCR-VQA | the word (scenes with a word only) |
| ``one_word`` | VQA v2 (excluded by the paper) | one or two words |

Each task draws from its own ``random.Random(f"{scene.key}:{task}")``, so adding a task never changes another's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mmgpt.data.conversation import Conversation, ImageRef, Message, single_turn
from mmgpt.data.sources.base import pick
from mmgpt.data.templates import CAPTION_INSTRUCTIONS, REASON_QUESTIONS
from mmgpt.world.describe import captions, detailed_description
from mmgpt.world.questions import Question, RationaleQuestion, questions, rationale_question
from mmgpt.world.scene import Scene

# A few of LLaVA's detail-description requests: enough variety to be an instruction, few enough to learn.
DETAIL_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the following image in detail.",
    "Provide a detailed description of the given image.",
    "Give an elaborate explanation of the image you see.",
    "Offer a thorough analysis of the image.",
    "Explain the various aspects of the image before you.",
    "Walk through the important details of the image.",
)
OCR_QUESTIONS: tuple[str, ...] = ("What is the word in the image?", "What is written in the image?")
ONE_WORD_QUESTIONS = 3


def task_rng(scene: Scene, task: str) -> random.Random:
    return random.Random(f"{scene.key}:{task}")


@dataclass(frozen=True)
class SceneTasks:
    """Everything the training world says about one scene."""

    scene: Scene
    detail: tuple[str, str]  # (instruction, description)
    conversation: list[Question]
    rationale: RationaleQuestion
    captions: list[str]
    ocr: list[tuple[str, str]]  # (question, answer); empty without a word
    one_word: list[Question]  # answered with Question.short


def scene_tasks(scene: Scene) -> SceneTasks:
    rng = task_rng(scene, "detail")
    detail = (rng.choice(DETAIL_INSTRUCTIONS), detailed_description(scene, rng))
    rng = task_rng(scene, "conversation")
    conversation = questions(scene, rng, rng.randint(3, 4))
    rng = task_rng(scene, "ocr")
    ocr = []
    if scene.word:
        ocr = [(rng.choice(OCR_QUESTIONS), scene.word), ("What is the first letter of the word?", scene.word[0])]
    one_word = questions(scene, task_rng(scene, "one_word"), ONE_WORD_QUESTIONS)
    return SceneTasks(
        scene=scene,
        detail=detail,
        conversation=conversation,
        rationale=rationale_question(scene, task_rng(scene, "rationale")),
        captions=captions(scene),
        ocr=ocr,
        one_word=one_word,
    )


def caption_instruction(scene: Scene, k: int) -> str:
    return pick(CAPTION_INSTRUCTIONS, f"{scene.key}:caption:{k}")


def rationale_prompt(scene: Scene, question: RationaleQuestion) -> str:
    """The question with a "why" follow-up, as the A-OKVQA source asks it."""
    return f"{question.question} {pick(REASON_QUESTIONS, scene.key + ':why')}"


def task_conversations(tasks: SceneTasks, image: ImageRef) -> dict[str, list[Conversation]]:
    """The training conversations of each task, in memory (the files on disk read back to the same ones, up to
    the instruction picked for a caption or a "why" follow-up, which the sources choose themselves)."""
    scene, source = tasks.scene, "world"
    dialogue: list[Message] = []
    for i, q in enumerate(tasks.conversation):
        dialogue += [Message("user", q.text, [image] if i == 0 else ()), Message("assistant", q.answer)]

    def one(question: str, answer: str, task: str, k: int = 0) -> Conversation:
        return single_turn(question, answer, images=[image], source=f"{source}_{task}", id=f"{scene.id}:{k}")

    return {
        "detail": [one(*tasks.detail, "detail")],
        "conversation": [Conversation(dialogue, source=f"{source}_conversation", id=scene.id)],
        "rationale": [one(rationale_prompt(scene, tasks.rationale), tasks.rationale.answer, "rationale")],
        "caption": [one(caption_instruction(scene, k), c, "caption", k) for k, c in enumerate(tasks.captions)],
        "ocr": [one(q, a, "ocr", k) for k, (q, a) in enumerate(tasks.ocr)],
        "one_word": [one(q.text, q.short, "one_word", k) for k, q in enumerate(tasks.one_word)],
    }
