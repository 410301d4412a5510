"""``mmgpt data check``: stream every source of a DataConfig and report what training would get.

Per source: rows, conversations kept, rows skipped and why, missing and broken images, token-length percentiles
(before truncation), truncated samples, fully masked samples (dropped: they would train on nothing), ``<image>``
mismatches, and the share of its stream after caps and drops. Every image's header is opened (a file that is not
an image, is empty, cut inside its header or over the pixel budget is a broken image, listed by file, row and
field); ``decode_images`` decodes each one whole, which also finds files cut short after the header. Fatal problems
- an unreadable file, a malformed row or a broken image on a source that does not skip them (training would stop
there), a source with nothing usable, no language data while ``language_ratio`` asks for some - make
:attr:`CheckReport.ok` false (the CLI then exits 1).

Rows are tokenised in chunks with one tokenizer call each; nothing is kept in memory beyond the lengths.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from transformers import PreTrainedTokenizerBase

from mmgpt.data.config import ConfigError, DataConfig, SourceConfig
from mmgpt.data.images import ImageError, load_image, probe_image
from mmgpt.data.mixture import cap_indices
from mmgpt.data.sources import MalformedRowError, SourceError, SourceStats, read_source
from mmgpt.data.tokenize import ConversationTokenizer, SampleDropped

if TYPE_CHECKING:
    from rich.console import Console

CHUNK = 512
PERCENTILES = (50, 90, 99)
T = TypeVar("T")


@dataclass
class SourceReport:
    """The check of one source. ``share`` is its expected share of its stream's trained samples."""

    source: SourceConfig
    group: str
    stats: SourceStats
    lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    used: int = 0
    share: float = 0.0
    seconds: float = 0.0
    fatal: str | None = None

    @property
    def broken_images(self) -> int:
        return self.stats.broken_images

    @property
    def broken_examples(self) -> list[str]:
        return self.stats.examples.get("broken image", [])

    @property
    def usable(self) -> int:
        """Conversations that tokenise into a trainable sample."""
        return len(self.lengths)

    def percentile(self, q: float) -> int:
        """Nearest-rank percentile of the token lengths (0 when there are none)."""
        if not self.lengths:
            return 0
        ordered = sorted(self.lengths)
        return ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * q // 100) - 1))]


@dataclass
class CheckReport:
    sources: list[SourceReport]
    max_length: int
    language_ratio: float
    fatal: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.fatal and all(r.fatal is None for r in self.sources)

    def group(self, name: str) -> list[SourceReport]:
        return [r for r in self.sources if r.group == name]


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_source(
    cfg: DataConfig,
    source: SourceConfig,
    group: str,
    tokenize: ConversationTokenizer,
    *,
    decode_images: bool,
    on_progress: Callable[[SourceStats], None] | None,
) -> SourceReport:
    report = SourceReport(source, group, SourceStats(source.name))
    start = time.perf_counter()
    check_image = _image_checker(load_image if decode_images else probe_image, cfg.max_image_pixels)
    try:
        conversations = read_source(
            source, resolve=cfg.resolve, stats=report.stats, check_image=check_image, on_progress=on_progress
        )
        for chunk in _chunks(conversations, CHUNK):
            for result in tokenize.many(chunk):
                if isinstance(result, SampleDropped):
                    report.dropped[result.reason] = report.dropped.get(result.reason, 0) + 1
                    continue
                report.lengths.append(result.full_length)
                report.truncated += result.truncated
    except (SourceError, MalformedRowError, ConfigError, OSError) as error:
        report.fatal = str(error)
    report.seconds = time.perf_counter() - start
    if report.fatal is None and report.broken_images and source.on_error == "raise":
        report.fatal = (
            f"{report.broken_images:,} row(s) with a broken image (examples above); training stops at the first: "
            f"replace those images, or set 'on_error: skip' on source {source.name!r} to skip and count them"
        )
    if report.fatal is None and report.usable == 0:
        report.fatal = f"source {source.name!r} has no usable sample: see its skipped and dropped counts"
    return report


def _image_checker(check: Callable[..., object], max_pixels: int) -> Callable[[Path], None]:
    """``check`` (probe or decode) once per distinct image; a row that reuses a broken image fails again."""
    seen: dict[str, ImageError | None] = {}

    def check_image(image: Path) -> None:
        key = str(image)
        if key not in seen:
            try:
                check(image, max_pixels=max_pixels)
                seen[key] = None
            except ImageError as error:
                seen[key] = error
        if seen[key] is not None:
            raise seen[key]

    return check_image


def _shares(reports: list[SourceReport], seed: int) -> None:
    # Caps draw from the conversations (before tokenisation); drops then thin each source evenly.
    expected = {}
    for r in reports:
        conversations = r.stats.conversations
        r.used = len(cap_indices(conversations, cap=r.source.cap, seed=seed, name=r.source.name))
        expected[r.source.name] = r.used * (r.usable / conversations) if conversations else 0.0
    total = sum(expected.values())
    for r in reports:
        r.share = expected[r.source.name] / total if total else 0.0


