"""Held-out instruction data (Dolly, Alpaca) and ROUGE-L as rouge-score computes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmgpt.evaluate.benchmarks.common import BenchmarkFormatError
from mmgpt.evaluate.benchmarks.instructions import (
    read_alpaca,
    read_dolly,
    rouge_l,
    rouge_tokens,
    score_rouge_l,
    write_instruction_results,
)
from mmgpt.evaluate.benchmarks.items import InstructionItem
from tests.evaluate.benchmarks import published


def test_rouge_tokens() -> None:
    assert rouge_tokens("The cat's hat, 2nd-hand!") == ["the", "cat", "s", "hat", "2nd", "hand"]
    assert rouge_tokens("Ça va?") == ["a", "va"]  # non-ASCII letters are separators, as in rouge-score


def test_rouge_l_hand_values() -> None:
    # 6 tokens each, LCS "the cat on the mat" = 5: P = R = 5/6
    assert rouge_l("The cat sat on the mat.", "the cat is on the mat") == 5 / 6
    # LCS 1 ("dog"): P = 1/2, R = 1/3, F = 2 PR / (P + R) = 0.4
    assert rouge_l("A dog!", "the dog runs") == 0.4
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("...", "...") == 0.0
    assert rouge_l("Same words", "same WORDS") == 1.0


def test_dolly(tmp_path: Path) -> None:
    items = read_dolly(published.write_dolly(tmp_path))
    assert items == [
        InstructionItem(
            0,
            "When did Virgin Australia start operating?",
            "Virgin Australia commenced services on 31 August 2000.",
            "On 31 August 2000.",
            "closed_qa",
        ),
        InstructionItem(1, "Name a primary colour.", "", "Red.", "open_qa"),
    ]
    score = score_rouge_l({0: "It started on 31 August 2000.", 1: "Blue."}, items)
    # item 0: prediction 6 tokens, reference 4 ("on 31 august 2000"), LCS 4: P 4/6, R 1 -> F 0.8
    assert score.per_item == {0: 0.8, 1: 0.0}
    assert (score.rouge_l, score.per_category) == (0.4, {"closed_qa": 0.8, "open_qa": 0.0})
    out = write_instruction_results(tmp_path / "dolly.jsonl", {0: "x", 1: "y"}, items)
    assert json.loads(out.read_text().splitlines()[1])["prediction"] == "y"


def test_alpaca(tmp_path: Path) -> None:
    items = read_alpaca(published.write_alpaca(tmp_path), limit=5)
    assert [(i.id, i.input, i.output, i.category) for i in items] == [
        (0, "", "Eat well, sleep, exercise.", None),
        (1, "Hello", "Bonjour", None),
    ]


def test_dolly_missing_response(tmp_path: Path) -> None:
    path = published.write_dolly(tmp_path)
    path.write_text(path.read_text().replace('"response"', '"answer"', 1))
    with pytest.raises(BenchmarkFormatError, match=r"dolly-15k\.jsonl line 1, field 'response': missing"):
        read_dolly(path)
