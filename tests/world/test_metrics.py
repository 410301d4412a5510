"""World metrics on hand-made answers: exact values."""

from __future__ import annotations

import pytest

from mmgpt.world.evaluate import score
from mmgpt.world.items import language_items, scene_items
from mmgpt.world.metrics import (
    answer_correct,
    colours,
    description_scores,
    language_correct,
    numbers,
    objects,
    positions,
    shapes,
    summarise,
)
from mmgpt.world.report import rows
from mmgpt.world.scene import Scene, Shape
from mmgpt.world.write import load_heldout

SCENE = Scene("s", "k", (Shape("circle", "red", "large", 0, 0), Shape("square", "blue", "small", 1, 1)))


def test_parsers():
    assert colours("The Red circle and a blue one") == ["red", "blue"]
    assert shapes("two circles and a star") == ["circle", "star"]
    assert positions("at the top left, then the top, then the center") == ["top left", "top", "centre"]
    assert numbers("There are three shapes, not 4.") == ["3", "4"]
    assert objects("a large red circle and blue squares") == [("red", "circle"), ("blue", "square")]


@pytest.mark.parametrize(
    ("kind", "response", "truth", "correct"),
    [
        ("colour", "The circle is red.", "red", True),
        ("colour", "red", "red", True),
        ("colour", "It is red or blue.", "red", False),  # a hedge is wrong
        ("colour", "The shape at the top left is green.", "red", False),
        ("shape", "The red shape is a circle.", "circle", True),
        ("count", "There are three shapes.", "3", True),
        ("count", "3", "3", True),
        ("count", "There are two shapes.", "3", False),
        ("position", "The red circle is at the top left.", "top left", True),
        ("position", "The red circle is at the top.", "top left", False),
        ("word", "The word is moon.", "moon", True),
        ("word", "", "moon", False),
        ("reasoning", "The answer is circle. Because it is round.", "circle", True),
        ("reasoning", "The answer is star. Because the circle is at the top.", "circle", False),
        ("reasoning", "yes", "yes", True),
    ],
)
def test_answer_correct(kind, response, truth, correct):
    assert answer_correct(kind, response, truth) is correct


def test_language_correct_checks_the_ending_on_a_word_boundary():
    assert language_correct("3 plus 4 is 7.", "7")
    assert language_correct("7", "7")
    assert not language_correct("3 plus 4 is 17.", "7")
    assert not language_correct("7 is 3 plus 4.", "7")
    assert language_correct("The word moon is spelled m-o-o-n.", "m-o-o-n")


def test_description_precision_recall_exact():
    scores = description_scores([("A red circle and a green square.", SCENE)])
    # said {red, green, circle, square} vs truth {red, blue, circle, square}: 3 of 4 each way
    assert scores["attribute_precision"] == scores["attribute_recall"] == 0.75
    # objects: said {(red, circle), (green, square)} vs {(red, circle), (blue, square)}
    assert scores["object_precision"] == scores["object_recall"] == 0.5
    nothing = description_scores([("Nothing here.", SCENE)])
    assert nothing["attribute_precision"] is None and nothing["object_precision"] is None  # undefined, not 0%
    assert nothing["attribute_recall"] == nothing["object_recall"] == 0.0
    assert description_scores([])["attribute_recall"] is None
    two = description_scores([("A large red circle.", SCENE), ("A small blue square and a red star.", SCENE)])
    # tp: {red, circle} + {blue, square, red}: 5; said 2 + 4 = 6; expected 4 + 4 = 8
    assert two["attribute_precision"] == 5 / 6 and two["attribute_recall"] == 5 / 8


def test_reference_answers_score_perfectly(world):
    heldout = load_heldout(world)
    items = [i for s, p in zip(heldout.scenes, heldout.images, strict=True) for i in scene_items(s, p)]
    items += language_items(heldout.language)
    records = [
        {
            "kind": i.kind,
            "instruction": i.instruction,
            "task": i.task,
            "scene": i.scene,
            "response": i.reference,
            "correct": score(i, i.reference),
        }
        for i in items
    ]
    results = summarise(records, {s.id: s for s in heldout.scenes})
    assert set(results["accuracy"].values()) == {1.0}
    assert {"colour", "shape", "count", "position", "reasoning"} <= set(results["accuracy"])
    assert results["language"]["accuracy"] == 1.0 and results["language"]["n"] == 8
    description = results["description"]
    assert description["n"] == 4
    assert description["attribute_precision"] == description["attribute_recall"] == 1.0
    assert description["object_precision"] == description["object_recall"] == 1.0


def test_known_wrong_answers_give_exact_fractions():
    records = [
        {"kind": "colour", "instruction": "question", "task": "", "scene": "s", "response": r, "correct": c}
        for r, c in [("red", True), ("blue", False), ("red", True), ("green", False)]
    ]
    records += [
        {
            "kind": "language",
            "instruction": "language",
            "task": "arithmetic",
            "scene": "",
            "response": "x",
            "correct": c,
        }
        for c in (True, False, False)
    ]
    results = summarise(records, {"s": SCENE})
    assert results["accuracy"] == {"colour": 0.5}
    assert results["language"] == {"accuracy": 1 / 3, "by_task": {"arithmetic": 1 / 3}, "n": 3}
    assert results["response_length"] == {"language": 1.0, "question": 1.0}


def test_an_undefined_precision_shows_as_a_dash_not_zero():
    results = {
        "accuracy": {},
        "questions": {},
        "language": {"accuracy": 0.5, "by_task": {}, "n": 2},
        "description": description_scores([("Nothing here.", SCENE)]),
        "response_length": {},
    }
    shown = {metric: value for metric, value, _ in rows(results)}
    assert shown["description attribute precision"] == "-"
    assert shown["description attribute recall"] == "0.0%"
