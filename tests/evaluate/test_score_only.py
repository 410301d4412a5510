"""`mmgpt eval score`: predictions files in each benchmark's official result format, scored without a model.

Golden numbers, worked out by hand with the rules of the official scorers (the benchmarks package implements them;
tests/evaluate/benchmarks checks each rule):

- VQAv2 (GT-Vision-Lab/VQA ``vqaEval.py``): question 421 has answers 7 x "2", "two", 2 x "3" - they differ, so all
  are normalised ("two" -> "2") and the prediction "two" -> "2" matches 8: every leave-one-out subset has >= 3
  matches, accuracy 1. Question 420 has ten identical "no": nothing is normalised, so "No" matches none: 0 (the
  official edge case). Question 70 has 3 x "laptop", 7 x "computer": "Laptop." normalises to "laptop", 3 matches;
  leaving out a "laptop" leaves 2 (2/3), leaving out a "computer" leaves 3 (1): (3 * 2/3 + 7) / 10 = 0.9.
  Overall (1 + 0 + 0.9) / 3 = 19/30.
- A-OKVQA (allenai/aokvqa ``eval_predictions.py``): multiple choice over both questions - "cigarette" right, "b"
  wrong: 1/2; direct answer only over the question that is not ``difficult_direct_answer``: "cigar" matches 2 of the
  10 answers: min(1, 2/3).
- HatefulMemes ROC-AUC (scikit-learn's ``roc_auc_score``): labels 1, 0, 1, 0 with probabilities 0.9, 0.2, 0.4, 0.4:
  0.9 beats both negatives (2), 0.4 beats 0.2 (1) and ties 0.4 (1/2): 3.5 / 4 = 0.875.
"""

from __future__ import annotations

import json

import pytest

from mmgpt.cli import main
from tests.evaluate.benchmarks.published import write_aokvqa, write_hateful_memes, write_pope, write_vqav2


