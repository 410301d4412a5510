"""The evaluation table: one row per metric, one column per run (e.g. "before" and "after" tuning), the targets of
issue 6 beside them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from mmgpt.world.metrics import QUESTION_KINDS

# Issue 6: after the demo's tuning, on held-out scenes.
TARGETS = {"colour": 0.9, "shape": 0.9, "count": 0.8, "word": 0.7, "language": 0.8}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def rows(results: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, formatted value, target) of one evaluation, in table order."""
    out = []
    for kind in QUESTION_KINDS:
        if kind in results["accuracy"]:
            n = results["questions"][kind]
            out.append((f"{kind} accuracy (n={n})", _percent(results["accuracy"][kind]), _percent(TARGETS.get(kind))))
    language = results["language"]
    out.append(
        (f"language-only accuracy (n={language['n']})", _percent(language["accuracy"]), _percent(TARGETS["language"]))
    )
    for task, value in language["by_task"].items():
        out.append((f"  {task}", _percent(value), "-"))
    description = results["description"]
    for key in ("attribute_precision", "attribute_recall", "object_precision", "object_recall"):
        out.append((f"description {key.replace('_', ' ')}", _percent(description[key]), "-"))
    for kind, words in results["response_length"].items():
        out.append((f"mean response words: {kind}", f"{words:.1f}", "-"))
    return out


def results_table(runs: Mapping[str, Mapping[str, Any]], *, title: str = "held-out evaluation") -> Table:
    """A table of one or more runs, by name; metrics missing from a run show as "-"."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for name in runs:
        table.add_column(name, justify="right")
    table.add_column("target", justify="right")
    values = {name: {metric: value for metric, value, _ in rows(results)} for name, results in runs.items()}
    order: dict[str, str] = {}
    for results in runs.values():
        for metric, _, target in rows(results):
            order.setdefault(metric, target)
    for metric, target in order.items():
        table.add_row(metric, *(values[name].get(metric, "-") for name in runs), target)
    return table


def print_results(runs: Mapping[str, Mapping[str, Any]], console: Console | None = None, **kwargs: Any) -> None:
    (console or Console()).print(results_table(runs, **kwargs))
