"""The unify stage's results files: append-only JSON lines that double as the record of finished passages.

Each finished passage is one line written with a single ``write`` and then fsynced, so a kill (even SIGKILL) can
leave at most one torn line, at the end, without its newline. ``recover`` drops that line on restart (its passage
is redone) and returns the finished ids; together the two files (accepted, rejected) account for every passage once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from huatuo.core.errors import DataError

log = logging.getLogger(__name__)


def recover(path: Path) -> dict[str, str]:
    """The ids finished in a results file (id -> reason, "accepted" for the output); truncates a torn last line."""
    finished: dict[str, str] = {}
    if not path.exists():
        return finished
    good_end = 0
    with path.open("rb+") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):  # a write cut short by a kill: its passage is redone
                log.warning(
                    "%s:%d: dropping a torn last line (%d bytes); its passage will be redone", path, number, len(raw)
                )
                handle.truncate(good_end)
                break
            try:
                record = json.loads(raw)
                key = str(record["id"])
            except (ValueError, KeyError, TypeError):
                raise DataError(
                    f"{path}:{number}: not a unify record ({raw[:60]!r}); delete that line and rerun (its passage "
                    "will be redone), or write to a new output"
                ) from None
            if key in finished:
                log.warning("%s:%d: id %r is recorded twice; keeping the first", path, number, key)
            finished.setdefault(key, sys.intern(str(record.get("reason", "accepted"))))  # a few distinct values
            good_end += len(raw)
    return finished


def drop_records(path: Path, reason: str) -> int:
    """Rewrite ``path`` without the records whose reason is ``reason`` (atomically: a kill keeps the old file).

    A torn last line is dropped too: like the dropped records, its passage is not finished and will be redone.
    """
    if not path.exists():
        return 0
    dropped = 0
    temporary = path.with_name(path.name + ".tmp")
    with path.open("rb") as source, temporary.open("wb") as target:
        for raw in source:
            if not raw.endswith(b"\n"):
                break
            if json.loads(raw).get("reason") == reason:
                dropped += 1
            else:
                target.write(raw)
        target.flush()
        os.fsync(target.fileno())
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
