"""Reading one configured source: rows -> conversations, with counts of everything that was left out.

Missing images and filtered rows are skipped and counted; a malformed row stops the read with a
:class:`MalformedRowError` naming file, row and field - or, with ``on_error: skip``, is skipped and counted
under its field (indices folded, so 10,000 bad rows make one line of the report). With ``check_image`` (``mmgpt
data check``) each image is also opened, and a row with an unreadable one is skipped and counted as a "broken
image", named by file, row and field; training decodes images later and, on a broken one, either stops with a
:class:`BrokenImageError` located by :func:`locate_image` or skips and counts it, as the source's ``on_error`` says.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmgpt.data.conversation import Conversation
from mmgpt.data.images import ImageError
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
    broken_images: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)
    bytes_read: int = 0
    total_bytes: int = 0

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < EXAMPLES_KEPT:
            kept.append(example)


class BrokenImageError(MalformedRowError):
    """A row whose image cannot be used, located by file, row and field (what stops a run with ``on_error:
    raise``)."""

    def __init__(self, path: Path | str, where: str, field: str | None, error: ImageError) -> None:
        ValueError.__init__(
            self,
            f"{path} {where}" + (f", field {field!r}" if field else "") + f": image {error}. Replace the image "
            "(or remove the row), or set 'on_error: skip' on this source to skip and count such rows",
        )
        self.path, self.where, self.field, self.problem = path, where, field or "(image)", str(error)
        self.image_error = error


def image_field(value: object, image: Path | str) -> str | None:
    """The JSON path inside a row of the field that names ``image`` (``image``, ``images[1]``...): a string that
    ends the image's path, else a value equal to its file stem (``image_id: 7`` for ``7.jpg``); None if none."""
    posix, stem = Path(image).as_posix(), Path(image).stem
    fallback = None
    stack: list[tuple[str, object]] = [("", value)]
    while stack:
        at, item = stack.pop()
        if isinstance(item, dict):
            stack.extend((f"{at}.{key}" if at else str(key), child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{at}[{i}]", child) for i, child in reversed(list(enumerate(item))))
        elif isinstance(item, str) and item and (posix == item or posix.endswith("/" + item.lstrip("./"))):
            return at
        elif fallback is None and isinstance(item, (str, int)) and not isinstance(item, bool):
            text = str(item)
            if text == stem or (text.isdigit() and stem.isdigit() and int(text) == int(stem)):
                fallback = at
    return fallback


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
    check_image: Callable[[Path], None] | None = None,
    on_progress: Callable[[SourceStats], None] | None = None,
) -> Iterator[Conversation]:
    """Conversations of ``source`` in file order. ``resolve`` maps config paths to files (``DataConfig.resolve``);
    ``stats`` is filled as rows are read; ``check_image`` (e.g. ``images.probe_image``) raises the
    :class:`ImageError` of an unusable image, whose row is then skipped and counted; ``on_progress`` is called
    after each row."""
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
            broken = _broken_image(conversations, check_image) if check_image is not None else None
            if broken is not None:
                stats.broken_images += 1
                found = image_field(row.value, broken.path)
                stats.skip("broken image", f"{row.where}" + (f", field {found!r}" if found else "") + f": {broken}")
            else:
                stats.conversations += len(conversations)
                yield from conversations
        if on_progress is not None:
            on_progress(stats)
    stats.bytes_read = files.bytes_read


def _broken_image(conversations: list, check_image: Callable[[Path], None]) -> ImageError | None:
    for conversation in conversations:
        for image in conversation.images:
            try:
                check_image(image)
            except ImageError as error:
                return error
    return None


def locate_image(
    source: SourceConfig, resolve: Callable[[str], Path], image: Path | str
) -> tuple[Path, str, str | None] | None:
    """(file, row, field) of the first row of ``source`` that uses ``image``, by reading the source again: for an
    error path (a run about to stop on that image), so the message names the row and field, not only the image.
    None if no row uses it."""
    from mmgpt.data.sources import FORMATS

    fmt = FORMATS[source.format]
    options = fmt.parse_options(source.options, where=f"source {source.name!r} options")
    path, image_root = source_paths(source, resolve)
    ctx = RowContext(source=source.name, image_root=image_root, check_images=False)
    wanted = str(image)
    for row in fmt.rows(path, options, JsonFiles(), resolve):
        try:
            conversations = fmt.convert(row, options, ctx)
        except (RowFiltered, MissingImage, RowError, ValueError):
            continue
        if any(str(item) == wanted for conversation in conversations for item in conversation.images):
            return path, row.where, image_field(row.value, image)
    return None
