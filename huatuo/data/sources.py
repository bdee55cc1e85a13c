"""Training data sources: where they live, how they are read, and how each record becomes ``[q1, a1, q2, ...]``.

Formats (``format`` in a source's config):

- ``huatuo_json``: the HuatuoGPT-II layout, one JSON object ``{source_key: [[q, a, q, a, ...], ...]}``; ``key``
  selects the list (default: the source's name; a file with a single key needs none).
- ``jsonl``: one record per line, each a list of turns or any record layout below.
- ``sharegpt``: records with ``conversations: [{from, value}, ...]`` (JSON list or JSONL).
- ``openai``: records with ``messages: [{role, content}, ...]`` (JSON list or JSONL); ``content`` may be a list of
  ``{"type": "text", "text": ...}`` parts.
- ``unify``: the output of ``python -m huatuo.unify``: JSONL records with ``question`` and ``answer`` (other
  fields such as ``id`` are ignored).
- ``parquet``: rows with a ``turns``, ``conversations``, ``messages`` or ``question``/``answer`` column.
- ``hf``: a Hugging Face hub dataset (``hf_name``, ``hf_config``, ``hf_split``, ``hf_revision``), rows as in
  ``parquet``; streamed, so nothing but the rows read is downloaded.
- ``auto`` (default): from the file suffix (``.parquet``, ``.jsonl``) and, for ``.json``, the top-level shape.

``paths`` entries may be globs (``data/web_cn/*.jsonl``). JSONL and parquet files are streamed; a ``.json`` file is
one JSON document and is parsed whole (about five times its size in memory): convert big corpora to JSONL.

Every record is checked (``huatuo.data.records``); a bad one raises ``DataError`` naming ``file:line`` (or
``file:key[index]``), the value and the fix, or, with ``on_error: skip``, is counted under its reason in the prepare
statistics.
"""

import glob
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from huatuo.core.errors import MAX_REPORTED, DataError, did_you_mean, preview, raise_problems
from huatuo.core.jsonl import BadLine, check_text, iter_jsonl, read_utf8
from huatuo.data.records import RECORD_COLUMNS, record_to_turns

FORMATS = ("auto", "huatuo_json", "jsonl", "sharegpt", "openai", "unify", "parquet", "hf")
OnError = Literal["raise", "skip"]
MAX_EXAMPLES = 5  # locations kept per skip reason for stats.json
MISSING = "???"  # OmegaConf's marker of a required value left unset

_GLOB_CHARS = set("*?[")


@dataclass
class SourceSpec:
    """One data source of the mixture: its files, format, priority and epochs."""

    name: str
    paths: list[str] = field(default_factory=list)
    format: str = "auto"
    priority: float = 1.0
    epochs: float = 1.0
    key: str | None = None  # huatuo_json: which list of the object
    hf_name: str | None = None  # hf: hub dataset name (or a local dataset folder)
    hf_split: str = "train"
    hf_config: str | None = None
    hf_revision: str | None = None  # hf: a commit or tag; pins the data (and the prepared cache) exactly
    hf_data_files: str | list[str] | None = None  # hf: files of the repository to read (for files no config names)

    def files(self) -> list[Path]:
        """The files of this source, globs expanded (sorted), in config order."""
        out: list[Path] = []
        for pattern in self.paths:
            if _GLOB_CHARS & set(pattern):
                out += [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).is_file()]
            else:
                out.append(Path(pattern))
        return out

    def problems(self, prefix: str) -> list[str]:
        """Every config problem of this source, each naming the key, the value and the fix."""
        out = []
        if self.format not in FORMATS:
            out.append(
                f"{prefix}.format={self.format!r} is not a known format{did_you_mean(str(self.format), FORMATS)}; "
                f"use one of {', '.join(FORMATS)}"
            )
        if self.format == "hf":
            if not self.hf_name or self.hf_name == MISSING:
                out.append(f"{prefix}.hf_name is not set; set it to a hub dataset name, e.g. org/dataset")
        elif MISSING in self.paths:
            out.append(
                f"{prefix}.paths is required (???): set it to the files of source {self.name!r}, "
                f"e.g. {prefix}.paths=[/data/{self.name}.jsonl] (globs allowed)"
            )
        elif not self.paths:
            out.append(f"{prefix}.paths is empty; list the files of source {self.name!r} (globs allowed)")
        else:
            for pattern in self.paths:
                path = Path(pattern)
                if _GLOB_CHARS & set(pattern):
                    if not any(Path(p).is_file() for p in glob.glob(pattern)):
                        out.append(f"{prefix}.paths: the glob {pattern!r} matches no file; fix the pattern")
                elif path.is_dir():
                    out.append(
                        f"{prefix}.paths: {pattern!r} is a folder; list its files or use a glob like "
                        f"{pattern.rstrip('/')}/*.jsonl"
                    )
                elif not path.is_file():
                    out.append(f"{prefix}.paths: file {pattern!r} does not exist; fix the path or remove it")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int | float) or not self.priority > 0:
            out.append(f"{prefix}.priority={self.priority!r} must be a number > 0 (higher = earlier in training)")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int | float) or not self.epochs >= 0:
            out.append(f"{prefix}.epochs={self.epochs!r} must be a number >= 0 (times each sample enters the pool)")
        return out


