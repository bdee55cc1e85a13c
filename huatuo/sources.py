"""Training data sources: where they live, how they are read, and how each record becomes ``[q1, a1, q2, ...]``.

Formats (``format`` in a source's config):

- ``huatuo_json``: the HuatuoGPT-II layout, one JSON object ``{source_key: [[q, a, q, a, ...], ...]}``; ``key``
  selects the list (default: the source's name; a file with a single key needs none).
- ``jsonl``: one record per line, each a list of turns or any record layout below.
- ``sharegpt``: records with ``conversations: [{from, value}, ...]`` (JSON list or JSONL).
- ``openai``: records with ``messages: [{role, content}, ...]`` (JSON list or JSONL).
- ``unify``: the output of ``python -m huatuo.unify``: records with ``question`` and ``answer``.
- ``parquet``: rows with a ``turns``, ``conversations``, ``messages`` or ``question``/``answer`` column.
- ``hf``: a Hugging Face hub dataset (``hf_name``, ``hf_split``), rows as in ``parquet``.
- ``auto`` (default): from the file suffix (``.parquet``, ``.jsonl``) and, for ``.json``, the top-level shape.

Every record is checked; a bad one raises ``DataError`` naming ``file:line`` (or ``file:key[index]``), the value
and the fix, or, with ``on_error: skip``, is counted under its reason in the prepare statistics.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FORMATS = ("auto", "huatuo_json", "jsonl", "sharegpt", "openai", "unify", "parquet", "hf")
OnError = Literal["raise", "skip"]
MAX_REPORTED = 20  # problems listed in one error before "... and N more"

_USER_ROLES = {"user", "human"}
_ASSISTANT_ROLES = {"assistant", "gpt", "bot", "model"}


class DataError(ValueError):
    """Bad training data or data config; the message names every problem found, where, and the fix."""


@dataclass
class SourceSpec:
    """One data source of the mixture: its files, format, priority and epochs."""

    name: str
    paths: list[str] = field(default_factory=list)
    format: str = "auto"
    priority: float = 1.0
    epochs: float = 1.0
    key: str | None = None  # huatuo_json: which list of the object
    hf_name: str | None = None  # hf: hub dataset name
    hf_split: str = "train"
    hf_config: str | None = None

    def problems(self, prefix: str) -> list[str]:
        """Every config problem of this source, each naming the key, the value and the fix."""
        out = []
        if self.format not in FORMATS:
            out.append(f"{prefix}.format={self.format!r} is not a known format; use one of {', '.join(FORMATS)}")
        if self.format == "hf":
            if not self.hf_name:
                out.append(f"{prefix}.hf_name is empty; set it to a hub dataset name, e.g. org/dataset")
        elif not self.paths:
            out.append(f"{prefix}.paths is empty; list the files of source {self.name!r}")
        for p in self.paths:
            if self.format != "hf" and not Path(p).is_file():
                out.append(f"{prefix}.paths: file {p!r} does not exist; fix the path or remove it")
        if not isinstance(self.priority, int | float) or not self.priority > 0:
            out.append(f"{prefix}.priority={self.priority!r} must be a number > 0 (higher = earlier in training)")
        if not isinstance(self.epochs, int | float) or not self.epochs >= 0:
            out.append(f"{prefix}.epochs={self.epochs!r} must be a number >= 0 (times each sample enters the pool)")
        return out


@dataclass
class LoadReport:
    """What reading one source kept and skipped."""

    records: int = 0
    skipped: Counter = field(default_factory=Counter)


Checked = tuple[list[str] | None, tuple[str, str] | None]


def check_turns(record: Any) -> Checked:
    """Validate a turn list; returns ``(turns, None)`` or ``(None, (kind, detail))``."""
    if not isinstance(record, list):
        return None, ("not a list of turns", f"expected a list of turns, got {type(record).__name__}")
    if not record:
        return None, ("empty conversation", "the conversation has no turns")
    for i, turn in enumerate(record):
        if not isinstance(turn, str):
            return None, ("non-string turn", f"turn {i} is {type(turn).__name__}, not a string")
        if not turn.strip():
            return None, ("empty turn", f"turn {i} is empty")
    if len(record) % 2:
        return None, ("ends on a question", f"{len(record)} turns: the last question has no answer to learn from")
    return record, None


def _from_roles(messages: Any, role_key: str, text_key: str) -> Checked:
    if not isinstance(messages, list):
        return None, ("not a list of messages", f"expected a list of messages, got {type(messages).__name__}")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return None, ("not a list of messages", f"message {i} is {type(message).__name__}, not an object")
        role = message.get(role_key)
        if role == "system":
            return None, (
                "system message",
                "the HuatuoGPT-II format has no system prompt (fold it into the first question)",
            )
        expected = _USER_ROLES if i % 2 == 0 else _ASSISTANT_ROLES
        if role not in expected:
            return None, (
                "roles out of order",
                f"message {i} has {role_key}={role!r}; roles must alternate user/assistant from the user",
            )
        turns.append(message.get(text_key))
    return check_turns(turns)


def record_to_turns(record: Any, fmt: str) -> Checked:
    """Turn one record of any supported layout into ``[q1, a1, ...]``; returns ``(turns, None)`` or a problem."""
    if isinstance(record, list):
        if fmt in ("sharegpt", "openai", "unify"):
            return None, ("unknown record layout", f"expected a {fmt} record (object), got a list")
        return check_turns(record)
    if not isinstance(record, Mapping):
        return None, ("unknown record layout", f"expected a list of turns or an object, got {type(record).__name__}")
    if "conversations" in record and fmt in ("auto", "jsonl", "sharegpt", "parquet", "hf"):
        return _from_roles(record["conversations"], "from", "value")
    if "messages" in record and fmt in ("auto", "jsonl", "openai", "parquet", "hf"):
        return _from_roles(record["messages"], "role", "content")
    if "turns" in record and fmt in ("auto", "jsonl", "parquet", "hf"):
        return check_turns(record["turns"])
    if "question" in record and "answer" in record and fmt in ("auto", "jsonl", "unify", "parquet", "hf"):
        return check_turns([record["question"], record["answer"]])
    wanted = {
        "sharegpt": "'conversations'",
        "openai": "'messages'",
        "unify": "'question' and 'answer'",
    }.get(fmt, "'turns', 'conversations', 'messages' or 'question'+'answer'")
    return None, ("unknown record layout", f"record has keys {sorted(record)[:6]}, expected {wanted}")


def _sniff(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".jsonl":
        return "jsonl"
    return "json"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not valid UTF-8 (byte {err.start}: {err.object[err.start : err.start + 4]!r}); "
            "re-encode the file as UTF-8, e.g. iconv -f GB18030 -t UTF-8"
        ) from None


def _iter_raw(spec: SourceSpec, path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, raw record)`` from one file; malformed JSON lines yield a ``DataError`` as record."""
    kind = "parquet" if spec.format == "parquet" else ("jsonl" if spec.format == "jsonl" else _sniff(path))
    if kind == "parquet":
        import pyarrow.parquet as pq

        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                yield f"{path}:row {row}", record
                row += 1
        return
    if kind == "jsonl":
        try:
            handle = path.open(encoding="utf-8")
            with handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield f"{path}:{number}", json.loads(line)
                    except json.JSONDecodeError as err:
                        yield f"{path}:{number}", DataError(f"{err.msg} at column {err.colno}")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{path}: not valid UTF-8 near byte {err.start}; re-encode the file as UTF-8 "
                "(e.g. iconv -f GB18030 -t UTF-8)"
            ) from None
        return
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno}); fix the file "
            "(one JSON document, or use a .jsonl suffix for one record per line)"
        ) from None
    if isinstance(data, dict) and spec.format in ("auto", "huatuo_json"):
        key = spec.key
        if key is None:
            if spec.name in data:
                key = spec.name
            elif len(data) == 1:
                key = next(iter(data))
            else:
                raise DataError(
                    f"{path}: a HuatuoGPT-II JSON object with keys {sorted(data)[:10]} and none is {spec.name!r}; "
                    f"set data.sources.{spec.name}.key to one of them"
                )
        if key not in data:
            raise DataError(
                f"{path}: key {key!r} (data.sources.{spec.name}.key) not found; the file has {sorted(data)[:10]}"
            )
        items = data[key]
        if not isinstance(items, list):
            raise DataError(f"{path}:{key}: expected a list of conversations, got {type(items).__name__}")
        for index, record in enumerate(items):
            yield f"{path}:{key}[{index}]", record
        return
    if isinstance(data, list):
        for index, record in enumerate(data):
            yield f"{path}:[{index}]", record
        return
    raise DataError(
        f"{path}: top-level JSON {type(data).__name__} is not a known layout; expected "
        "{source: [[turns]]} (huatuo_json) or a list of records"
    )


