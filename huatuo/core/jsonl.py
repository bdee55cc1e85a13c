"""JSON Lines: reading with a location for every record, writing, and crash-safe appending.

Every reader in huatuo (training sources, corpus passages, exams, answer and judgment files, the row ledger) goes
through ``iter_jsonl``: blank lines carry no record, a UTF-8 byte-order mark is harmless, and a line that is not JSON
(or not UTF-8) comes back as a ``BadLine`` with its reason, so the caller decides whether it is an error or a counted
skip.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huatuo.core.errors import DataError, HuatuoError, preview
from huatuo.core.logs import get_logger

log = get_logger(__name__)

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class BadLine:
    """A line that could not be read as one JSON value: the kind of problem and the detail with its fix.

    The detail carries no location: every caller puts its own ``file:line:`` first, so it is never said twice.
    """

    kind: str  # "invalid UTF-8" | "malformed JSON" | "invalid text"
    detail: str
    torn: bool = False  # the file's last line, without its newline: a write cut short by a kill


def utf8_problem(column: int, bad: bytes) -> str:
    """The message for bytes that are not UTF-8, with the usual fix (files exported from Windows tools: GB18030)."""
    return (
        f"not valid UTF-8 (bytes {bad[:4]!r} at byte {column} of the line); re-encode the file as "
        "UTF-8, e.g. iconv -f GB18030 -t UTF-8 in.jsonl > out.jsonl"
    )


# A \uXXXX escape of half a surrogate pair: valid JSON, but no character (tokenizers and UTF-8 writers fail on it).
_LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def lone_surrogate(value: Any, text: str) -> str | None:
    """Why ``value``, parsed from ``text``, holds no proper text (a lone surrogate escape), or None.

    Only text with such an escape is looked at twice, so well-formed files pay one substring search.
    """
    if "\\ud" not in text and "\\uD" not in text:
        return None
    try:
        dumps(value).encode("utf-8")
    except UnicodeEncodeError:
        found = _LONE_SURROGATE.search(text)
        escape = found.group(0) if found else "a \\uD800-\\uDFFF escape"
        return (
            f"{escape} is half of a surrogate pair, not a character (the tool that wrote it cut a character in two); "
            "fix or remove it"
        )
    return None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for every non-blank line; a line that is not JSON yields a ``BadLine`` as its value."""
    path = Path(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            torn = not raw.endswith(b"\n")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, BadLine("invalid UTF-8", utf8_problem(err.start, raw[err.start :]), torn)
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                text = line.rstrip("\r\n")
                detail = f"{err.msg} at column {min(err.pos, len(text)) + 1}; fix the line (one JSON value per line)"
                yield number, BadLine("malformed JSON", f"{detail}; value: {preview(text)}", torn)
                continue
            if problem := lone_surrogate(value, line):
                yield number, BadLine("invalid text", problem, torn)
                continue
            yield number, value


def read_jsonl(
    path: str | Path, error: type[HuatuoError] = DataError, allow_torn_tail: bool = False
) -> list[tuple[int, Any]]:
    """Every ``(line number, record)`` of a file; the first unreadable line raises ``error`` naming ``file:line``.

    ``allow_torn_tail``: a malformed last line without its newline (an append cut short by a kill) is dropped instead.
    """
    records = []
    for number, value in iter_jsonl(path):
        if isinstance(value, BadLine):
            if allow_torn_tail and value.torn:
                break
            raise error(f"{path}:{number}: {value.kind}: {value.detail}")
        records.append((number, value))
    return records


def read_utf8(path: str | Path, error: type[HuatuoError] = DataError) -> str:
    """A whole file as text (a byte-order mark dropped); bytes that are not UTF-8 raise ``error`` at ``file:line``."""
    raw = Path(path).read_bytes().removeprefix(_BOM)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1)
        raise error(f"{path}:{line}: {utf8_problem(column, raw[err.start :])}") from None