@dataclass
class LoadReport:
    """What reading one source kept and skipped (with where, for the first few of each reason)."""

    records: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, kind: str, location: str) -> None:
        """Count one skipped record under its reason."""
        self.skipped[kind] += 1
        seen = self.examples.setdefault(kind, [])
        if len(seen) < MAX_EXAMPLES:
            seen.append(location)


def _file_kind(spec: SourceSpec, path: Path) -> str:
    if spec.format == "parquet" or path.suffix.lower() == ".parquet":
        return "parquet"
    if spec.format in ("jsonl", "unify") or path.suffix.lower() == ".jsonl":
        return "jsonl"
    return "json"


def _iter_lines(path: Path) -> Iterator[tuple[str, Any]]:
    for number, value in iter_jsonl(path):
        yield f"{path}:{number}", value


def _load_json(path: Path) -> Any:
    text = read_utf8(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty; fill it or remove it from the source's paths")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno}); fix the file "
            "(one JSON document, or use a .jsonl suffix for one record per line)"
        ) from None
    check_text(value, text, path)
    return value


_json_cache: dict[str, Any] = {}  # the last parsed .json file: the demo's nine sources share one file


def forget_parsed_json() -> None:
    """Drop the cached parse of the last ``.json`` file (call when every source has been read)."""
    _json_cache.clear()


def _parsed_json(path: Path) -> Any:
    key = f"{path.resolve()}:{path.stat().st_mtime_ns}:{path.stat().st_size}"
    if key not in _json_cache:
        _json_cache.clear()
        _json_cache[key] = _load_json(path)
    return _json_cache[key]


