"""The unify stage's results files: append-only JSON lines that double as the record of finished passages.

Each finished passage is one line written with a single ``write`` and then fsynced, so a kill (even SIGKILL) can
leave at most one torn line, at the end, without its newline. ``recover`` cuts that line on restart (its passage
is redone; ``drop_torn_tail``) and returns the finished ids; together the two files (accepted, rejected) account for
every passage once.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from huatuo.core.errors import DataError, preview
from huatuo.core.jsonl import BadLine, drop_torn_tail, dumps, iter_jsonl

log = logging.getLogger(__name__)

_FIX = "delete that line and rerun (its passage will be redone), or write to a new output"


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, record)`` of a results file once its torn last line is cut; a line that is no record is an error."""
    drop_torn_tail(path)  # a whole last record without its newline is kept (and given one)
    for number, record in iter_jsonl(path):  # blank lines carry no record
        if isinstance(record, BadLine):
            raise DataError(f"{path}:{number}: {record.kind}: {record.detail}; or {_FIX}")
        if not isinstance(record, dict) or "id" not in record:
            raise DataError(f"{path}:{number}: not a unify record (no 'id': {preview(record)}); {_FIX}")
        yield number, record


def recover(path: Path) -> dict[str, str]:
    """The ids finished in a results file (id -> reason, "accepted" for the output); truncates a torn last line."""
    finished: dict[str, str] = {}
    if not path.exists():
        return finished
    for number, record in _records(path):
        key = str(record["id"])
        if key in finished:
            log.warning("%s:%d: id %r is recorded twice; keeping the first", path, number, key)
        finished.setdefault(key, sys.intern(str(record.get("reason", "accepted"))))  # a few distinct values
    return finished


def drop_records(path: Path, reason: str) -> int:
    """Rewrite ``path`` without the records whose reason is ``reason`` (atomically: a kill keeps the old file).

    A torn last line is dropped too: like the dropped records, its passage is not finished and will be redone.
    """
    if not path.exists():
        return 0
    dropped = 0
    temporary = path.with_name(path.name + ".tmp")
    try:
        with temporary.open("wb") as target:
            for _, record in _records(path):
                if record.get("reason") == reason:
                    dropped += 1
                else:
                    target.write((dumps(record) + "\n").encode())
            target.flush()
            os.fsync(target.fileno())
    except DataError:
        temporary.unlink()
        raise
    if dropped:
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power loss
        finally:
            os.close(directory)
    else:
        temporary.unlink()
    return dropped
