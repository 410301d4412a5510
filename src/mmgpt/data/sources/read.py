"""Reading one configured source: rows -> conversations, with counts of everything that was left out.

Missing images and filtered rows are skipped and counted; a malformed row stops the read with a
:class:`MalformedRowError` naming file, row and field - or, with ``on_error: skip``, is skipped and counted
under its field (indices folded, so 10,000 bad rows make one line of the report).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmgpt.data.conversation import Conversation
from mmgpt.data.sources.base import (
    MalformedRowError,
    MissingImage,
    RowContext,
    RowError,
    RowFiltered,
    SourceConfig,
)
from mmgpt.data.sources.jsonio import JsonFiles

EXAMPLES_KEPT = 3
_INDEX = re.compile(r"\[\d+\]")


@dataclass
class SourceStats:
    """What reading a source did. ``rows`` are file elements; one row can give several conversations
    (five COCO captions, the pairs of an OCR-VQA image)."""

    name: str
    rows: int = 0
    conversations: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    missing_images: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)
    bytes_read: int = 0
    total_bytes: int = 0

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < EXAMPLES_KEPT:
            kept.append(example)


def source_paths(source: SourceConfig, resolve: Callable[[str], Path]) -> tuple[Path, Path]:
    """(file, image root): the image root defaults to the file's folder."""
    path = resolve(source.path)
    return path, resolve(source.images) if source.images else path.parent


def read_source(
    source: SourceConfig,
    *,
    resolve: Callable[[str], Path],
    stats: SourceStats | None = None,
    check_images: bool = True,
    on_progress: Callable[[SourceStats], None] | None = None,
) -> Iterator[Conversation]:
    """Conversations of ``source`` in file order. ``resolve`` maps config paths to files (``DataConfig.resolve``);
    ``stats`` is filled as rows are read; ``on_progress`` is called after each row."""
    from mmgpt.data.sources import FORMATS  # the registry imports this module

    stats = stats if stats is not None else SourceStats(source.name)
    fmt = FORMATS[source.format]
    options = fmt.parse_options(source.options, where=f"source {source.name!r} options")
    path, image_root = source_paths(source, resolve)
    stats.total_bytes = path.stat().st_size if path.is_file() else 0
    files = JsonFiles()
    ctx = RowContext(source=source.name, image_root=image_root, check_images=check_images)
    for row in fmt.rows(path, options, files, resolve):
        stats.rows += 1
        stats.bytes_read = files.bytes_read
        try:
            conversations = fmt.convert(row, options, ctx)
        except RowFiltered as filtered:
            stats.skip(filtered.reason, row.where)
        except MissingImage as missing:
            stats.missing_images += 1
            stats.skip("missing image", str(missing.path))
        except (RowError, ValueError) as error:
            # ValueError: a row whose fields pass but whose turns do not make a valid Conversation.
            row_error = error if isinstance(error, RowError) else RowError("(row)", str(error))
            malformed = MalformedRowError(path, row.where, row_error.field, row_error.problem)
            if source.on_error == "raise":
                raise malformed from None
            stats.skip(f"malformed {_INDEX.sub('[]', row_error.field)}", f"{row.where}: {row_error.problem}")
        else:
            stats.conversations += len(conversations)
            yield from conversations
        if on_progress is not None:
            on_progress(stats)
    stats.bytes_read = files.bytes_read
