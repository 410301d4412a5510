"""What every benchmark reader and scorer shares: located errors, the ``limit`` cut, image resolution, matching
predictions to items, and writing result files.

Readers use the data sources' JSON helpers (:class:`~mmgpt.data.sources.jsonio.JsonFiles` for the file layouts,
``require``/``text_field``/``string_list`` for fields); a field error inside :func:`located` becomes a
:class:`BenchmarkFormatError` naming the file, the row and the field.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from mmgpt.data.sources.base import RowError
from mmgpt.data.sources.jsonio import SourceError
from mmgpt.evaluate.benchmarks.items import ItemId

T = TypeVar("T")
SHOWN = 3  # ids quoted in an error message


class BenchmarkFormatError(ValueError):
    """A row of a benchmark file without the published shape: "val.json row 7, field 'answers': missing"."""

    def __init__(self, path: Path, where: str, field: str, problem: str, *, benchmark: str) -> None:
        super().__init__(
            f"{path} {where}, field {field!r}: {problem}. {benchmark} is read as published; check that this is "
            f"the right file for {benchmark} and that it was not converted"
        )
        self.path, self.where, self.field, self.problem = path, where, field, problem


class PredictionError(ValueError):
    """Predictions that do not cover exactly the items being scored."""


class MissingImageError(FileNotFoundError):
    """An image a benchmark row names that is not under the image root."""


@contextmanager
def located(path: Path, where: str, benchmark: str) -> Iterator[None]:
    """Turn a :class:`RowError` raised while reading one row into a :class:`BenchmarkFormatError`."""
    try:
        yield
    except RowError as error:
        raise BenchmarkFormatError(path, where, error.field, error.problem, benchmark=benchmark) from None


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None (all items), got {limit!r}")


def take(items: Iterable[T], limit: int | None) -> list[T]:
    """The first ``limit`` items (all when None), in the order given: readers keep file order, so a limit always
    picks the same items."""
    check_limit(limit)
    out: list[T] = []
    if limit == 0:
        return out
    for item in items:
        out.append(item)
        if limit is not None and len(out) >= limit:
            break
    return out


def top_level(value: Any, kind: type, path: Path, shape: str) -> Any:
    """``value`` (a whole loaded document or one of its parts) checked to be ``kind``, else a SourceError."""
    if not isinstance(value, kind):
        raise SourceError(f"{path}: expected {shape} at the top level, found {type(value).__name__}")
    return value


def image_path(root: Path, relative: str, *, check: bool, path: Path, where: str) -> Path:
    """``root / relative``; with ``check``, an error naming the row when the file is not there."""
    image = root / relative
    if check and not image.is_file():
        raise MissingImageError(f"{path} {where}: image {image} not found; check the image root ({root})")
    return image


def json_row(value: Any) -> Any:
    """A row of ``JsonFiles.lines`` (a JSON value, or the decode error of a malformed line)."""
    if isinstance(value, json.JSONDecodeError):
        raise RowError("(line)", f"not JSON: {value.msg}")
    return value


def aligned(predictions: Mapping[Any, T], items: Sequence[Any], benchmark: str) -> list[T]:
    """``predictions[item.key]`` for each item, in item order. Every item must have a prediction and every prediction
    an item (as the official VQA API asserts), so a wrong split, limit or id type fails loudly instead of scoring 0."""
    ids: list[ItemId] = [item.key for item in items]
    repeated = [i for i, count in Counter(ids).items() if count > 1]
    if repeated:
        raise PredictionError(f"{benchmark}: item ids repeat ({repeated[:SHOWN]!r}); score each item once")
    missing = [i for i in ids if i not in predictions]
    if missing:
        raise PredictionError(
            f"{benchmark}: no prediction for {len(missing)} of {len(ids)} items (first ids {missing[:SHOWN]!r}); "
            "predict every item that was read, or score only the items that were predicted"
        )
    if len(predictions) != len(ids):
        known = set(ids)
        extra = [k for k in predictions if k not in known]
        raise PredictionError(
            f"{benchmark}: {len(extra)} predictions for ids that are not among the {len(ids)} items (first "
            f"{extra[:SHOWN]!r}); were the items read with another split or limit, or the ids typed differently "
            f"(item ids look like {ids[:1]!r})?"
        )
    return [predictions[i] for i in ids]


def mean(values: Sequence[float]) -> float:
    """The average, 0.0 for no values (a breakdown group can be empty)."""
    return sum(values) / len(values) if values else 0.0


def write_json(path: str | Path, value: Any) -> Path:
    """Write a JSON file (UTF-8, non-ASCII kept), creating its folder; atomically, so a reader (a resumed run) never
    sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """Write one JSON object per line, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
