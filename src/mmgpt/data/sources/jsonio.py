"""Reading the JSON shapes the datasets ship in: a top-level list, a top-level object keyed by id, JSON lines,
and whole documents. Lists and keyed objects are streamed element by element (memory stays flat on a
multi-GB GQA file) with the standard library's C scanner; progress is the number of bytes read so far.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK_CHARS = 1 << 20
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_AFTER_VALUE = frozenset(" \t\n\r,]}")


class SourceError(ValueError):
    """A source that cannot be read at all (missing file, invalid JSON, wrong top-level shape): fatal."""


@dataclass(frozen=True)
class Row:
    """One element of a dataset file. ``where`` locates it for error messages ("row 17", "line 18",
    "key '000001'"); ``index`` counts rows from 0 in file order; ``key`` is the id of a keyed object."""

    index: int
    where: str
    value: Any
    key: str | None = None


class _Scanner:
    """Pull JSON values off a text stream without reading it whole."""

    def __init__(self, stream: io.TextIOBase, path: Path, on_read: Callable[[], None]) -> None:
        self.stream, self.path, self.on_read = stream, path, on_read
        self.decoder = json.JSONDecoder()
        self.buf, self.pos, self.eof, self.consumed = "", 0, False, 0

    def _more(self) -> bool:
        if self.eof:
            return False
        # Read at least as much again as is pending, so a value larger than a chunk costs linear time.
        try:
            chunk = self.stream.read(max(CHUNK_CHARS, len(self.buf) - self.pos))
        except UnicodeDecodeError as error:
            raise SourceError(f"{self.path}: not UTF-8 text ({error}); is this the dataset's JSON file?") from None
        self.on_read()
        if not chunk:
            self.eof = True
            return False
        self.consumed += self.pos
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        return True

    def fail(self, message: str) -> SourceError:
        return SourceError(f"{self.path}: invalid JSON at character {self.consumed + self.pos}: {message}")

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file), not consumed."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def expect(self, chars: str) -> str:
        char = self.peek()
        if not char or char not in chars:
            found = repr(char) if char else "the end of the file"
            raise self.fail(f"expected one of {chars!r}, found {found}")
        self.pos += 1
        return char

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as error:
                if self._more():
                    continue
                raise self.fail(error.msg) from None
            # A number is only complete when a delimiter follows it: the buffer may end inside "123" or "0.5e3".
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if is_number and (end == len(self.buf) or self.buf[end] not in _AFTER_VALUE) and self._more():
                continue
            self.pos = end
            return value


class JsonFiles:
    """Opens the files of one source and counts the bytes read, for progress bars and throughput."""

    def __init__(self) -> None:
        self.bytes_read = 0

    def _opened(self, path: Path) -> tuple[io.BufferedReader, Callable[[], None]]:
        if not path.is_file():
            raise SourceError(f"{path}: no such file; check the source's path and the data root")
        raw = path.open("rb")
        base = self.bytes_read

        def on_read() -> None:
            self.bytes_read = base + raw.tell()

        return raw, on_read

    def first_char(self, path: Path) -> str:
        """The first non-whitespace character: '[' or '{' tells a format's two layouts apart."""
        raw, _ = self._opened(path)
        with raw, io.TextIOWrapper(raw, encoding="utf-8-sig") as text:
            return _Scanner(text, path, lambda: None).peek()

    def array(self, path: Path) -> Iterator[Row]:
        """Elements of a top-level JSON list: ``row i``."""
        raw, on_read = self._opened(path)
        with raw, io.TextIOWrapper(raw, encoding="utf-8-sig") as text:
            scan = _Scanner(text, path, on_read)
            if scan.peek() != "[":
                raise scan.fail("expected a JSON list ('[') at the top level: is this the right format?")
            scan.pos += 1
            if scan.peek() == "]":
                return
            index = 0
            while True:
                yield Row(index, f"row {index}", scan.value())
                index += 1
                if scan.expect(",]") == "]":
                    return

    def keyed(self, path: Path) -> Iterator[Row]:
        """Entries of a top-level JSON object keyed by id: ``key '...'``."""
        raw, on_read = self._opened(path)
        with raw, io.TextIOWrapper(raw, encoding="utf-8-sig") as text:
            scan = _Scanner(text, path, on_read)
            if scan.peek() != "{":
                raise scan.fail("expected a JSON object ('{') keyed by id at the top level")
            scan.pos += 1
            if scan.peek() == "}":
                return
            index = 0
            while True:
                if scan.peek() != '"':
                    raise scan.fail("expected a string key")
                key = scan.value()
                scan.expect(":")
                yield Row(index, f"key {key!r}", scan.value(), key=key)
                index += 1
                if scan.expect(",}") == "}":
                    return

    def lines(self, path: Path) -> Iterator[Row]:
        """One JSON value per line: ``line n`` (1-based). A line that is not JSON is a malformed row, not a
        fatal error: its value is the :class:`json.JSONDecodeError`, for the adapter to report."""
        raw, on_read = self._opened(path)
        with raw:
            index = 0
            for number, line in enumerate(raw, start=1):
                on_read()
                if not line.strip():
                    continue
                try:
                    # Without its line break: a line cut short is then reported at its own last column, not at
                    # "line 2 column 1" (the position after the break).
                    value: Any = json.loads(line.rstrip(b"\r\n"))
                except json.JSONDecodeError as error:
                    value = error
                yield Row(index, f"line {number}", value)
                index += 1

    def load(self, path: Path) -> Any:
        """A whole document (files that must be joined or indexed anyway, e.g. COCO's images + annotations)."""
        raw, on_read = self._opened(path)
        with raw:
            try:
                value = json.loads(raw.read().decode("utf-8-sig"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise SourceError(f"{path}: invalid JSON: {error}") from None
            finally:
                on_read()
        return value
