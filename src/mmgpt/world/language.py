"""Language-only instructions a tiny LM can learn, standing in for Dolly 15k and Alpaca-GPT4.

Four kinds: ``arithmetic`` (sums and differences of numbers up to 9), ``spelling`` (letters and letter counts of
the world's words), ``ordering`` (sort numbers or words, the list as the ``### Input:``) and ``facts`` of the
closed world (sides of shapes, colour mixing, opposites, the next number). Every response ends with its
``answer``: the metric checks that ending (``mmgpt.world.metrics.language_correct``).

The item spaces are small (there are 100 sums), so held-out items repeat training items: these tasks measure
whether a skill is kept or lost through tuning, not generalisation.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from mmgpt.data.conversation import Conversation, single_turn
from mmgpt.world.describe import NUMBER_WORDS
from mmgpt.world.scene import COLOURS, SHAPES, WORDS

SPELLABLE = (*WORDS, *COLOURS, *SHAPES)
SIDES = {
    "triangle": "three sides",
    "square": "four sides",
    "diamond": "four sides",
    "circle": "no sides",
    "star": "five points",
}
MIXES = {("red", "yellow"): "orange", ("red", "blue"): "purple", ("blue", "yellow"): "green"}
OPPOSITES = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "large": "small", "small": "large"}


@dataclass(frozen=True)
class LanguageTask:
    kind: str
    instruction: str
    input: str  # "" when the task has no ``### Input:``
    output: str
    answer: str  # the output ends with it

    def conversation(self, *, source: str = "world_language", id: str = "") -> Conversation:
        return single_turn(self.instruction, self.output, input=self.input or None, source=source, id=id)


def arithmetic(rng: random.Random) -> LanguageTask:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.5:
        instruction = rng.choice([f"What is {a} plus {b}?", f"Add {a} and {b}."])
        return LanguageTask("arithmetic", instruction, "", f"{a} plus {b} is {a + b}.", str(a + b))
    a, b = max(a, b), min(a, b)
    instruction = rng.choice([f"What is {a} minus {b}?", f"Subtract {b} from {a}."])
    return LanguageTask("arithmetic", instruction, "", f"{a} minus {b} is {a - b}.", str(a - b))


def spelling(rng: random.Random) -> LanguageTask:
    word = rng.choice(SPELLABLE)
    if rng.random() < 0.5:
        spelled = "-".join(word)
        return LanguageTask(
            "spelling", f"Spell the word {word}.", "", f"The word {word} is spelled {spelled}.", spelled
        )
    letters = f"{len(word)} letters"
    return LanguageTask(
        "spelling", f"How many letters are in the word {word}?", "", f"The word {word} has {letters}.", letters
    )


def ordering(rng: random.Random) -> LanguageTask:
    if rng.random() < 0.5:
        numbers = rng.sample(range(10), rng.randint(3, 4))
        answer = ", ".join(map(str, sorted(numbers)))
        return LanguageTask(
            "ordering",
            "Sort these numbers from smallest to largest.",
            ", ".join(map(str, numbers)),
            f"From smallest to largest: {answer}.",
            answer,
        )
    words = rng.sample(WORDS, rng.randint(3, 4))
    answer = ", ".join(sorted(words))
    return LanguageTask(
        "ordering",
        "Put these words in alphabetical order.",
        ", ".join(words),
        f"In alphabetical order: {answer}.",
        answer,
    )


def facts(rng: random.Random) -> LanguageTask:
    topic = rng.choice(["sides", "mix", "opposite", "next"])
    if topic == "sides":
        shape = rng.choice(SHAPES)
        noun = "points" if shape == "star" else "sides"
        return LanguageTask(
            "facts", f"How many {noun} does a {shape} have?", "", f"A {shape} has {SIDES[shape]}.", SIDES[shape]
        )
    if topic == "mix":
        (a, b), result = rng.choice(sorted(MIXES.items()))
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        instruction = f"What colour do you get when you mix {a} and {b}?"
        return LanguageTask("facts", instruction, "", f"Mixing {a} and {b} gives {result}.", result)
    if topic == "opposite":
        word, opposite = rng.choice(sorted(OPPOSITES.items()))
        return LanguageTask(
            "facts", f"What is the opposite of {word}?", "", f"The opposite of {word} is {opposite}.", opposite
        )
    n = rng.randint(0, 8)
    shown = str(n) if rng.random() < 0.5 else NUMBER_WORDS[n]
    return LanguageTask(
        "facts", f"What number comes after {shown}?", "", f"The number after {shown} is {n + 1}.", str(n + 1)
    )


LANGUAGE_TASKS: dict[str, Callable[[random.Random], LanguageTask]] = {
    "arithmetic": arithmetic,
    "spelling": spelling,
    "ordering": ordering,
    "facts": facts,
}


def language_tasks(seed: int, split: str, count: int) -> list[LanguageTask]:
    """``count`` tasks, the kinds in turn (equal shares), each from its own string-seeded generator."""
    kinds = list(LANGUAGE_TASKS)
    return [LANGUAGE_TASKS[kinds[i % len(kinds)]](random.Random(f"{seed}:{split}:language:{i}")) for i in range(count)]