def read_json_records(path: str | Path, error: type[HuatuoError] = DataError) -> Any:
    """The contents of a ``.jsonl`` file (a list of records) or of any other file as one JSON document.

    A ``.json`` file holding one object per line (MedMCQA ships its files so) is read as JSON Lines. Every problem
    raises ``error`` naming the file and line: a line that is not JSON or bytes that are not UTF-8.
    """
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return [record for _, record in read_jsonl(path, error)]
    text = read_utf8(path, error)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # one value per line: JSON Lines under a .json name
            return [record for _, record in read_jsonl(path, error)]
        raise error(
            f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno}); fix the file, or name it .jsonl "
            "if it holds one record per line"
        ) from None
    check_text(value, text, path, error)
    return value


def check_text(value: Any, text: str, path: str | Path, error: type[HuatuoError] = DataError) -> None:
    """Raise ``error`` at ``file:line`` when ``value``, parsed from the whole file ``text``, holds no proper text."""
    if problem := lone_surrogate(value, text):
        found = _LONE_SURROGATE.search(text)
        line = text.count("\n", 0, found.start()) + 1 if found else 1
        raise error(f"{path}:{line}: invalid text: {problem}")


def latest_by_key(path: str | Path, key: str = "key") -> dict[str, dict[str, Any]]:
    """The latest record per ``record[key]`` of an append-only JSONL file; none when the file does not exist.

    Unreadable lines are ignored, like records without the key: a kill mid-write leaves at most one, the torn last
    line, and its work is simply done again.
    """
    latest: dict[str, dict[str, Any]] = {}
    if not Path(path).is_file():
        return latest
    for _, record in iter_jsonl(path):
        if isinstance(record, dict) and key in record:
            latest[record[key]] = record
    return latest


def dumps(record: Any) -> str:
    """One record as a JSON line (non-ASCII kept readable), without the newline."""
    return json.dumps(record, ensure_ascii=False)


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write one JSON object per line (UTF-8, non-ASCII readable), replacing the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(dumps(row) + "\n")
    return path


def write_json(data: Any, path: str | Path) -> Path:
    """Indented UTF-8 JSON, non-ASCII readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def drop_torn_tail(path: Path) -> int:
    """Make ``path`` end with a whole line before records are appended; returns the bytes cut.

    A last line without its newline that reads as JSON (a file written by hand or by another tool) is kept and
    given its newline. One that does not is a write cut short by a kill: its record is unfinished, so it is cut off
    (and logged), and the next record starts a line of its own instead of being glued to it.
    """
    if not path.is_file():
        return 0
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        end = size
        while end > 0:  # back to the last newline, a block at a time
            start = max(0, end - (1 << 16))
            handle.seek(start)
            block = handle.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
        handle.seek(end)
        tail = handle.read()
        try:
            json.loads(tail.removeprefix(_BOM) if end == 0 else tail)
        except ValueError:  # not JSON, or not UTF-8
            handle.truncate(end)
        else:
            handle.write(b"\n")
            return 0
    log.warning(
        "%s: cut an unfinished last line (%d bytes, a write cut short); its record is done again", path, size - end
    )
    return size - end


class JsonlAppender:
    """Appends records as JSON lines, each with one ``write`` (then ``fsync``): a kill can tear only the last line.

    When the file is opened, a torn last line left by an earlier kill is cut off (its record is unfinished; readers
    skip it) and a whole last record without its newline gets one (``drop_torn_tail``), so the next record starts a
    line of its own instead of being glued to the last and lost. Thread-safe:
    appends from worker threads land one whole line at a time.
    """

    def __init__(self, path: str | Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        drop_torn_tail(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def append(self, record: Any) -> None:
        """Write one record as a complete line (and wait until it is on disk when ``fsync``)."""
        data = (dumps(record) + "\n").encode()
        with self._lock:
            written = os.write(self._fd, data)
            while written < len(data):  # a short write (full disk, signal): finish the line before anything else
                written += os.write(self._fd, data[written:])
            if self.fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
