"""The official VQA normalisation and accuracy, and exact match, on hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmgpt.evaluate.benchmarks.common import PredictionError
from mmgpt.evaluate.benchmarks.items import VqaItem
from mmgpt.evaluate.benchmarks.vqa_accuracy import exact_match, score_exact_match, score_vqa, vqa_accuracy
from mmgpt.evaluate.benchmarks.vqa_normalize import normalize_answer, process_digit_article, process_punctuation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two dogs.", "2 dogs"),
        ("it's", "it's"),  # the apostrophe is not in the punctuation list
        ("dont", "don't"),  # contractions add apostrophes
        ("Im", "im"),  # a key with a capital never matches after lower-casing
        ("The Cat", "cat"),
        ("an apple a day", "apple day"),
        ("none", "0"),
        ("ten", "10"),
        ("1,000", "1000"),  # the comma-in-number rule deletes the comma
        ("1,000 (approx)", "1000 approx"),  # ... and then every listed mark
        ("black/white", "black white"),  # no space beside it: a mark becomes a space
        ("black / white", "black white"),  # a space beside it: the mark is deleted
        ("3.5", "3.5"),  # a period before a digit stays
        ("yes!", "yes"),
        ("  tab\there\n", "tab here"),
        ("left-hand", "left hand"),
        ("o'clock:", "o'clock:"),  # neither ' nor : is in the list
    ],
)
def test_normalisation(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_punctuation_rule_is_tested_on_the_original_text() -> None:
    # "a, b" has ", " so every comma is deleted; "?" has no space beside it and becomes a space.
    assert process_punctuation("a, b?c") == "a b c"
    assert process_punctuation("x" + "." * 40) == "x" + "." * 8  # the official count=re.UNICODE (32) quirk
    assert process_digit_article("A Two THE three") == "2 3"


@pytest.mark.parametrize(("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_accuracy(matches: int, expected: float) -> None:
    # k of 10 humans match: k subsets of 9 hold k-1 matches, 10-k hold k; average min(m/3, 1).
    answers = ["red"] * matches + ["blue", "green", "teal", "navy", "pink", "gray", "cyan", "lime", "plum", "rose"]
    answers = answers[:10]
    assert vqa_accuracy("red", answers) == expected


def test_normalisation_only_when_the_humans_disagree() -> None:
    assert vqa_accuracy("Two", ["2"] * 9 + ["3"]) == 1.0  # answers differ: "Two" -> "2"
    assert vqa_accuracy("Two", ["2"] * 10) == 0.0  # all the same: no normalisation, as in vqaEval.py
    assert vqa_accuracy(" 2\n", ["2"] * 10) == 1.0  # whitespace is always cleaned


def test_exact_match() -> None:
    assert exact_match("The Man.", ["man"]) == 1.0
    assert exact_match("Two", ["2"]) == 1.0  # normalised on both sides, always
    assert exact_match("woman", ["man"]) == 0.0


def _item(question_id: int, answers: list[str], answer_type: str | None) -> VqaItem:
    return VqaItem(question_id, Path("x.jpg"), "q?", tuple(answers), answer_type, answer_type and f"{answer_type}?")


def test_score_vqa_overall_and_per_type() -> None:
    items = [
        _item(1, ["yes"] * 10, "yes/no"),
        _item(2, ["2"] + ["3"] * 9, "number"),
        _item(3, ["cat"] * 3 + ["kitten"] * 7, "other"),
        _item(4, ["tree"] * 10, None),
    ]
    score = score_vqa({1: "yes", 2: "two", 3: "a cat.", 4: "bush"}, items)
    assert score.per_item == {1: 1.0, 2: 0.3, 3: 0.9, 4: 0.0}
    assert score.accuracy == (1.0 + 0.3 + 0.9 + 0.0) / 4
    assert score.per_answer_type == {"number": 0.3, "other": 0.9, "yes/no": 1.0}
    assert score.per_question_type == {"number?": 0.3, "other?": 0.9, "yes/no?": 1.0}
    assert score.headline == score.accuracy and score.n == 4
    assert score.summary()["vqa_accuracy/answer_type/number"] == 0.3


def test_score_exact_match() -> None:
    items = [_item(1, ["man"], "query"), _item(2, ["yes"], "verify")]
    score = score_exact_match({1: "The man", 2: "no"}, items)
    assert (score.metric, score.accuracy, score.per_answer_type) == ("exact_match", 0.5, {"query": 1.0, "verify": 0.0})


def test_predictions_must_match_the_items() -> None:
    items = [_item(1, ["a"], None), _item(2, ["b"], None)]
    with pytest.raises(PredictionError, match=r"no prediction for 1 of 2 items \(first ids \[2\]\)"):
        score_vqa({1: "a"}, items, benchmark="VQAv2")
    with pytest.raises(PredictionError, match=r"1 predictions for ids that are not among the 2 items \(first \['1'\]"):
        score_vqa({1: "a", 2: "b", "1": "a"}, items)
    with pytest.raises(TypeError, match="must be a string"):
        score_vqa({1: "a", 2: None}, items)  # type: ignore[dict-item]
