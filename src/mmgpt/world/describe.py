"""The world's English: noun phrases, referring expressions, numbers, captions and long descriptions of a scene.

Every text about a scene is built here, from the ground truth only, so the training targets and the metrics
(``mmgpt.world.metrics``) agree on the words: colours, shape names (singular and ``+s`` plural), sizes, the
nine position names, number words ``one``..``nine`` and the scene's word.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from mmgpt.world.scene import COLOURS, POSITIONS, SHAPES, Scene, Shape

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Position name -> the phrase a sentence uses ("at the top left", "in the centre").
POSITION_PHRASES = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def plural(noun: str, n: int) -> str:
    return noun if n == 1 else noun + "s"


def counted(n: int, noun: str) -> str:
    """``one circle``, ``three circles``."""
    return f"{number_word(n)} {plural(noun, n)}"


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def noun_phrase(shape: Shape, *, size: bool = True) -> str:
    """``large red circle`` (without an article)."""
    return f"{shape.size} {shape.colour} {shape.kind}" if size else f"{shape.colour} {shape.kind}"


def join_list(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def references(scene: Scene, shape: Shape, *, without: str = "") -> list[str]:
    """The phrases that pick out ``shape`` alone in ``scene``; ``without`` names an attribute the phrase must not
    use (a colour question cannot say "the red circle"). The position phrase always qualifies."""
    found = []
    if without != "kind" and scene.count(kind=shape.kind) == 1:
        found.append(f"the {shape.kind}")
    if without != "colour" and scene.count(colour=shape.colour) == 1:
        found.append(f"the {shape.colour} shape")
    if without not in ("colour", "kind") and scene.count(colour=shape.colour, kind=shape.kind) == 1:
        found.append(f"the {shape.colour} {shape.kind}")
    if without != "position":
        found.append(f"the shape {POSITION_PHRASES[shape.position]}")
    return found


def reference(scene: Scene, shape: Shape, rng: random.Random, *, without: str = "") -> str | None:
    options = references(scene, shape, without=without)
    return rng.choice(options) if options else None


def colour_summary(scene: Scene) -> str:
    """``two red shapes and one blue shape`` in the order of ``COLOURS``."""
    counts = Counter(s.colour for s in scene.shapes)
    return join_list([f"{number_word(counts[c])} {c} {plural('shape', counts[c])}" for c in COLOURS if counts[c]])


def kind_summary(scene: Scene) -> str:
    counts = Counter(s.kind for s in scene.shapes)
    return join_list([counted(counts[k], k) for k in SHAPES if counts[k]])


def word_sentence(scene: Scene) -> str:
    if scene.word is None:
        return "There is no text in the image."
    return f"The word {scene.word} is written below the shapes."


def detailed_description(scene: Scene, rng: random.Random) -> str:
    """A long description (LLaVA detail style): how many shapes, each shape in reading order, the word, a summary."""
    n = len(scene.shapes)
    opening = rng.choice(
        [
            f"The image shows {counted(n, 'shape')} on a white background.",
            f"In this image there {'is' if n == 1 else 'are'} {counted(n, 'shape')} on a white background.",
        ]
    )
    sentences = [opening]
    for shape in scene.shapes:
        where = POSITION_PHRASES[shape.position]
        sentences.append(
            rng.choice(
                [
                    f"{capitalise(where)} there is {article(noun_phrase(shape))}.",
                    f"{capitalise(article(noun_phrase(shape)))} is {where}.",
                ]
            )
        )
    sentences.append(word_sentence(scene))
    if n > 1:
        sentences.append(f"In total there are {colour_summary(scene)}.")
    return " ".join(sentences)


def captions(scene: Scene) -> list[str]:
    """Two short captions (COCO style): the shapes by colour and kind, and the counts by kind."""
    shapes = join_list([article(noun_phrase(s, size=False)) for s in scene.shapes])
    word = f" with the word {scene.word}" if scene.word else ""
    first = capitalise(shapes) + word + "."
    n = len(scene.shapes)
    second = (
        f"A picture of {article(noun_phrase(scene.shapes[0]))}{word}."
        if n == 1
        else f"A picture of {kind_summary(scene)}{word}."
    )
    return [first, second]


def dense_caption(scene: Scene) -> str:
    """Every shape with size, colour and position, and the word: the alt-text of the pretraining corpus."""
    parts = [f"{article(noun_phrase(s))} {POSITION_PHRASES[s.position]}" for s in scene.shapes]
    text = capitalise(join_list(parts)) + "."
    if scene.word:
        text += f" The word {scene.word} is written below."
    return text


def grid_caption(scene: Scene) -> str:
    """Every cell of the grid in reading order, its shape (size, colour, kind) or ``no shape``, then the word band:
    ``At the top left, no shape. At the top, a large purple diamond. ... The word book is written below the shapes.``

    Each attribute follows the name of its cell, so predicting it is reading that cell - what a question that picks
    a shape by its position asks ("What colour is the shape at the top?")."""
    cells = []
    for position in POSITIONS.values():
        shape = scene.at(position)
        cells.append(
            f"{capitalise(POSITION_PHRASES[position])}, {article(noun_phrase(shape)) if shape else 'no shape'}."
        )
    return " ".join([*cells, word_sentence(scene)])


def index_caption(scene: Scene) -> str:
    """The shapes looked up by kind, then by colour, every value in the vocabulary's order (shapes of one kind or
    colour in reading order): ``There is no circle. The square is red. The triangles are blue and green. ... The red
    shape is a square. There is no green shape. The blue shapes are a triangle and a star. ...``

    Each colour follows the kind it belongs to and each kind its colour, so predicting it is finding a shape by one
    attribute and reading another - what "What colour is the circle?" and "What shape is the red shape?" ask."""
    return _looked_up(scene, of_kind=lambda s: s.colour, of_colour=lambda s: article(s.kind))


def where_caption(scene: Scene) -> str:
    """Where the shapes are, looked up by kind, then by colour, every value in the vocabulary's order (shapes of
    one kind or colour in reading order): ``The circle is at the top left. There is no square. The triangles are
    at the top and on the left. ... The red shape is at the top left. There is no green shape. ...``

    Each place follows the kind or colour of the shape there, so predicting it is finding a shape by what it is and
    naming its cell - what "Where is the red circle?" asks; grid captions (:func:`grid_caption`) go the other way."""
    return _looked_up(scene, of_kind=_place, of_colour=_place)


def tally_caption(scene: Scene) -> str:
    """How many shapes there are, then how many of each kind and of each colour, in the vocabulary's order:
    ``There are three shapes. There is one circle. There is no square. ... There are two red shapes. There is no
    green shape. ...``

    Each number follows nothing but the image and the kind or colour it counts - what "How many red shapes are
    there?" asks; the other captions give the total only in passing."""

    def tally(noun: str, n: int) -> str:
        return f"There is no {noun}." if n == 0 else f"There {'is' if n == 1 else 'are'} {counted(n, noun)}."

    kinds = Counter(s.kind for s in scene.shapes)
    colours = Counter(s.colour for s in scene.shapes)
    return " ".join(
        [
            tally("shape", len(scene.shapes)),
            *(tally(kind, kinds[kind]) for kind in SHAPES),
            *(tally(f"{colour} shape", colours[colour]) for colour in COLOURS),
        ]
    )


def _looked_up(scene: Scene, *, of_kind: Callable[[Shape], str], of_colour: Callable[[Shape], str]) -> str:
    """For each kind, then each colour, in the vocabulary's order: ``of_kind`` (``of_colour``) of the shapes of
    that kind (colour) in reading order, as one sentence (:func:`_entry`)."""
    by_kind = [_entry(kind, [of_kind(s) for s in scene.shapes if s.kind == kind]) for kind in SHAPES]
    by_colour = [
        _entry(f"{colour} shape", [of_colour(s) for s in scene.shapes if s.colour == colour]) for colour in COLOURS
    ]
    return " ".join(by_kind + by_colour)


def _place(shape: Shape) -> str:
    return POSITION_PHRASES[shape.position]


def _entry(subject: str, values: list[str]) -> str:
    """``There is no circle.``, ``The circle is red.``, ``The circles are red and blue.``"""
    if not values:
        return f"There is no {subject}."
    if len(values) == 1:
        return f"The {subject} is {values[0]}."
    return f"The {plural(subject, 2)} are {join_list(values)}."
