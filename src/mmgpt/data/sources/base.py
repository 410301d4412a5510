"""What every source adapter shares: row errors, field access, image resolution, deterministic choices.

An adapter is two functions - ``rows`` (the file layout -> :class:`Row`) and ``convert`` (one row ->
conversations) - plus an options dataclass, bundled as a :class:`SourceFormat`. Adapters raise
:class:`RowError` naming the field; ``read.py`` adds the file and the row, and decides whether to stop or to
skip and count. An adapter asks :class:`RowContext.image` for each image path; a missing file raises
:class:`MissingImage`, which the reader counts and skips.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from mmgpt.config import ConfigError, from_dict
from mmgpt.data.conversation import Conversation, single_turn
from mmgpt.data.sources.jsonio import JsonFiles, Row

Options = TypeVar("Options")
OnError = Literal["raise", "skip"]


@dataclass
class SourceConfig:
    """One dataset file. ``cap`` keeps a seeded random subset of that many conversations (None: all).

    ``images`` is the folder image paths of the format are relative to (COCO's root for A-OKVQA, the
    ``image/`` folder for cc_sbu_align...); ``on_error="skip"`` counts malformed rows instead of stopping;
    ``options`` are the format's own (e.g. A-OKVQA's ``variant``), checked by that format.
    """

    name: str
    format: str
    path: str
    images: str | None = None
    cap: int | None = None
    on_error: OnError = "raise"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cap is not None and self.cap < 0:
            raise ConfigError(f"source {self.name!r}: cap must be >= 0 or null (all), got {self.cap}")


class RowError(ValueError):
    """A row without the shape of its format: ``field`` is the JSON path inside the row."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r}: {problem}")
        self.field, self.problem = field, problem


class MalformedRowError(ValueError):
    """A :class:`RowError` located in its file: "detail_23k.json row 17, field 'conversations': missing"."""

    def __init__(self, path: Path, where: str, field: str, problem: str) -> None:
        super().__init__(
            f"{path} {where}, field {field!r}: {problem}. Fix the row, or set 'on_error: skip' on this "
            "source to skip and count such rows"
        )
        self.path, self.where, self.field, self.problem = path, where, field, problem


class MissingImage(Exception):
    """An image file that is not there; the row is skipped and counted."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object", bool: "true/false"}


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


def require(row: Any, key: str, kind: type | tuple[type, ...] = str, *, at: str = "") -> Any:
    """``row[key]``, checked to be of ``kind``; ``at`` prefixes the field path (``conversations[3].``)."""
    if not isinstance(row, dict):
        raise RowError(at.rstrip(".") or "(row)", f"expected a JSON object, got {type(row).__name__}")
    if key not in row:
        raise RowError(at + key, "missing")
    value = row[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise RowError(at + key, f"expected {_type_name(kind)}, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def text_field(row: Any, key: str, *, at: str = "", allow_empty: bool = False) -> str:
    value: str = require(row, key, str, at=at)
    if not allow_empty and not value.strip():
        raise RowError(at + key, "empty text")
    return value


def string_list(row: Any, key: str, *, at: str = "", min_items: int = 1) -> list[str]:
    values = require(row, key, list, at=at)
    if len(values) < min_items:
        raise RowError(at + key, f"expected at least {min_items} item(s), got {len(values)}")
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise RowError(f"{at}{key}[{i}]", f"expected a string, got {type(value).__name__}")
    return values


def pick(choices: Sequence[str], key: str) -> str:
    """A choice fixed by ``key`` alone (a hash): the same row gets the same instruction in every run and on
    every rank, whatever order rows are read in, with no random state to save."""
    return choices[zlib.crc32(key.encode()) % len(choices)]


class RowContext:
    """What ``convert`` may use beyond the row: the source's name, its image folder and whether to check
    that images exist (``data check`` and training do; a quick look at a file may not)."""

    def __init__(self, *, source: str, image_root: Path, check_images: bool = True) -> None:
        self.source = source
        self.image_root = image_root
        self.check_images = check_images

    def image(self, relative: str, *alternatives: str) -> Path:
        """The image ``relative`` to the image root; ``alternatives`` are tried in order when it is missing
        (OCR-VQA's downloader saves .jpg, .png or .gif)."""
        for candidate in (relative, *alternatives):
            path = self.image_root / candidate
            if not self.check_images or path.is_file():
                return path
        raise MissingImage(self.image_root / relative)

    def pick(self, choices: Sequence[str], row: Row, salt: str = "") -> str:
        return pick(choices, f"{self.source}:{salt}:{row.key if row.key is not None else row.index}")


@dataclass(frozen=True)
class SourceFormat(Generic[Options]):
    """A dataset format: how to list its rows and turn one into conversations."""

    name: str
    summary: str
    options_type: type[Options]
    rows: Callable[[Path, Options, JsonFiles, Callable[[str], Path]], Iterator[Row]]
    convert: Callable[[Row, Options, RowContext], list[Conversation]]

    def parse_options(self, options: dict[str, Any], *, where: str) -> Options:
        return from_dict(self.options_type, options, where)


class RowFiltered(Exception):
    """A well-formed row this source does not use (another split): counted under ``reason``, not an error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class NoOptions:
    """For formats without options."""


def instruction_sample(row: Row, ctx: RowContext, *, instruction: str, input: str, output: str) -> Conversation:
    """A language-only instruction row (Alpaca, Dolly): a non-empty ``input`` field is the ``### Input:`` section."""
    value = row.value
    extra = text_field(value, input, allow_empty=True).strip() if input in value else ""
    return single_turn(
        text_field(value, instruction).strip(),
        text_field(value, output).strip(),
        input=extra or None,
        source=ctx.source,
        id=str(row.index),
    )
