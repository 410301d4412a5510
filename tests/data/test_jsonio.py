"""The streaming JSON readers agree with json.load, whatever the chunk boundaries."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmgpt.data.sources import jsonio
from mmgpt.data.sources.jsonio import JsonFiles, SourceError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@pytest.fixture
def tiny_chunks(monkeypatch):
    # 3-character reads: every number, string and literal gets cut somewhere.
    monkeypatch.setattr(jsonio, "CHUNK_CHARS", 3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(json_values, max_size=6), indent=st.sampled_from([None, 1]))
def test_array_matches_json_load(tmp_path_factory, monkeypatch, rows, indent):
    monkeypatch.setattr(jsonio, "CHUNK_CHARS", 3)  # same value every example: the shared fixture is harmless
    path = tmp_path_factory.mktemp("j") / "rows.json"
    path.write_text(json.dumps(rows, indent=indent, ensure_ascii=False), encoding="utf-8")
    files = JsonFiles()
    read = list(files.array(path))
    assert [r.value for r in read] == rows
    assert [r.where for r in read] == [f"row {i}" for i in range(len(rows))]
    assert files.bytes_read == path.stat().st_size


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(st.text(max_size=5), json_values, max_size=5))
def test_keyed_object_matches_json_load(tmp_path_factory, monkeypatch, data):
    monkeypatch.setattr(jsonio, "CHUNK_CHARS", 3)
    path = tmp_path_factory.mktemp("j") / "keyed.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    read = list(JsonFiles().keyed(path))
    assert {r.key: r.value for r in read} == data and [r.key for r in read] == list(data)


def test_numbers_cut_by_a_chunk_boundary(tmp_path, tiny_chunks):
    path = tmp_path / "n.json"
    path.write_text("[12345, 6.5e10, true, null, -7]")
    assert [r.value for r in JsonFiles().array(path)] == [12345, 6.5e10, True, None, -7]


def test_byte_order_mark_and_empty_containers(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf [ ] ")
    assert list(JsonFiles().array(path)) == []
    path.write_text("{}")
    assert list(JsonFiles().keyed(path)) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"a": 1} {"b": 2}]', "expected one of ',]'"),
        ('[{"a": 1},', "invalid JSON at character"),
        ('[{"a": 1}', "found the end of the file"),
        ("", "expected a JSON list"),
    ],
)
def test_syntax_errors_are_fatal_and_located(tmp_path, tiny_chunks, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(SourceError, match=message):
        list(JsonFiles().array(path))


def test_not_utf8_is_fatal(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('["caf\xe9"]'.encode("latin-1"))
    with pytest.raises(SourceError, match="not UTF-8"):
        list(JsonFiles().array(path))


@pytest.mark.parametrize("newline", ["\n", "\r\n", ""])
def test_a_json_line_cut_short_is_reported_at_its_real_column(tmp_path, newline):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"instruction": "abc", "res' + newline, newline="")
    first, cut = JsonFiles().lines(path)
    assert first.value == {"a": 1} and cut.where == "line 2"
    assert isinstance(cut.value, json.JSONDecodeError) and (cut.value.lineno, cut.value.colno) == (1, 24)