def check_data(
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    decode_images: bool = False,
    on_progress: Callable[[SourceStats], None] | None = None,
    on_source_start: Callable[[SourceConfig], None] | None = None,
) -> CheckReport:
    """Check every source of ``cfg``; ``decode_images`` also decodes each image once (slow, thorough)."""
    tokenize = ConversationTokenizer(tokenizer, max_length=cfg.max_length)
    report = CheckReport([], cfg.max_length, cfg.language_ratio)
    for group in ("vision_language", "language"):
        for source in getattr(cfg, group):
            if on_source_start is not None:
                on_source_start(source)
            report.sources.append(
                _check_source(cfg, source, group, tokenize, decode_images=decode_images, on_progress=on_progress)
            )
        _shares(report.group(group), cfg.seed)
    if not cfg.vision_language:
        report.fatal.append("no vision_language sources: every training step takes a vision-language batch")
    if cfg.language_ratio > 0 and not cfg.language:
        report.fatal.append("language_ratio > 0 but no language sources: add some or set language_ratio: 0")
    return report


def print_report(report: CheckReport, console: Console) -> None:
    """The report as three narrow tables (each fits an 80-column terminal), then the problems."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    def table(title: str, columns: tuple[str, ...]) -> Table:
        # One wide table would cut numbers short on a narrow terminal; names left, numbers right.
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in columns:
            t.add_column(column, justify="left" if column in ("stream", "source") else "right")
        return t

    reading = table("reading", ("source", "rows", "kept", "skipped", "no image", "rows/s"))
    tokens = table("tokens", ("source", "p50", "p90", "p99", "max", "trunc.", "masked", "mism."))
    mixture = table("mixture", ("stream", "source", "cap", "used", "share"))
    for group, title in (("vision_language", "vision-language"), ("language", "language-only")):
        reports = report.group(group)
        for r in reports:
            s = r.stats
            name = escape(r.source.name)
            rate = f"{s.rows / r.seconds:,.0f}" if r.seconds > 0 else "-"
            skipped = f"{sum(s.skipped.values()):,}"
            reading.add_row(name, f"{s.rows:,}", f"{s.conversations:,}", skipped, f"{s.missing_images:,}", rate)
            tokens.add_row(
                name,
                *(f"{r.percentile(q):,}" for q in PERCENTILES),
                f"{max(r.lengths, default=0):,}",
                f"{r.truncated:,}",
                f"{r.dropped.get('fully_masked', 0):,}",
                f"{r.dropped.get('image_mismatch', 0):,}",
            )
            cap = "all" if r.source.cap is None else f"{r.source.cap:,}"
            mixture.add_row(title, name, cap, f"{r.used:,}", f"{100 * r.share:.1f}%")
        if reports and group == "vision_language":
            for t in (reading, tokens, mixture):
                t.add_section()
    console.print(reading)
    console.print("kept: conversations read (a row may hold several); no image: rows skipped for it", style="dim")
    console.print(tokens)
    console.print(
        f"token lengths before truncation to {report.max_length}; masked: dropped, no response token left after "
        "truncation; mism.: dropped, <image> tokens != images",
        style="dim",
    )
    console.print(mixture)
    console.print(
        f"each step: 1 vision-language batch + 1 language-only batch on {100 * report.language_ratio:.0f}% of steps; "
        "share: of its stream after caps and drops",
        style="dim",
    )
    rows = sum(r.stats.rows for r in report.sources)
    seconds = sum(r.seconds for r in report.sources)
    console.print(f"read {rows:,} rows in {seconds:.1f} s ({rows / max(seconds, 1e-9):,.0f} rows/s)", style="dim")

    for r in report.sources:
        name = escape(r.source.name)
        for reason, count in sorted(r.stats.skipped.items()):
            examples = escape("; ".join(r.stats.examples.get(reason, [])))
            console.print(f"[yellow]{name}[/]: skipped {count:,} rows: {escape(reason)} (e.g. {examples})")
        for reason, count in sorted(r.dropped.items()):
            console.print(f"[yellow]{name}[/]: dropped {count:,} samples: {reason.replace('_', ' ')}")
        if r.fatal:
            console.print(f"[red]FATAL[/] {name}: {escape(r.fatal)}")
    for problem in report.fatal:
        console.print(f"[red]FATAL[/] {escape(problem)}")
    console.print("[green]data check passed[/]" if report.ok else "[red]data check failed[/]")


def check_with_progress(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, *, console: Console, decode_images: bool = False
) -> CheckReport:
    """:func:`check_data` with a progress bar per source (bytes of the file read, rows, elapsed time)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rows]:>10,} rows"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        tasks: dict[str, int] = {}

        def start(source: SourceConfig) -> None:
            tasks[source.name] = progress.add_task(source.name, total=None, rows=0)

        def advance(stats: SourceStats) -> None:
            # Refreshing on every row would cost more than reading it; every 256th row is smooth enough.
            if stats.rows % 256 == 0 or stats.bytes_read >= stats.total_bytes:
                progress.update(
                    tasks[stats.name], completed=stats.bytes_read, total=stats.total_bytes or None, rows=stats.rows
                )

        report = check_data(cfg, tokenizer, decode_images=decode_images, on_progress=advance, on_source_start=start)
        for r in report.sources:
            progress.update(
                tasks[r.source.name], completed=r.stats.total_bytes, total=r.stats.total_bytes or 1, rows=r.stats.rows
            )
    return report
