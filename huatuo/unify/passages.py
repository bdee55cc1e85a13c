"""Raw corpus passages for the unify stage: reading every input format, stable ids, and splitting long passages.

Formats: a JSON list (of strings, or of objects with a text field), JSONL (objects or strings, one per line), plain
text (a passage per line, or per blank-line separated paragraph) and parquet. A record's own id is kept as is (its
JSON type too); without one, the id is ``<position>-<text hash>``, so an edited input never passes a new passage off
as a finished one. Split passages become chunks ``<id>#1``, ``<id>#2``... The whole input is scanned once before any
request, and every bad record is reported in one error naming ``file:line``, the value and the fix.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huatuo.core.errors import MAX_REPORTED, DataError, preview, raise_problems
from huatuo.core.jsonl import BadLine, iter_jsonl

FORMATS = ("auto", "json", "jsonl", "text", "parquet")
TEXT_UNITS = ("line", "paragraph")

_SENTENCE_END = re.compile(r"(?<=[。！？；!?;])|(?<=[.])\s+")


@dataclass
class ReaderSettings:
    """How passages are read from the input files."""

    format: str = "auto"  # auto (from the suffix) | json | jsonl | text | parquet
    text_field: str = "text"  # json/jsonl/parquet records: the field holding the passage
    id_field: str | None = "id"  # used when a record has it; otherwise ids come from position and content
    text_unit: str = "line"  # text files: line (a passage per line) | paragraph (blank-line separated)


@dataclass
class SplitSettings:
    """Optional cutting of long passages into paragraph-sized chunks."""

    max_chars: int | None = None  # None keeps passages whole
    min_chars: int = 50  # a shorter chunk joins its neighbour when they fit in max_chars together


@dataclass
class Unit:
    """One passage (or chunk of one) to unify."""

    id: str | int  # as written to the output: the input's id (its JSON type kept), a derived id, or "<id>#<k>"
    text: str
    location: str  # file:line of the passage, for messages
    source_id: str | int | None = None  # the passage a chunk came from
    chunk: int | None = None  # 1-based chunk number, when the passage was split
    chunks: int | None = None

    @property
    def key(self) -> str:
        return str(self.id)


def detect_format(path: Path, reader: ReaderSettings) -> str:
    """The input format of ``path``: ``reader.format`` unless auto, else from the suffix."""
    if reader.format != "auto":
        return reader.format
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".txt", ".text", ".md", ""):
        return "text"
    raise DataError(
        f"{path}: cannot tell the format from the suffix {suffix!r}; set reader.format to one of {', '.join(FORMATS)}"
    )


def _iter_raw(path: Path, reader: ReaderSettings) -> Iterator[tuple[str, Any]]:
    """``(location, raw record)`` from one file; a line that is not JSON yields a ``BadLine`` as its record."""
    kind = detect_format(path, reader)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            row = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
                for record in batch.to_pylist():
                    yield f"{path}:row {row}", record
                    row += 1
        elif kind == "jsonl":
            for number, value in iter_jsonl(path):
                yield f"{path}:{number}", value
        elif kind == "json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno}); fix the file, or name "
                    "it .jsonl if it holds one record per line"
                ) from None
            if not isinstance(data, list):
                raise DataError(
                    f"{path}: top-level JSON {type(data).__name__}; expected a list of passages (strings or objects "
                    f"with a {reader.text_field!r} field)"
                )
            for index, record in enumerate(data):
                yield f"{path}:[{index}]", record
        else:
            yield from _iter_text(path, reader.text_unit)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not valid UTF-8 near byte {err.start}; re-encode it, e.g. iconv -f GB18030 -t UTF-8"
        ) from None


def _iter_text(path: Path, unit: str) -> Iterator[tuple[str, str]]:
    with path.open(encoding="utf-8") as handle:
        if unit == "line":
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield f"{path}:{number}", line.rstrip("\r\n")
            return
        block: list[str] = []
        start = 0
        for number, line in enumerate(handle, start=1):
            if line.strip():
                start = start or number
                block.append(line.rstrip("\r\n"))
            elif block:
                yield f"{path}:{start}", "\n".join(block)
                block, start = [], 0
        if block:
            yield f"{path}:{start}", "\n".join(block)


def derived_id(position: int, text: str) -> str:
    """A stable id for a passage without one: its position in the input and a hash of its text."""
    return f"{position}-{hashlib.blake2b(text.encode(), digest_size=4).hexdigest()}"


def iter_passages(paths: list[Path], reader: ReaderSettings) -> Iterator[tuple[str, Unit | str]]:
    """``(location, passage)`` for every input record, or ``(location, problem)`` for a bad one."""
    position = 0
    for path in paths:
        for location, raw in _iter_raw(path, reader):
            this = position
            position += 1
            if isinstance(raw, BadLine):
                yield location, f"{raw.kind}: {raw.detail}"
                continue
            if isinstance(raw, str):
                yield location, Unit(id=derived_id(this, raw), text=raw, location=location)
                continue
            if not isinstance(raw, dict):
                yield location, f"expected a string or an object, got {type(raw).__name__}: {preview(raw)}"
                continue
            text = raw.get(reader.text_field)
            if reader.text_field not in raw:
                keys = sorted(str(k) for k in raw)[:8]
                yield location, f"no field {reader.text_field!r} (keys: {keys}); set reader.text_field"
                continue
            if not isinstance(text, str):
                yield location, f"field {reader.text_field!r} is {type(text).__name__}, not a string: {preview(text)}"
                continue
            given = raw.get(reader.id_field) if reader.id_field else None
            if given is not None and (isinstance(given, bool) or not isinstance(given, str | int)):
                yield location, f"id field {reader.id_field!r} is {preview(given)}; ids must be strings or integers"
                continue
            yield location, Unit(id=derived_id(this, text) if given is None else given, text=text, location=location)


def split_passage(text: str, max_chars: int, min_chars: int) -> list[str]:
    """Paragraph-sized chunks of at most ``max_chars``: paragraphs, long ones cut at sentence ends, tiny ones merged."""
    pieces: list[str] = []
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not paragraph:
            continue
        if len(paragraph) <= max_chars:
            pieces.append(paragraph)
            continue
        current = ""
        for sentence in (s for s in _SENTENCE_END.split(paragraph) if s):
            while len(sentence) > max_chars:  # one endless sentence: hard cuts
                if current:
                    pieces.append(current)
                    current = ""
                pieces.append(sentence[:max_chars])
                sentence = sentence[max_chars:]
            joined = f"{current} {sentence}" if current and current[-1].isascii() else current + sentence
            if len(joined) <= max_chars:
                current = joined
            else:
                pieces.append(current)
                current = sentence
        if current:
            pieces.append(current)
    chunks: list[str] = []
    for piece in pieces:
        small = len(piece) < min_chars or (chunks and len(chunks[-1]) < min_chars)
        if chunks and small and len(chunks[-1]) + 2 + len(piece) <= max_chars:
            chunks[-1] = f"{chunks[-1]}\n\n{piece}"
        else:
            chunks.append(piece)
    return chunks or [text]


def iter_units(paths: list[Path], reader: ReaderSettings, split: SplitSettings) -> Iterator[tuple[str, Unit | str]]:
    """Like ``iter_passages``, with long passages split into chunks ``<id>#1``, ``<id>#2``... when asked."""
    for location, item in iter_passages(paths, reader):
        if isinstance(item, str) or split.max_chars is None or len(item.text) <= split.max_chars:
            yield location, item
            continue
        chunks = split_passage(item.text, split.max_chars, split.min_chars)
        if len(chunks) == 1:
            yield location, item
            continue
        for k, chunk in enumerate(chunks, start=1):
            yield (
                location,
                Unit(
                    id=f"{item.id}#{k}", text=chunk, location=location, source_id=item.id, chunk=k, chunks=len(chunks)
                ),
            )