def score(capsys, *args: str) -> tuple[int, str]:
    code = main(["eval", "score", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def vqa_files(tmp_path, predictions):
    questions = write_vqav2(tmp_path)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(predictions))
    return ["vqav2", "--data", str(questions), "--predictions", str(results), "--out", str(tmp_path / "m.json")]


def figures(tmp_path) -> dict:
    return json.loads((tmp_path / "m.json").read_text())


def test_vqav2_golden(tmp_path, capsys):
    predictions = [
        {"question_id": 421, "answer": "two"},
        {"question_id": 420, "answer": "No"},
        {"question_id": 70, "answer": "Laptop."},
    ]
    code, out = score(capsys, *vqa_files(tmp_path, predictions))
    assert code == 0, out
    report = figures(tmp_path)
    assert report["metrics"]["vqa_accuracy"] == pytest.approx(19 / 30)
    assert report["metrics"]["vqa_accuracy/answer_type/yes/no"] == 0.0
    assert report["scored"] == 3 and report["missing"] == 0 and "vqa_accuracy" in out


def test_duplicated_ids(tmp_path, capsys):
    predictions = [
        {"question_id": 421, "answer": "3"},
        {"question_id": 420, "answer": "no"},
        {"question_id": 70, "answer": "laptop"},
        {"question_id": 421, "answer": "2"},
    ]
    args = vqa_files(tmp_path, predictions)
    code, out = score(capsys, *args)
    assert code == 2 and "row 3: id 421 was already predicted at row 0" in out and "--duplicates last" in out
    code, out = score(capsys, *args, "--duplicates", "last")  # the official VQA API indexes results in a dict
    assert code == 0 and figures(tmp_path)["metrics"]["vqa_accuracy"] == pytest.approx((1 + 1 + 0.9) / 3)
    assert figures(tmp_path)["duplicates"] == 1


def test_missing_ids(tmp_path, capsys):
    args = vqa_files(tmp_path, [{"question_id": 421, "answer": "2"}, {"question_id": 70, "answer": ""}])
    code, out = score(capsys, *args)
    assert code == 2 and "no prediction for 1 of 3 items (first ids [420])" in out
    assert score(capsys, *args, "--missing", "zero")[0] == 0
    assert figures(tmp_path)["metrics"]["vqa_accuracy"] == pytest.approx(1 / 3)  # the empty answer scores 0 too
    assert score(capsys, *args, "--missing", "skip")[0] == 0
    report = figures(tmp_path)
    assert report["metrics"]["vqa_accuracy"] == pytest.approx(1 / 2) and report["scored"] == 2
    assert report["missing"] == 1


def test_unknown_ids_and_malformed_files(tmp_path, capsys):
    args = vqa_files(tmp_path, [{"question_id": 5, "answer": "x"}])
    code, out = score(capsys, *args)
    assert code == 2 and "1 predictions have ids that are not in the annotations (row 0: 5)" in out
    (tmp_path / "results.json").write_text('[{"question_id": 421}]')
    code, out = score(capsys, *args)
    assert code == 2 and "results.json row 0, field 'answer': missing (vqav2 results)" in out
    (tmp_path / "results.json").write_text("[{")
    code, out = score(capsys, *args)
    assert code == 2 and "results.json: not JSON" in out
    (tmp_path / "results.json").write_text('{"421": "two"}')  # A-OKVQA's and MMLU's shape, not VQAv2's
    code, out = score(capsys, *args)
    assert code == 2 and "results.json: expected a list of result objects, found dict" in out


def test_aokvqa_golden(tmp_path, capsys):
    data = write_aokvqa(tmp_path)
    results = tmp_path / "aokvqa_results.json"
    results.write_text(
        json.dumps(
            {
                "22jbM6gDxdaMaunuzgrsBB": {"multiple_choice": "cigarette", "direct_answer": "cigar"},
                "2hard": {"multiple_choice": "b", "direct_answer": "a"},
            }
        )
    )
    code, out = score(
        capsys, "aokvqa", "--data", str(data), "--predictions", str(results), "--out", str(tmp_path / "m.json")
    )
    assert code == 0, out
    assert figures(tmp_path)["metrics"] == pytest.approx({"aokvqa_multiple_choice": 0.5, "aokvqa_direct_answer": 2 / 3})


def test_pope_answers_by_line_and_hateful_memes_csv(tmp_path, capsys):
    data = write_pope(tmp_path)
    answers = tmp_path / "answers.jsonl"
    words = ["Yes, there is.", "yes", "No.", "I don't think so.", "no", "There is not a bus."]
    answers.write_text("".join(json.dumps({"question": "?", "answer": w}) + "\n" for w in words))
    code, out = score(
        capsys, "pope", "--data", str(data), "--predictions", str(answers), "--out", str(tmp_path / "m.json")
    )
    assert code == 0, out
    # parsed: yes yes no yes(!) no no against yes yes yes no no no: tp 2, fn 1, fp 1, tn 2
    assert figures(tmp_path)["metrics"]["pope_accuracy"] == pytest.approx(4 / 6)
    assert figures(tmp_path)["metrics"]["pope_f1"] == pytest.approx(2 / 3)
    memes = write_hateful_memes(tmp_path)
    csv = tmp_path / "submission.csv"
    csv.write_text("id,proba,label\n8291,0.9,1\n46971,0.2,0\n3745,0.4,0\n83745,0.4,0\n")
    code, out = score(
        capsys, "hatefulmemes", "--data", str(memes), "--predictions", str(csv), "--out", str(tmp_path / "m.json")
    )
    assert code == 0, out
    assert figures(tmp_path)["metrics"] == pytest.approx({"roc_auc": 0.875, "accuracy": 0.75})
    csv.write_text("id,proba,label\n8291,high,1\n")
    code, out = score(capsys, "hatefulmemes", "--data", str(memes), "--predictions", str(csv))
    assert code == 2 and "submission.csv line 2, field 'proba': not a number: 'high'" in out
