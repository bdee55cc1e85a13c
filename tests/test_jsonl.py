"""The one JSONL module: readers that locate every problem, and an appender that survives a kill."""

from __future__ import annotations

import json

import pytest

from huatuo.core.errors import DataError
from huatuo.core.jsonl import BadLine, JsonlAppender, drop_torn_tail, iter_jsonl, read_jsonl


def test_an_append_after_a_torn_last_line_is_not_glued_to_it(tmp_path):
    path = tmp_path / "replies.jsonl"
    path.write_bytes(b'{"key": "a"}\n{"key": "b", "repl')  # a kill in the middle of the second write
    with JsonlAppender(path, fsync=False) as out:
        out.append({"key": "b"})
        out.append({"key": "c"})
    assert [record["key"] for _, record in iter_jsonl(path)] == ["a", "b", "c"]


def test_dropping_a_torn_tail_keeps_whole_lines_and_empty_files(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"")
    assert drop_torn_tail(path) == 0
    path.write_bytes(b'{"a": 1}\n')
    assert drop_torn_tail(path) == 0 and path.read_bytes() == b'{"a": 1}\n'
    path.write_bytes(b'{"torn": "only line')
    assert drop_torn_tail(path) == 19 and path.read_bytes() == b""
    long_line = json.dumps({"text": "长" * 50_000}, ensure_ascii=False).encode()
    path.write_bytes(b'{"a": 1}\n' + long_line[:-3])  # torn far from the last newline
    drop_torn_tail(path)
    assert path.read_bytes() == b'{"a": 1}\n'
    path.write_bytes(b'{"a": 1}\n{"b": 2}')  # a whole record without its newline (written by hand): kept
    assert drop_torn_tail(path) == 0 and path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    path.write_bytes(b'\xef\xbb\xbf{"b": 2}')
    assert drop_torn_tail(path) == 0 and path.read_bytes() == b'\xef\xbb\xbf{"b": 2}\n'


def test_readers_name_the_line_and_a_torn_tail_can_be_allowed(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n[1, 2\n')
    values = [value for _, value in iter_jsonl(path)]
    assert values[0] == {"a": 1} and isinstance(values[1], BadLine) and values[1].kind == "malformed JSON"
    with pytest.raises(DataError, match=rf"{path}:3: "):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n{"b": ')
    assert read_jsonl(path, allow_torn_tail=True) == [(1, {"a": 1})]
