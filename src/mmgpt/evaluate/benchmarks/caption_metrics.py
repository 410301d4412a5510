"""Captioning metrics as the COCO caption evaluation computes them, with ``pycocoevalcap`` (``pip install
'mmgpt[eval]'``): the Stanford PTB tokenizer (lower-cased, punctuation dropped) on references and predictions, then
BLEU-1..4 (the "closest" reference length), METEOR 1.5, ROUGE-L (LCS F-measure with beta 1.2, best reference) and
CIDEr (pycocoevalcap's ``Cider`` is CIDEr-D: sigma 6, clipped counts, length penalty, x10). SPICE is left out: it
needs Stanford CoreNLP, which pycocoevalcap downloads on first use.

The tokenizer and METEOR are Java programs: ``java`` must be on PATH (``apt-get install default-jre-headless``).
CIDEr's document frequencies come from the references of the items scored, so a ``limit`` changes them, as it does
in any subset evaluation with coco-caption.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mmgpt.evaluate.benchmarks.common import ItemId, aligned
from mmgpt.evaluate.benchmarks.items import CaptionItem

METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr")
JAVA_HINT = "install a Java runtime (Debian/Ubuntu: `apt-get install default-jre-headless`) and put `java` on PATH"


class JavaMissingError(RuntimeError):
    """The PTB tokenizer and METEOR of pycocoevalcap cannot run without Java."""


PYCOCOEVALCAP_HINT = "caption metrics need pycocoevalcap: pip install 'mmgpt[eval]' (or pycocoevalcap>=1.2)"
JAVA_MISSING = f"caption metrics run pycocoevalcap's PTB tokenizer and METEOR, which need Java: {JAVA_HINT}"


def _has_pycocoevalcap() -> bool:
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError:
        return False
    return True


def require_caption_metrics() -> None:
    """Raise ImportError (no pycocoevalcap) or :class:`JavaMissingError` (no ``java``), saying how to fix it."""
    if not _has_pycocoevalcap():
        raise ImportError(PYCOCOEVALCAP_HINT)
    if shutil.which("java") is None:
        raise JavaMissingError(JAVA_MISSING)


def caption_metrics_problem() -> str | None:
    """Why the caption metrics cannot run here (None when they can): for callers and tests that skip."""
    try:
        require_caption_metrics()
    except (ImportError, JavaMissingError) as error:
        return str(error)
    return None


@dataclass(frozen=True)
class CaptionScore:
    """Corpus-level scores (METEOR None when not asked for) and each image's, keyed by image id."""

    cider: float
    bleu: tuple[float, float, float, float]
    meteor: float | None
    rouge_l: float
    n: int
    per_item: dict[ItemId, dict[str, float]]

    metric = "CIDEr"

    @property
    def headline(self) -> float:
        return self.cider

    @property
    def bleu4(self) -> float:
        return self.bleu[3]

    def summary(self) -> dict[str, float]:
        out = {"CIDEr": self.cider, "BLEU-4": self.bleu4, "ROUGE-L": self.rouge_l}
        if self.meteor is not None:
            out["METEOR"] = self.meteor
        return out


def _meteor(gts: dict, res: dict) -> tuple[float, list[float]]:
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    try:
        score, scores = meteor.compute_score(gts, res)
    finally:
        # pycocoevalcap stops the Java process only when the object is collected; stop it now.
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
    return score, scores


def score_captions(
    predictions: Mapping[ItemId, str], items: Sequence[CaptionItem], *, metrics: Sequence[str] = METRICS
) -> CaptionScore:
    """CIDEr, BLEU, METEOR and ROUGE-L of ``predictions`` (keyed by image id) against the items' references.
    ``metrics`` may leave out METEOR (the slowest); BLEU, ROUGE_L and CIDEr are always computed."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown caption metrics {sorted(unknown)}; choose from {METRICS}")
    if not items:
        raise ValueError("no caption items to score")
    require_caption_metrics()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = aligned(predictions, items, "captions")
    # Positions as keys: the scorers need hashable, unique, comparable keys, whatever the image ids are.
    references: dict[int, list[dict[str, Any]]] = {
        k: [{"caption": r} for r in item.references] for k, item in enumerate(items)
    }
    candidates = {k: [{"caption": caption}] for k, caption in enumerate(captions)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(references), tokenizer.tokenize(candidates)

    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    meteor, meteor_each = _meteor(gts, res) if "METEOR" in metrics else (None, None)
    per_item = {}
    for k, item in enumerate(items):
        scores = {"BLEU-4": float(bleu_each[3][k]), "ROUGE-L": float(rouge_each[k]), "CIDEr": float(cider_each[k])}
        if meteor_each is not None:
            scores["METEOR"] = float(meteor_each[k])
        per_item[item.key] = scores
    return CaptionScore(
        cider=float(cider),
        bleu=(float(bleu[0]), float(bleu[1]), float(bleu[2]), float(bleu[3])),
        meteor=None if meteor is None else float(meteor),
        rouge_l=float(rouge),
        n=len(items),
        per_item=per_item,
    )