def _iter_json(spec: SourceSpec, path: Path) -> Iterator[tuple[str, Any]]:
    data = _parsed_json(path)
    if isinstance(data, dict) and spec.format in ("auto", "huatuo_json"):
        key = spec.key
        if key is None:
            if spec.name in data:
                key = spec.name
            elif len(data) == 1:
                key = next(iter(data))
            else:
                raise DataError(
                    f"{path}: a HuatuoGPT-II JSON object with keys {sorted(data)[:10]}, none named {spec.name!r}; "
                    f"set data.sources.{spec.name}.key to one of them"
                )
        if key not in data:
            raise DataError(
                f"{path}: key {key!r} (data.sources.{spec.name}.key) not found{did_you_mean(key, list(data))}; "
                f"the file has {sorted(data)[:10]}"
            )
        items = data[key]
        if not isinstance(items, list):
            raise DataError(
                f"{path}:{key}: expected a list of conversations, got {type(items).__name__}; "
                "the layout is {source: [[q, a, ...], ...]}"
            )
        for index, record in enumerate(items):
            yield f"{path}:{key}[{index}]", record
        return
    if isinstance(data, list):
        for index, record in enumerate(data):
            yield f"{path}:[{index}]", record
        return
    raise DataError(
        f"{path}: top-level JSON {type(data).__name__} is not a known layout for format={spec.format!r}; expected "
        "{source: [[turns]]} (huatuo_json) or a list of records"
    )


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable parquet file ({err}); re-export it or fix the path") from None
    columns = set(handle.schema_arrow.names)
    if not any(wanted <= columns for wanted in RECORD_COLUMNS):
        raise DataError(
            f"{path}: parquet columns {sorted(columns)[:10]} hold no conversations; expected a 'turns', "
            "'conversations' or 'messages' column, or 'question' and 'answer'"
        )
    row = 0
    for batch in handle.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            yield f"{path}:row {row}", record
            row += 1


def _iter_hub(spec: SourceSpec) -> Iterator[tuple[str, Any]]:
    from datasets import load_dataset

    dataset = load_dataset(
        spec.hf_name,
        spec.hf_config,
        split=spec.hf_split,
        revision=spec.hf_revision,
        data_files=spec.hf_data_files,
        streaming=True,
    )
    for index, record in enumerate(dataset):
        yield f"{spec.hf_name}[{spec.hf_split}] row {index}", record


def iter_records(spec: SourceSpec) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, raw record)`` for every record of a source; unreadable lines come as ``BadLine``."""
    if spec.format == "hf":
        yield from _iter_hub(spec)
        return
    for path in spec.files():
        kind = _file_kind(spec, path)
        if kind == "parquet":
            yield from _iter_parquet(path)
        elif kind == "jsonl":
            yield from _iter_lines(path)
        else:
            yield from _iter_json(spec, path)


def iter_conversations(spec: SourceSpec, on_error: OnError, report: LoadReport) -> Iterator[tuple[str, list[str]]]:
    """Stream ``(location, turns)`` for the valid conversations of a source; bad records raise or are counted.

    With ``on_error="raise"`` the whole source is still read so that one error lists every problem (up to
    ``MAX_REPORTED``); with ``"skip"`` each bad record is counted in ``report`` under its reason.
    """
    problems: list[str] = []
    extra = 0
    for location, raw in iter_records(spec):
        if isinstance(raw, BadLine):
            turns, problem = None, (raw.kind, raw.detail)
        else:
            turns, problem = record_to_turns(raw, spec.format)
        if turns is None:
            kind, detail = problem
            if on_error == "skip":
                report.skip(kind, location)
                continue
            if len(problems) < MAX_REPORTED:
                value = "" if isinstance(raw, BadLine) else f"; value: {preview(raw)}"
                problems.append(f"{location}: {kind}: {detail}{value}")
            else:
                extra += 1
            continue
        if not problems:
            report.records += 1
            yield location, turns
    raise_problems(
        f"source {spec.name!r} has {len(problems) + extra} bad record(s)",
        problems,
        DataError,
        extra=extra,
        footer="Fix the records, or set data.on_error=skip to drop them (they are counted in stats.json).",
    )
    if report.records == 0:
        where = spec.hf_name if spec.format == "hf" else ", ".join(map(str, spec.files()))
        if report.skipped:
            reasons = ", ".join(f"{k}: {v}" for k, v in report.skipped.most_common())
            raise DataError(
                f"source {spec.name!r} ({where}): every record was skipped ({reasons}); fix the records "
                f"(first at {next(iter(report.examples.values()))[0]}) or remove the source from data.sources"
            )
        raise DataError(
            f"source {spec.name!r} ({where}) has no records; fill the file(s), fix data.sources.{spec.name}.paths, "
            "or remove the source from data.sources"
        )