@dataclass
class InputSummary:
    """What a pass over the input found."""

    units: int = 0  # passages (or chunks) in the input
    todo: int = 0  # of which not finished yet
    longer_than_answer_cut: int = 0
    orphans: int = 0  # finished ids that are not in this input (changed input or split settings?)


def scan_input(
    paths: list[Path], reader: ReaderSettings, split: SplitSettings, finished: dict[str, str], answer_cut: int
) -> InputSummary:
    """Read the whole input once: count units, and raise one DataError listing every bad record or duplicate id."""
    summary = InputSummary()
    problems: list[tuple[str, str, str | None]] = []  # (location, problem, duplicated key)
    extra = 0
    seen: set[str] = set()  # keys only (not locations): memory stays ~100 bytes per passage
    for location, item in iter_units(paths, reader, split):
        duplicate = isinstance(item, Unit) and item.key in seen
        if isinstance(item, str) or duplicate:
            if len(problems) < MAX_REPORTED:
                problems.append((location, item, item.key) if duplicate else (location, item, None))
            else:
                extra += 1
            continue
        seen.add(item.key)
        summary.units += 1
        summary.todo += item.key not in finished
        summary.longer_than_answer_cut += len(item.text) > answer_cut
    if problems:
        first = _first_locations(paths, reader, split, {key for _, _, key in problems if key is not None})
        lines = [
            f"{location}: id {item.id!r} is already used at {first[key]}; ids must be unique"
            if key is not None
            else f"{location}: {item}"
            for location, item, key in problems
        ]
        raise_problems(
            f"{len(problems) + extra} bad input record(s)",
            lines,
            DataError,
            extra=extra,
            footer="Fix the records (reader.text_field / reader.id_field name the fields; id_field=null derives ids "
            "from position and content).",
        )
    summary.orphans = sum(1 for key in finished if key not in seen)
    return summary


def _first_locations(paths: list[Path], reader: ReaderSettings, split: SplitSettings, keys: set[str]) -> dict[str, str]:
    first: dict[str, str] = {}
    if keys:
        for location, item in iter_units(paths, reader, split):
            if isinstance(item, Unit) and item.key in keys and item.key not in first:
                first[item.key] = location
    return first
