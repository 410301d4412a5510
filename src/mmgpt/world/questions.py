"""Questions about a scene, each with a full-sentence answer (LLaVA conversation style), a one-word answer (VQA v2
style) and the ground-truth value the metrics score; and A-OKVQA-style questions with choices and rationales.

Kinds: ``colour``, ``shape``, ``count``, ``position``, ``word`` (reading), ``exists`` (yes/no). A question refers
to one shape by a phrase that picks it out alone and does not give the answer away (a colour question never says
"the red circle"); see :func:`~mmgpt.world.describe.references`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from mmgpt.data.templates import aokvqa_answer
from mmgpt.world.describe import (
    POSITION_PHRASES,
    article,
    capitalise,
    counted,
    number_word,
    plural,
    reference,
    references,
)
from mmgpt.world.scene import COLOURS, SHAPES, Scene


@dataclass(frozen=True)
class Question:
    kind: str
    text: str
    answer: str  # a sentence
    short: str  # one or two words
    truth: str  # the scored value: a colour, a shape name, a count in digits, a position name, the word


def colour_question(scene: Scene, rng: random.Random) -> Question:
    shape = rng.choice(scene.shapes)
    ref = reference(scene, shape, rng, without="colour") or ""
    text = rng.choice([f"What colour is {ref}?", f"What is the colour of {ref}?", f"Which colour does {ref} have?"])
    return Question("colour", text, f"{capitalise(ref)} is {shape.colour}.", shape.colour, shape.colour)


def shape_question(scene: Scene, rng: random.Random) -> Question:
    shape = rng.choice(scene.shapes)
    ref = reference(scene, shape, rng, without="kind") or ""
    if ref.startswith("the shape "):
        where = POSITION_PHRASES[shape.position]
        text = rng.choice([f"What shape is {where}?", f"Which shape do you see {where}?"])
    else:
        text = rng.choice([f"What shape is {ref}?", f"What kind of shape is {ref}?"])
    return Question("shape", text, f"{capitalise(ref)} is {article(shape.kind)}.", shape.kind, shape.kind)


def count_question(scene: Scene, rng: random.Random) -> Question:
    by = rng.choice(["all", "all", "colour", "kind"])
    if by == "colour":
        colour = rng.choice(scene.shapes).colour
        n, noun = scene.count(colour=colour), f"{colour} shape"
    elif by == "kind":
        kind = rng.choice(scene.shapes).kind
        n, noun = scene.count(kind=kind), kind
    else:
        n, noun = len(scene.shapes), "shape"
    text = rng.choice(
        [
            f"How many {plural(noun, 2)} are there?",
            f"How many {plural(noun, 2)} are in the image?",
            f"How many {plural(noun, 2)} can you see?",
        ]
    )
    answer = f"There {'is' if n == 1 else 'are'} {counted(n, noun)}."
    return Question("count", text, answer, str(n), str(n))


def position_question(scene: Scene, rng: random.Random) -> Question | None:
    """None when every shape needs its position to be named (e.g. two red circles and nothing else)."""
    candidates = [s for s in scene.shapes if references(scene, s, without="position")]
    if not candidates:
        return None
    shape = rng.choice(candidates)
    ref = reference(scene, shape, rng, without="position") or ""
    text = rng.choice([f"Where is {ref}?", f"Where is {ref} in the image?", f"In which part of the image is {ref}?"])
    answer = f"{capitalise(ref)} is {POSITION_PHRASES[shape.position]}."
    return Question("position", text, answer, shape.position, shape.position)


def word_question(scene: Scene, rng: random.Random) -> Question:
    if scene.word is None:
        return Question("word", "Is there any text in the image?", "No, there is no text in the image.", "no", "")
    text = rng.choice(
        [
            "What word is written in the image?",
            "What does the text in the image say?",
            "Which word can you read in the picture?",
        ]
    )
    return Question("word", text, f"The word is {scene.word}.", scene.word, scene.word)


def exists_question(scene: Scene, rng: random.Random) -> Question:
    if rng.random() < 0.5:
        picked = rng.choice(scene.shapes)
        colour, kind = picked.colour, picked.kind
    else:
        colour, kind = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    phrase = f"{colour} {kind}"
    text = f"Is there {article(phrase)} in the image?"
    n = scene.count(colour=colour, kind=kind)
    if n == 0:
        return Question("exists", text, f"No, there is no {phrase} in the image.", "no", "no")
    if n == 1:
        where = POSITION_PHRASES[next(s.position for s in scene.shapes if (s.colour, s.kind) == (colour, kind))]
        return Question("exists", text, f"Yes, there is {article(phrase)} {where}.", "yes", "yes")
    return Question("exists", text, f"Yes, there are {number_word(n)} {phrase}s.", "yes", "yes")


QUESTIONS: dict[str, Callable[[Scene, random.Random], Question | None]] = {
    "colour": colour_question,
    "shape": shape_question,
    "count": count_question,
    "position": position_question,
    "word": word_question,
    "exists": exists_question,
}


def ask(kind: str, scene: Scene, rng: random.Random) -> Question | None:
    if kind not in QUESTIONS:
        raise ValueError(f"unknown question kind {kind!r}; kinds: {', '.join(QUESTIONS)}")
    return QUESTIONS[kind](scene, rng)


def questions(scene: Scene, rng: random.Random, n: int) -> list[Question]:
    """``n`` questions of different kinds in random order (fewer if some kind does not apply to the scene)."""
    kinds = rng.sample(list(QUESTIONS), len(QUESTIONS))
    asked = [q for q in (ask(kind, scene, rng) for kind in kinds) if q is not None]
    return asked[:n]


# ------------------------------------------------------------------------------------ A-OKVQA: choices + rationale
@dataclass(frozen=True)
class RationaleQuestion:
    kind: str
    question: str
    choices: list[str]
    correct: int
    rationales: list[str]

    @property
    def answer(self) -> str:
        return aokvqa_answer(self.choices[self.correct], self.rationales)

    @property
    def truth(self) -> str:
        return self.choices[self.correct]


def _choices(correct: str, pool: list[str], rng: random.Random, n: int = 4) -> tuple[list[str], int]:
    options = [correct, *rng.sample([p for p in pool if p != correct], n - 1)]
    rng.shuffle(options)
    return options, options.index(correct)


def _shapes_of(colour: str, n: int) -> str:
    return f"no {colour} shapes" if n == 0 else f"{number_word(n)} {colour} {plural('shape', n)}"


def rationale_question(scene: Scene, rng: random.Random) -> RationaleQuestion:
    kind = rng.choice(["colour", "shape", "compare"])
    if kind == "compare":
        first = rng.choice(scene.shapes).colour
        second = rng.choice([c for c in COLOURS if c != first])
        n1, n2 = scene.count(colour=first), scene.count(colour=second)
        more = n1 > n2
        rationales = [
            f"There {'is' if n1 == 1 else 'are'} {_shapes_of(first, n1)}.",
            f"There {'is' if n2 == 1 else 'are'} {_shapes_of(second, n2)}.",
            f"{capitalise(number_word(n1))} is {'more' if more else 'not more'} than {number_word(n2)}.",
        ]
        question = f"Are there more {first} shapes than {second} shapes?"
        choices = ["yes", "no"] if rng.random() < 0.5 else ["no", "yes"]
        return RationaleQuestion(kind, question, choices, choices.index("yes" if more else "no"), rationales)
    shape = rng.choice(scene.shapes)
    where = POSITION_PHRASES[shape.position]
    if kind == "colour":
        ref = reference(scene, shape, rng, without="colour") or ""
        choices, correct = _choices(shape.colour, list(COLOURS), rng)
        rationales = [f"{capitalise(ref)} is {where}.", f"It is painted {shape.colour}."]
        return RationaleQuestion(kind, f"What colour is {ref}?", choices, correct, rationales)
    choices, correct = _choices(shape.kind, list(SHAPES), rng)
    rationales = [f"Looking {where} of the image, there is {article(shape.colour + ' ' + shape.kind)}."]
    return RationaleQuestion(kind, f"Which shape is {where}?", choices, correct, rationales)
