"""VQA accuracy as the official VQA evaluation computes it, and exact match for the one-answer sets.

``vqa_accuracy`` follows ``VQAEval.evaluate`` (GT-Vision-Lab/VQA ``vqaEval.py``): every answer has newlines/tabs
made spaces and is stripped; only when the human answers are not all the same string are they and the prediction
normalised (:func:`~mmgpt.evaluate.benchmarks.vqa_normalize.normalize_answer`) - so against ten identical answers
"Two" does not match "2", as in the official code. Then for each human answer, the prediction is scored against
the other answers as min(matches/3, 1), and the scores are averaged: with ten answers of which k match, 0.3, 0.6,
0.9 and 1.0 for k = 1, 2, 3, 4+. Used for VQAv2, OK-VQA, VizWiz and TextVQA. (TextVQA's EvalAI/M4C evaluator
normalises every answer, also when all agree, and splits "'s"; the difference is confined to such answers.)

``exact_match`` scores OCR-VQA and GQA, which have one answer per question: 1.0 when prediction and answer are
equal after the same normalisation, applied to both always.

Scores are fractions in [0, 1], unrounded (the official script reports percentages rounded to 2 decimals).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from mmgpt.evaluate.benchmarks.common import ItemId, aligned, mean
from mmgpt.evaluate.benchmarks.items import VqaItem
from mmgpt.evaluate.benchmarks.vqa_normalize import clean_whitespace, normalize_answer

HUMANS_FOR_FULL_CREDIT = 3


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The official accuracy of one prediction against the human answers (usually ten)."""
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer; the item has none")
    truths = [clean_whitespace(a) for a in answers]
    guess = clean_whitespace(prediction)
    if len(set(truths)) > 1:
        truths = [normalize_answer(a) for a in truths]
        guess = normalize_answer(guess)
    matching = sum(truth == guess for truth in truths)
    # Leaving out answer i removes one match exactly when answer i matches.
    total = sum(min(Fraction(matching - (truth == guess), HUMANS_FOR_FULL_CREDIT), Fraction(1)) for truth in truths)
    return float(total / len(truths))


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised answer, else 0.0 (OCR-VQA, GQA)."""
    if not answers:
        raise ValueError("exact match needs an answer; the item has none")
    guess = normalize_answer(prediction)
    return float(any(normalize_answer(answer) == guess for answer in answers))


@dataclass(frozen=True)
class AnswerScore:
    """``accuracy`` over all items, each item's score, and means per answer / question type (types the files give;
    items without one are only in the overall number)."""

    metric: str
    accuracy: float
    n: int
    per_item: dict[ItemId, float]
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]

    @property
    def headline(self) -> float:
        return self.accuracy

    def summary(self) -> dict[str, float]:
        out = {self.metric: self.accuracy}
        out.update({f"{self.metric}/answer_type/{k}": v for k, v in self.per_answer_type.items()})
        return out


def _score(
    predictions: Mapping[ItemId, str],
    items: Sequence[VqaItem],
    *,
    metric: str,
    rule: Callable[[str, Sequence[str]], float],
    benchmark: str,
) -> AnswerScore:
    guesses = aligned(predictions, items, benchmark)
    per_item: dict[ItemId, float] = {}
    by_answer: dict[str, list[float]] = defaultdict(list)
    by_question: dict[str, list[float]] = defaultdict(list)
    for item, guess in zip(items, guesses, strict=True):
        if not isinstance(guess, str):
            raise TypeError(f"{benchmark}: the prediction for {item.key!r} must be a string, got {guess!r}")
        score = rule(guess, item.answers)
        per_item[item.key] = score
        if item.answer_type is not None:
            by_answer[item.answer_type].append(score)
        if item.question_type is not None:
            by_question[item.question_type].append(score)
    return AnswerScore(
        metric=metric,
        accuracy=mean(list(per_item.values())),
        n=len(items),
        per_item=per_item,
        per_answer_type={k: mean(v) for k, v in sorted(by_answer.items())},
        per_question_type={k: mean(v) for k, v in sorted(by_question.items())},
    )


def score_vqa(predictions: Mapping[ItemId, str], items: Sequence[VqaItem], *, benchmark: str = "VQA") -> AnswerScore:
    """Official VQA accuracy (VQAv2, OK-VQA, VizWiz, TextVQA); ``predictions`` keyed by ``item.key``."""
    return _score(predictions, items, metric="vqa_accuracy", rule=vqa_accuracy, benchmark=benchmark)


def score_exact_match(
    predictions: Mapping[ItemId, str], items: Sequence[VqaItem], *, benchmark: str = "exact-match VQA"
) -> AnswerScore:
    """Exact match after the VQA normalisation (OCR-VQA, GQA)."""
    return _score(predictions, items, metric="exact_match", rule=exact_match, benchmark=benchmark)