def _iter_hub(spec: SourceSpec) -> Iterator[tuple[str, Any]]:
    from datasets import load_dataset

    dataset = load_dataset(spec.hf_name, spec.hf_config, split=spec.hf_split, streaming=True)
    for index, record in enumerate(dataset):
        yield f"{spec.hf_name}[{spec.hf_split}][{index}]", record


def iter_conversations(spec: SourceSpec, on_error: OnError, report: LoadReport) -> Iterator[list[str]]:
    """Stream the valid conversations of a source, raising or counting bad records as ``on_error`` says."""
    problems: list[str] = []
    extra = 0
    raws = _iter_hub(spec) if spec.format == "hf" else (r for p in spec.paths for r in _iter_raw(spec, Path(p)))
    for location, raw in raws:
        if isinstance(raw, DataError):
            turns, problem = None, ("malformed JSON", str(raw))
        else:
            turns, problem = record_to_turns(raw, spec.format)
        if turns is None:
            kind, detail = problem
            if on_error == "skip":
                report.skipped[kind] += 1
                continue
            if len(problems) < MAX_REPORTED:
                problems.append(f"{location}: {kind}: {detail}; value: {_preview(raw)}")
            else:
                extra += 1
            continue
        if not problems:
            report.records += 1
            yield turns
    if problems:
        more = f"\n  ... and {extra} more" if extra else ""
        raise DataError(
            f"source {spec.name!r} has {len(problems) + extra} bad record(s):\n  "
            + "\n  ".join(problems)
            + more
            + "\nFix the records, or set data.on_error=skip to drop them (they are counted in stats.json)."
        )


def _preview(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, DataError) else "(unparsable line)"
    return text if len(text) <= limit else text[: limit - 3] + "..."
