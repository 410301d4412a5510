"""Scores of the classification sets: HatefulMemes ROC-AUC and accuracy, ImageNet top-1, and their result files.

ROC-AUC is the area under the ROC curve with ties between a positive and a negative counted as half a correct
ordering - the Mann-Whitney statistic, equal to scikit-learn's ``roc_auc_score`` (trapezoids through tied scores).
HatefulMemes predictions are probabilities of "hateful"; the accuracy labels a meme hateful when its probability is
at least ``threshold`` (0.5), and the result file is the challenge's ``id,proba,label`` CSV.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import groupby
from pathlib import Path

from mmgpt.evaluate.benchmarks.common import ItemId, aligned, mean, write_json
from mmgpt.evaluate.benchmarks.items import ClassificationItem


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """The probability that a random positive scores above a random negative (ties count one half)."""
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} scores")
    positives = sum(1 for label in labels if label == 1)
    negatives = sum(1 for label in labels if label == 0)
    if positives + negatives != len(labels):
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(labels) - {0, 1})!r}")
    if positives == 0 or negatives == 0:
        raise ValueError("ROC-AUC is undefined when only one class is present; score items of both classes")
    correct = Fraction(0)
    below = 0  # negatives with a lower score than the current group
    for _, group in groupby(sorted(zip(scores, labels, strict=True)), key=lambda pair: pair[0]):
        tied = [label for _, label in group]
        tied_positives = sum(tied)
        tied_negatives = len(tied) - tied_positives
        correct += tied_positives * (below + Fraction(tied_negatives, 2))
        below += tied_negatives
    return float(correct / (positives * negatives))


@dataclass(frozen=True)
class HatefulMemesScore:
    roc_auc: float
    accuracy: float
    n: int
    threshold: float

    metric = "roc_auc"

    @property
    def headline(self) -> float:
        return self.roc_auc

    def summary(self) -> dict[str, float]:
        return {"roc_auc": self.roc_auc, "accuracy": self.accuracy}


def _probabilities(predictions: Mapping[ItemId, float], items: Sequence[ClassificationItem]) -> list[float]:
    values = aligned(predictions, items, "HatefulMemes")
    for item, value in zip(items, values, strict=True):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(
                f"HatefulMemes: prediction for {item.key!r} must be a probability in [0, 1], got {value!r}"
            )
    return [float(v) for v in values]


def score_hateful_memes(
    predictions: Mapping[ItemId, float], items: Sequence[ClassificationItem], *, threshold: float = 0.5
) -> HatefulMemesScore:
    """ROC-AUC and accuracy of hateful probabilities keyed by meme id."""
    probabilities = _probabilities(predictions, items)
    labels = [item.label for item in items]
    hits = [int(p >= threshold) == label for p, label in zip(probabilities, labels, strict=True)]
    return HatefulMemesScore(roc_auc(labels, probabilities), mean(hits), len(items), threshold)


def write_hateful_memes_results(
    path: str | Path, predictions: Mapping[ItemId, float], items: Sequence[ClassificationItem], *, threshold=0.5
) -> Path:
    """The challenge's submission CSV: ``id,proba,label``."""
    probabilities = _probabilities(predictions, items)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "proba", "label"])
        for item, p in zip(items, probabilities, strict=True):
            writer.writerow([item.key, p, int(p >= threshold)])
    return path


@dataclass(frozen=True)
class Top1Score:
    """Top-1 accuracy and the accuracy of each class (by class name)."""

    accuracy: float
    n: int
    per_class: dict[str, float]

    metric = "top1"

    @property
    def headline(self) -> float:
        return self.accuracy

    def summary(self) -> dict[str, float]:
        return {"top1": self.accuracy}


def _label(item: ClassificationItem, prediction: int | str) -> int:
    """A prediction as a class index: an index, or a class name of the item's classes."""
    if isinstance(prediction, str):
        try:
            return item.classes.index(prediction)
        except ValueError:
            return -1  # a name outside the classes is simply wrong
    if isinstance(prediction, bool) or not isinstance(prediction, int):
        raise TypeError(f"prediction for {item.key!r} must be a class index or name, got {prediction!r}")
    return prediction


def score_top1(predictions: Mapping[ItemId, int | str], items: Sequence[ClassificationItem]) -> Top1Score:
    """Top-1 accuracy of predicted class indices (or names) keyed by item id."""
    guesses = aligned(predictions, items, "top-1")
    by_class: dict[str, list[bool]] = defaultdict(list)
    hits = []
    for item, guess in zip(items, guesses, strict=True):
        hit = _label(item, guess) == item.label
        hits.append(hit)
        by_class[item.class_name].append(hit)
    return Top1Score(mean(hits), len(items), {name: mean(v) for name, v in sorted(by_class.items())})


def write_top1_results(
    path: str | Path, predictions: Mapping[ItemId, int | str], items: Sequence[ClassificationItem]
) -> Path:
    """``[{"id", "label", "class"}]`` (ImageNet subsets have no official result format)."""
    guesses = aligned(predictions, items, "top-1 results")
    rows = []
    for item, guess in zip(items, guesses, strict=True):
        label = _label(item, guess)
        name = item.classes[label] if 0 <= label < len(item.classes) else str(guess)
        rows.append({"id": item.key, "label": label, "class": name})
    return write_json(path, rows)
