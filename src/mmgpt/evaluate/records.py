"""The folder of one evaluation run, and what makes it resumable and shardable.

Layout of ``OUT`` (``mmgpt eval BENCHMARK --out OUT``)::

    metrics.json                    every shot count and trial: the figures, mean and std over trials, counts
    shots{k}-seed{s}/
        run.json                    what this run is (benchmark, files, model, prompt, shots, seed): a rerun with
                                    other settings is refused instead of mixing answers
        records.rank{r}.jsonl       one line per finished item, appended as batches finish (rank r of a sharded run)
        prompts.jsonl               the exact prompt of every item, in item order (merged from the records)
        {official result file}      the predictions in the benchmark's own format (``Benchmark.write``)
        metrics.json                this run's figures

A killed run loses at most the batches in flight: a rerun reads the records of every rank (whatever the number of
ranks was) and asks only the items without an answer - also those skipped before (an image that was missing may be
there now). A half-written last line is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmgpt.evaluate.benchmarks.common import write_json

RUN_FILE = "run.json"
PROMPTS_FILE = "prompts.jsonl"
METRICS_FILE = "metrics.json"
RECORDS_GLOB = "records.rank*.jsonl"


@dataclass(frozen=True)
class Shard:
    """This process's part of a sharded run: items ``rank``, ``rank + world``, ... of those left to do."""

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world} processes")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part(self, values: Sequence[Any]) -> list[Any]:
        return list(values[self.rank :: self.world])


def run_name(shots: int, seed: int) -> str:
    return f"shots{shots}-seed{seed}"


class RunFolder:
    """One (shots, seed) run of one benchmark: its identity, its records and its merged outputs."""

    def __init__(self, path: str | Path, identity: dict[str, Any]) -> None:
        self.path = Path(path)
        self.identity = json.loads(json.dumps(identity))  # as it reads back from JSON

    def claim(self, *, overwrite: bool = False) -> None:
        """Write ``run.json``, or check that the one there describes the same run."""
        file = self.path / RUN_FILE
        if file.is_file() and not overwrite:
            existing = json.loads(file.read_text(encoding="utf-8"))
            if existing != self.identity:
                changed = sorted(
                    k for k in set(existing) | set(self.identity) if existing.get(k) != self.identity.get(k)
                )
                raise ValueError(
                    f"{self.path} holds a run with other settings ({', '.join(changed)} differ); its answers cannot "
                    "be reused. Write to another --out, or pass --overwrite to start this run afresh"
                )
            return
        if overwrite:
            for old in self.path.glob(RECORDS_GLOB):
                old.unlink()
        write_json(file, self.identity)

    def records_file(self, rank: int) -> Path:
        return self.path / f"records.rank{rank}.jsonl"

    def finished(self) -> dict[Any, dict[str, Any]]:
        """Every record written by any rank, by item key: its first answer, else why it was skipped."""
        out: dict[Any, dict[str, Any]] = {}
        for file in sorted(self.path.glob(RECORDS_GLOB)):
            for line in file.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line a kill interrupted
                key = _key(record["key"])
                if key not in out or ("skipped" in out[key] and "prediction" in record):
                    out[key] = record
        return out

    def append(self, rank: int, records: Iterable[dict[str, Any]]) -> None:
        """Add finished items (flushed before returning, so a kill after this keeps them)."""
        file = self.records_file(rank)
        file.parent.mkdir(parents=True, exist_ok=True)
        with file.open("a", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()

    def write_prompts(self, records: Sequence[dict[str, Any]]) -> Path:
        path = self.path / PROMPTS_FILE
        with path.open("w", encoding="utf-8") as out:
            for r in records:
                row = {"key": r["key"], **r.get("query", {})}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path


def _key(value: Any) -> Any:
    """Keys as JSON gives them back (a list for a tuple key would not hash)."""
    return tuple(value) if isinstance(value, list) else value
