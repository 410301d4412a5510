"""A-OKVQA's multiple-choice and direct-answer accuracy, and POPE's answer parsing and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmgpt.evaluate.benchmarks.aokvqa import AokvqaPrediction, read_aokvqa, score_aokvqa, write_aokvqa_results
from mmgpt.evaluate.benchmarks.common import BenchmarkFormatError
from mmgpt.evaluate.benchmarks.pope import parse_pope_answer, read_pope, score_pope, write_pope_answers
from tests.evaluate.benchmarks import published

HARD = "2hard"
FIRST = "22jbM6gDxdaMaunuzgrsBB"


def test_aokvqa_reader(tmp_path: Path) -> None:
    items = read_aokvqa(published.write_aokvqa(tmp_path), tmp_path / "coco")
    first = items[0]
    assert (first.key, first.answer, first.answer_index, first.difficult_direct_answer) == (
        FIRST,
        "cigarette",
        3,
        False,
    )
    assert first.image == tmp_path / "coco/val2017/000000461751.jpg"
    assert first.direct_answers == ("cigarette",) * 8 + ("cigar",) * 2
    assert items[1].difficult_direct_answer is True


def test_aokvqa_scores_as_its_official_evaluation(tmp_path: Path) -> None:
    items = read_aokvqa(published.write_aokvqa(tmp_path))
    predictions = {
        FIRST: AokvqaPrediction(multiple_choice="cigarette", direct_answer="cigar"),
        HARD: {"multiple_choice": "b", "direct_answer": "a"},  # the result file's dict form
    }
    score = score_aokvqa(predictions, items)
    assert (score.multiple_choice, score.n_multiple_choice) == (0.5, 2)
    # DA: the difficult question is left out; "cigar" matches 2 of 10 -> min(1, 2/3), no leave-one-out
    assert (score.direct_answer, score.n_direct_answer) == (2 / 3, 1)
    assert score.per_item_direct_answer == {FIRST: 2 / 3}
    assert score.headline == 0.5
    # no normalisation: "Cigarette" is not the choice "cigarette"
    only_mc = score_aokvqa({FIRST: AokvqaPrediction("Cigarette"), HARD: AokvqaPrediction("a")}, items)
    assert (only_mc.multiple_choice, only_mc.direct_answer) == (0.5, None)
    out = write_aokvqa_results(tmp_path / "predictions_val.json", predictions, items)
    assert json.loads(out.read_text()) == {
        FIRST: {"multiple_choice": "cigarette", "direct_answer": "cigar"},
        HARD: {"multiple_choice": "b", "direct_answer": "a"},
    }


def test_aokvqa_choice_index_out_of_range(tmp_path: Path) -> None:
    path = published.write_aokvqa(tmp_path)
    rows = json.loads(path.read_text())
    rows[1]["correct_choice_idx"] = 2
    path.write_text(json.dumps(rows))
    with pytest.raises(BenchmarkFormatError, match=r"row 1, field 'correct_choice_idx': 2 is outside the 2 choices"):
        read_aokvqa(path)


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("Yes, there is a dog.", "yes"),
        ("No.", "no"),
        ("No, there is not.", "no"),
        ("There is not a dog in the image.", "no"),
        ("Yes. No cat though.", "yes"),  # only the first sentence counts
        ("I don't think so", "yes"),  # "don't" is not a no-word in the official parser
        ("NO", "yes"),  # neither is "NO"
        ("no!", "yes"),  # nor "no!"
        ("nope", "yes"),
    ],
)
def test_pope_answer_parsing(answer: str, parsed: str) -> None:
    assert parse_pope_answer(answer) == parsed


def test_pope_metrics_on_six_questions(tmp_path: Path) -> None:
    items = read_pope(published.write_pope(tmp_path), tmp_path / "val2014")
    assert [i.label for i in items] == ["yes", "yes", "yes", "no", "no", "no"]
    assert items[0].image == tmp_path / "val2014/COCO_val2014_000000310196.jpg"
    answers = ["Yes, there is.", "No.", "There is not a dog.", "no", "Yes", "No, there is no bus."]
    score = score_pope(dict(zip([i.key for i in items], answers, strict=True)), items)
    # parsed: yes no no | no yes no  -> TP 1, FN 2, TN 2, FP 1
    assert (score.tp, score.fn, score.tn, score.fp) == (1, 2, 2, 1)
    assert score.accuracy == 0.5
    assert score.precision == 0.5
    assert score.recall == 1 / 3
    assert score.f1 == 0.4
    assert score.yes_ratio == 2 / 6
    assert score.headline == score.f1
    out = write_pope_answers(tmp_path / "answers.jsonl", dict(zip([i.key for i in items], answers, strict=True)), items)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {"question_id": 1, "question": "Is there a snowboard in the image?", "answer": "Yes, there is."}


def test_pope_label_must_be_yes_or_no(tmp_path: Path) -> None:
    path = published.write_pope(tmp_path)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"label": "yes"', '"label": "Yes"')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"coco_pope_random\.json line 3, field 'label': expected 'yes'"):
        read_pope(path)
