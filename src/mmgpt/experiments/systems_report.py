"""The systems experiment's table (one column per run, one row per figure) as a terminal table and as Markdown,
and the commands that chat with and serve each tuned system."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmgpt.experiments.recipes import NO_LANGUAGE, STAGE1_ONLY

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

QUESTION_ROWS = (
    ("colour", "colour"),
    ("shape", "shape"),
    ("count", "count"),
    ("position", "position"),
    ("word", "word reading"),
    ("reasoning", "reasoning (A-OKVQA style)"),
)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _pair(first: float | None, second: float | None) -> str:
    return f"{_percent(first)} / {_percent(second)}"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def figure_rows(run: Mapping[str, Any]) -> dict[str, str]:
    """One run's cells by row name."""
    accuracy, description = run["accuracy"], run["description"]
    rows = {label: _percent(accuracy.get(kind)) for kind, label in QUESTION_ROWS}
    rows["language-only tasks"] = _percent(run["language"]["accuracy"])
    rows.update(description_cells(description, run["response_length"].get("detail"), run.get("repeated_trigrams")))
    rows["LM positions per image"] = str(run["positions_per_image"])
    rows["trained parameters (per stage)"] = " + ".join(_count(n) for n in run["trained_parameters"].values())
    rows["training time"] = f"{run['train_seconds']:.0f} s"
    speed = run.get("decode_tokens_per_s")
    rows["decode tokens/s"] = "-" if speed is None else f"{speed:.0f}"
    chat = run.get("chat")
    rows["8th chat turn"] = "-" if not chat else f"{chat[-1]['seconds'] * 1000:.0f} ms"
    return rows


def _columns(runs: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str], dict[str, dict[str, str]]]:
    names = [run["name"] for run in runs.values()]
    cells = {run["name"]: figure_rows(run) for run in runs.values()}
    order: dict[str, None] = {}
    for rows in cells.values():
        order.update(dict.fromkeys(rows))
    return names, list(order), cells


def systems_grid(runs: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the systems table: one row per figure, one column per run."""
    names, order, cells = _columns(runs)
    return ["", *names], [[row, *(cells[name].get(row, "-") for name in names)] for row in order]


def description_cells(description: Mapping[str, Any], words: float | None, repeated: float | None) -> dict[str, str]:
    return {
        "desc. words": "-" if words is None else f"{words:.1f}",
        "desc. repeated 3-grams": _percent(repeated),
        "desc. attributes P / R": _pair(description["attribute_precision"], description["attribute_recall"]),
        "desc. objects P / R": _pair(description["object_precision"], description["object_recall"]),
    }


def _in_training_template(run: Mapping[str, Any]) -> dict[str, str]:
    asked = run.get("training_template")
    if asked is None:
        return {}
    return description_cells(asked["description"], asked["words"], asked["repeated_trigrams"])


# The findings: (title, columns, rows: (run key, label, cells of the run)).
FINDINGS = (
    (
        "MiniGPT-4: stage 1 alone vs stage 2 after it (detailed descriptions)",
        ("desc. words", "desc. repeated 3-grams", "desc. attributes P / R", "desc. objects P / R"),
        (
            (STAGE1_ONLY, "after stage 1, chat template", figure_rows),
            ("minigpt4", "after stage 2, chat template", figure_rows),
            (STAGE1_ONLY, "after stage 1, stage-2 training template", _in_training_template),
            ("minigpt4", "after stage 2, stage-2 training template", _in_training_template),
        ),
    ),
    (
        "mPLUG-Owl: stage 2 with vs without the language-only data",
        ("language-only tasks", "colour", "shape", "count", "position", "desc. words"),
        (("mplug-owl", "with language-only data", figure_rows), (NO_LANGUAGE, "without", figure_rows)),
    ),
)


def findings_grids(runs: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each finding whose runs are present: one row per run, one column per figure."""
    grids = []
    for title, columns, entries in FINDINGS:
        if all(key in runs for key, _, _ in entries):
            rows = []
            for key, label, cells_of in entries:
                cells = cells_of(runs[key])
                rows.append([label, *(cells.get(c, "-") for c in columns)])
            grids.append((title, ["run", *columns], rows))
    return grids


def rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)]) + "\n"


def print_tables(console: Console, systems: Mapping[str, Mapping[str, Any]], keys: list[str]) -> str:
    """Print the systems table (runs ``keys``) and the findings; returns them all as Markdown."""
    header, rows = systems_grid({k: systems[k] for k in keys})
    console.print(rich_table("three systems on one world (held-out scenes and language tasks)", header, rows))
    text = markdown(header, rows)
    for title, header, rows in findings_grids(systems):
        console.print(rich_table(title, header, rows))
        text += f"\n{title}\n\n" + markdown(header, rows)
    return text


def print_next_commands(console: Console, models: Mapping[str, str | Path], image: Path) -> None:
    """One model directory per tuned system: the commands that chat with it and serve it, one line each."""
    console.print("Chat with each tuned system, or serve it (API on /v1, web demo on /):")
    for model in models.values():
        for line in (
            f"  .venv/bin/mmgpt chat --model {model} --image {image}",
            f"  .venv/bin/mmgpt serve --model {model}",
        ):
            console.print(line, soft_wrap=True, markup=False, highlight=False)
