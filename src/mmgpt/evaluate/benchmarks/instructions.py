"""Language retention on held-out instruction data (Dolly, Alpaca): the readers, ROUGE-L, and the result file.

- Dolly (``databricks-dolly-15k.jsonl``): one ``{"instruction", "context", "response", "category"}`` per line;
  ``context`` (may be empty) is the ``### Input:`` section.
- Alpaca / Alpaca-GPT4 (``alpaca_gpt4_data.json``): a list of ``{"instruction", "input", "output"}``.

Item ids are row numbers from 0 in file order; which rows are held out is the caller's choice (``limit`` takes the
first ones). ROUGE-L is computed as Google's ``rouge-score`` package computes ``rougeL`` with its defaults (no
stemming): lower-case, every run of characters other than a-z and 0-9 becomes a space, split into tokens; the
F-measure 2PR / (P + R) of the longest common subsequence of tokens, P = LCS / prediction tokens, R = LCS /
reference tokens; 0 when either side has no tokens. (pycocoevalcap's ROUGE-L differs: beta 1.2 and its own
tokenisation.) Written here rather than imported, to keep the dependency out.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmgpt.data.sources.base import text_field
from mmgpt.data.sources.jsonio import JsonFiles, Row
from mmgpt.evaluate.benchmarks.common import ItemId, aligned, json_row, located, mean, take, write_jsonl
from mmgpt.evaluate.benchmarks.items import InstructionItem

_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def read_dolly(
    path: str | Path, image_root: str | Path | None = None, *, limit: int | None = None
) -> list[InstructionItem]:
    """Dolly rows as instruction items (``image_root`` is unused: text only)."""
    path = Path(path)
    rows = JsonFiles().lines(path)
    return [_item(path, row, "Dolly", ("instruction", "context", "response")) for row in take(rows, limit)]


def read_alpaca(
    path: str | Path, image_root: str | Path | None = None, *, limit: int | None = None
) -> list[InstructionItem]:
    """Alpaca rows as instruction items (``image_root`` is unused: text only)."""
    path = Path(path)
    rows = JsonFiles().array(path)
    return [_item(path, row, "Alpaca", ("instruction", "input", "output")) for row in take(rows, limit)]


def _item(path: Path, row: Row, benchmark: str, fields: tuple[str, str, str]) -> InstructionItem:
    instruction, extra, output = fields
    with located(path, row.where, benchmark):
        value = json_row(row.value)
        text = text_field(value, instruction)
        input_text = text_field(value, extra, allow_empty=True) if extra in value else ""
        answer = text_field(value, output)
        category = text_field(value, "category") if "category" in value else None
    return InstructionItem(row.index, text, input_text, answer, category)


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenisation."""
    return [token for token in _NOT_ALPHANUMERIC.sub(" ", text.lower()).split() if token]


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of one prediction against one reference."""
    guess, truth = rouge_tokens(prediction), rouge_tokens(reference)
    if not guess or not truth:
        return 0.0
    common = _lcs(truth, guess)
    precision, recall = common / len(guess), common / len(truth)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


@dataclass(frozen=True)
class RougeScore:
    """Mean ROUGE-L F-measure, each item's, and the mean per Dolly category."""

    rouge_l: float
    n: int
    per_item: dict[ItemId, float]
    per_category: dict[str, float]

    metric = "rouge_l"

    @property
    def headline(self) -> float:
        return self.rouge_l

    def summary(self) -> dict[str, float]:
        return {"rouge_l": self.rouge_l, **{f"rouge_l/{k}": v for k, v in self.per_category.items()}}


def score_rouge_l(predictions: Mapping[ItemId, str], items: Sequence[InstructionItem]) -> RougeScore:
    """ROUGE-L of responses keyed by item id against the published outputs."""
    responses = aligned(predictions, items, "instruction data")
    per_item = {item.key: rouge_l(response, item.output) for item, response in zip(items, responses, strict=True)}
    by_category: dict[str, list[float]] = defaultdict(list)
    for item in items:
        if item.category is not None:
            by_category[item.category].append(per_item[item.key])
    return RougeScore(
        mean(list(per_item.values())), len(items), per_item, {k: mean(v) for k, v in sorted(by_category.items())}
    )


def write_instruction_results(
    path: str | Path, predictions: Mapping[ItemId, str], items: Sequence[InstructionItem]
) -> Path:
    """One ``{"id", "instruction", "input", "output", "prediction"}`` per line (no official format)."""
    responses = aligned(predictions, items, "instruction results")
    rows = (
        {"id": i.id, "instruction": i.instruction, "input": i.input, "output": i.output, "prediction": r}
        for i, r in zip(items, responses, strict=True)
    )
    return write_jsonl(path, rows)
