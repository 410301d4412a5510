"""What a run reports: a progress bar (or plain lines when not on a terminal), ``metrics.jsonl`` in the run
directory, and optionally TensorBoard / Weights & Biases (installed by the user; never required)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from mmgpt.train.config import LoggingConfig

METRICS_FILE = "metrics.jsonl"
SHOWN = (("loss_vl", "vl"), ("loss_lo", "lo"), ("lr", "lr"), ("samples_per_s", "samples/s"))


def _short(value: float) -> str:
    return f"{value:.2e}" if abs(value) < 1e-3 and value else f"{value:.4g}"


class Progress:
    """Per-step reporting on the main rank. ``start_step`` > 0 when resuming: later lines of an earlier,
    interrupted attempt are dropped from metrics.jsonl so it reads as one uninterrupted run."""

    def __init__(
        self,
        run_dir: str | Path,
        cfg: LoggingConfig,
        *,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.cfg, self.enabled, self.total = cfg, enabled, total_steps
        self.stream = stream or sys.stderr
        self.path = Path(run_dir) / METRICS_FILE
        self.bar: tqdm | None = None
        self.writers: list[Any] = []
        if not enabled:
            return
        self._truncate(start_step)
        if cfg.progress and self.stream.isatty():
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", file=self.stream)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs `pip install tensorboard`

            self.writers.append(SummaryWriter(str(Path(run_dir) / "tensorboard")))
        if cfg.wandb_project:
            import wandb  # needs `pip install wandb`

            self.writers.append(wandb.init(project=cfg.wandb_project, dir=str(run_dir), resume="allow"))
        self.started = time.perf_counter()

    def _truncate(self, start_step: int) -> None:
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line).get("step", 0) <= start_step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, metrics: dict[str, Any]) -> None:
        """One record (``step`` plus figures) to every sink; the bar advances on training records."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        step = metrics["step"]
        for writer in self.writers:
            figures = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
            if hasattr(writer, "add_scalar"):
                for key, value in figures.items():
                    writer.add_scalar(key, value, step)
            else:
                writer.log(figures, step=step)
        shown = {label: _short(metrics[key]) for key, label in SHOWN if metrics.get(key) is not None}
        extra = {k: _short(v) for k, v in metrics.items() if k.startswith("val_") and isinstance(v, float)}
        if self.bar is not None:
            if "loss" in metrics:
                self.bar.update(step - self.bar.n)
            self.bar.set_postfix({**shown, **extra}, refresh=True)
        elif step % self.cfg.every == 0 or extra or step == self.total:
            parts = " ".join(f"{k} {v}" for k, v in {**shown, **extra}.items())
            elapsed = time.perf_counter() - self.started
            print(f"step {step}/{self.total} {parts} ({elapsed:.0f} s)", file=self.stream, flush=True)

    def skipped(self, step: int, skipped: dict[str, dict[str, Any]]) -> None:
        """What the data left out, per source (``loader.merge_skipped``): one line each, and one metrics.jsonl
        record ``{"step": N, "skipped": {source: {"counts": {reason: n}, "examples": [...]}}}``."""
        if not self.enabled or not skipped:
            return
        for name, entry in skipped.items():
            counts = ", ".join(f"{count:,} {reason}" for reason, count in sorted(entry["counts"].items()))
            examples = "; ".join(entry["examples"][:3])
            self.message(f"{name}: skipped {counts}" + (f" (e.g. {examples})" if examples else ""))
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "skipped": skipped}) + "\n")

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for writer in self.writers:
            (writer.close if hasattr(writer, "close") else writer.finish)()
