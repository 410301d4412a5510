"""The results table of benchmark runs: one row per (benchmark, shots, figure), mean and spread over trials, the
number of items scored and skipped - vision and language benchmarks side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

# Figures reported as percentages (fractions in [0, 1]); CIDEr & co. are shown x100 as the papers do.
SCALED = 100.0
BREAKDOWN = "/"  # figures like "vqa_accuracy/answer_type/yes/no" are breakdowns, shown with --details


def _value(mean: float, std: float, trials: int) -> str:
    text = f"{SCALED * mean:.2f}"
    return f"{text} ± {SCALED * std:.2f}" if trials > 1 else text


def rows(summary: Mapping[str, Any], *, details: bool = False) -> list[tuple[str, str, str, str, str, str]]:
    """(benchmark, shots, figure, value, n, skipped) rows of one metrics.json summary."""
    out = []
    for result in summary["results"]:
        trials = result["trials"]
        n = ", ".join(sorted({str(t["n"]) for t in trials}))
        skipped = ", ".join(sorted({str(t["skipped"]) for t in trials}))
        for name, mean in result["mean"].items():
            if BREAKDOWN in name and not details:
                continue
            value = _value(mean, result["std"][name], len(trials))
            out.append((summary["benchmark"], str(result["shots"]), name, value, n, skipped))
        if not result["mean"]:
            what = "(answers written, no scorer)" if any(t["n"] for t in trials) else "(nothing answered)"
            out.append((summary["benchmark"], str(result["shots"]), what, "-", n, skipped))
    return out


def results_table(summaries: Sequence[Mapping[str, Any]], *, title: str = "benchmarks", details: bool = False) -> Table:
    table = Table(title=title, title_justify="left")
    for column, justify in (("benchmark", "left"), ("shots", "right"), ("figure", "left"), ("value (x100)", "right"),
                            ("n", "right"), ("skipped", "right")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for summary in summaries:
        for row in rows(summary, details=details):
            table.add_row(*row)
    return table


def print_summary(summary: Mapping[str, Any], console: Console, *, details: bool = False) -> None:
    """The table, the prompt that was used (printed, so a reader knows what was asked) and where files went."""
    prompt = summary["prompt"]
    console.print(f"prompt format: {prompt['format']}", highlight=False)
    console.print(f"template: {prompt['template']!r}", highlight=False, markup=False)
    if prompt.get("suffix"):
        console.print(f"short-answer instruction: {prompt['suffix']!r}", highlight=False, markup=False)
    trials = [t for r in summary["results"] for t in r["trials"]]
    seconds = summary.get("seconds", 0.0)
    title = f"{summary['benchmark']}: {summary['items']} items, {len(trials)} run(s) in {seconds:.1f} s"
    console.print(results_table([summary], title=title, details=details))
    for trial in trials:
        if trial["skipped"]:
            first = trial["skipped_examples"][0]
            console.print(
                f"{trial['shots']}-shot seed {trial['seed']}: {trial['skipped']} item(s) skipped, not scored "
                f"(first: {first['key']!r}: {first['skipped']})",
                highlight=False,
                markup=False,
            )
