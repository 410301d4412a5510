"""Metrics of the generated world: answers are parsed for the world's vocabulary and compared with the ground truth.

Parsing, not string equality, so a model is scored on what it says whatever its style: "red", "It is red." and
"The shape at the top left is red." are all the answer ``red``. Definitions (docs/world.md):

- question accuracy (colour, shape, count, position, word): correct when the set of values of the asked
  attribute that the response mentions is exactly ``{truth}`` - a hedge ("red or blue") or a miss is wrong;
- reasoning accuracy (A-OKVQA style): the choice after ``The answer is`` (else the whole response) equals the truth;
- description precision / recall, micro-averaged over descriptions: attributes are the colours and shape kinds
  mentioned vs those in the scene; objects are ``colour [size] shape`` phrases vs the scene's (colour, shape) pairs;
- response length: words (whitespace-separated) of the response, averaged per instruction kind;
- language accuracy: the normalised response ends with the task's normalised answer (on a word boundary).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mmgpt.world.describe import NUMBER_WORDS
from mmgpt.world.scene import COLOURS, POSITIONS, SHAPES, SIZES, WORDS, Scene

QUESTION_KINDS = ("colour", "shape", "count", "position", "word", "reasoning")
ALIASES = {"center": "centre", "colored": "coloured"}


def _alternation(words: Iterable[str]) -> str:
    # Longest first, so "top left" wins over "top" at the same place.
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_COLOUR = re.compile(rf"\b({_alternation(COLOURS)})\b")
_SHAPE = re.compile(rf"\b({_alternation(SHAPES)})s?\b")
_POSITION = re.compile(rf"\b({_alternation([*POSITIONS.values(), 'center'])})\b")
_WORD = re.compile(rf"\b({_alternation(WORDS)})\b")
_NUMBER = re.compile(rf"\b(\d+|{_alternation(NUMBER_WORDS)})\b")
_OBJECT = re.compile(rf"\b({_alternation(COLOURS)})\s+(?:(?:{_alternation(SIZES)})\s+)?({_alternation(SHAPES)})s?\b")
_ANSWER_IS = re.compile(r"the answer is ([^.]+)")


def normalise(text: str) -> str:
    """Lower case, single spaces, no surrounding spaces or final full stops."""
    return " ".join(text.lower().split()).rstrip(". ")


def _found(pattern: re.Pattern[str], text: str) -> list[str]:
    return [ALIASES.get(m, m) for m in pattern.findall(text.lower())]


def colours(text: str) -> list[str]:
    return _found(_COLOUR, text)


def shapes(text: str) -> list[str]:
    return _found(_SHAPE, text)


def positions(text: str) -> list[str]:
    return _found(_POSITION, text)


def words(text: str) -> list[str]:
    return _found(_WORD, text)


def numbers(text: str) -> list[str]:
    """Numbers in digits, number words turned into digits."""
    return [str(NUMBER_WORDS.index(n)) if n in NUMBER_WORDS else n for n in _found(_NUMBER, text)]


def objects(text: str) -> list[tuple[str, str]]:
    """(colour, shape) of each ``colour [size] shape`` phrase."""
    return [(c, k) for c, k in _OBJECT.findall(text.lower())]


PARSERS = {"colour": colours, "shape": shapes, "count": numbers, "position": positions, "word": words}


def answer_correct(kind: str, response: str, truth: str) -> bool:
    """Whether ``response`` answers a question of ``kind`` whose ground truth is ``truth`` (module docstring)."""
    if kind == "reasoning":
        match = _ANSWER_IS.search(response.lower())
        chosen = match.group(1) if match else response
        return normalise(chosen) == normalise(truth)
    if kind not in PARSERS:
        raise ValueError(f"no metric for question kind {kind!r}; kinds: {', '.join(QUESTION_KINDS)}")
    return set(PARSERS[kind](response)) == {truth}


def language_correct(response: str, answer: str) -> bool:
    said, expected = normalise(response), normalise(answer)
    return said == expected or said.endswith(" " + expected)


def response_length(text: str) -> int:
    return len(text.split())


@dataclass
class PrecisionRecall:
    """Micro-averaged: sums over all descriptions. None (shown as "-", JSON null) where it is undefined: nothing
    was mentioned (precision) or expected (recall) - a model that described nothing has no precision, not 0%."""

    true_positives: int = 0
    mentioned: int = 0
    expected: int = 0

    def add(self, said: set, truth: set) -> None:
        self.true_positives += len(said & truth)
        self.mentioned += len(said)
        self.expected += len(truth)

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.mentioned if self.mentioned else None

    @property
    def recall(self) -> float | None:
        return self.true_positives / self.expected if self.expected else None


def description_scores(pairs: Sequence[tuple[str, Scene]]) -> dict[str, float | None]:
    """Attribute and object precision/recall of descriptions, each ``(response, scene)``."""
    attributes, objects_ = PrecisionRecall(), PrecisionRecall()
    for response, scene in pairs:
        said = {("colour", c) for c in colours(response)} | {("shape", k) for k in shapes(response)}
        truth = {("colour", s.colour) for s in scene.shapes} | {("shape", s.kind) for s in scene.shapes}
        attributes.add(said, truth)
        objects_.add(set(objects(response)), {(s.colour, s.kind) for s in scene.shapes})
    return {
        "attribute_precision": attributes.precision,
        "attribute_recall": attributes.recall,
        "object_precision": objects_.precision,
        "object_recall": objects_.recall,
        "n": len(pairs),
    }


def summarise(records: Sequence[dict[str, Any]], scenes: dict[str, Scene]) -> dict[str, Any]:
    """The metrics of scored records (``kind``, ``instruction``, ``task``, ``scene``, ``response``, ``correct``)."""
    by_kind: dict[str, list[bool]] = defaultdict(list)
    by_task: dict[str, list[bool]] = defaultdict(list)
    lengths: dict[str, list[int]] = defaultdict(list)
    descriptions = []
    for r in records:
        lengths[r["instruction"]].append(response_length(r["response"]))
        if r["kind"] in QUESTION_KINDS:
            by_kind[r["kind"]].append(r["correct"])
        elif r["kind"] == "language":
            by_task[r["task"]].append(r["correct"])
        elif r["kind"] == "description":
            descriptions.append((r["response"], scenes[r["scene"]]))

    def mean(values: Sequence[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    language = [c for values in by_task.values() for c in values]
    return {
        "accuracy": {kind: mean(by_kind[kind]) for kind in QUESTION_KINDS if by_kind[kind]},
        "questions": {kind: len(by_kind[kind]) for kind in QUESTION_KINDS if by_kind[kind]},
        "description": description_scores(descriptions),
        "response_length": {kind: mean(values) for kind, values in sorted(lengths.items())},
        "language": {
            "accuracy": mean(language),
            "by_task": {task: mean(values) for task, values in sorted(by_task.items())},
            "n": len(language),
        },
    }
