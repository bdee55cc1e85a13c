"""Experiment tracking: CSV and W&B loggers that survive a resume, the prepare stage's report, and a reader for
offline W&B run files.

W&B goes online when credentials exist and offline otherwise, never prompting. A resumed run continues its
``metrics.csv`` (Lightning's CSV logger would delete it) and its W&B run (same id, ``resume="allow"``).
"""

from __future__ import annotations

import csv
import json
import netrc
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from huatuo.core.errors import ConfigError
from huatuo.core.logs import get_logger

log = get_logger(__name__)

WANDB_ID_FILE = "wandb_run_id"


def wandb_credentials_present() -> bool:
    """True when W&B can authenticate without asking: WANDB_API_KEY or a netrc entry for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
        return netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(
    project: str,
    save_dir: str,
    name: str | None = None,
    mode: Literal["auto", "online", "offline"] = "auto",
    tags: list[str] | None = None,
    resume: str | None = None,
):
    """Lightning's WandbLogger in ``online`` mode when credentials exist, else ``offline`` (``mode=auto``).

    The run id is kept in ``<save_dir>/wandb_run_id``; with ``resume`` set, a restarted run logs into the same
    W&B run instead of opening a new one.
    """
    from lightning.pytorch.loggers import WandbLogger

    if mode not in ("auto", "online", "offline"):
        raise ConfigError(f"logger.wandb.mode={mode!r}: use auto, online or offline")
    offline = mode == "offline" or (mode == "auto" and not wandb_credentials_present())
    os.environ.setdefault("WANDB_SILENT", "true")
    folder = Path(save_dir)
    folder.mkdir(parents=True, exist_ok=True)
    id_file = folder / WANDB_ID_FILE
    extra: dict[str, Any] = {}
    if resume not in (None, "", "null") and id_file.is_file():
        extra = {"id": id_file.read_text().strip(), "resume": "allow"}
    logger = WandbLogger(
        project=project,
        name=name or folder.name,
        save_dir=save_dir,
        offline=offline,
        tags=list(tags or []),
        **extra,
    )
    return logger


def remember_wandb_run(logger, save_dir: str | Path) -> None:
    """Write the W&B run id next to the run (rank zero, after the run started) so a resume can reuse it."""
    Path(save_dir, WANDB_ID_FILE).write_text(str(logger.experiment.id))


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued instead of deleted."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with path.open(newline="") as handle:
                self.metrics_keys = sorted(csv.DictReader(handle).fieldnames or [])

    def drop_from_step(self, step: int) -> int:
        """Delete rows logged at ``step`` or later (they are logged again after a resume); returns rows kept."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return 0
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            rows = [row for row in reader if row.get("step") not in (None, "") and int(row["step"]) < step]
        partial = path.with_name(path.name + ".partial")
        with partial.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(partial, path)
        return len(rows)


class ResumableCSVLogger(CSVLogger):
    """CSV metrics in ``<save_dir>/metrics.csv`` that a resumed run continues (Lightning's would start over)."""

    @property
    def experiment(self) -> _ContinuingWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment

    def resume_at(self, step: int) -> None:
        """Forget rows from ``step`` on: the resumed run logs them again."""
        kept = self.experiment.drop_from_step(step)
        log.info("metrics.csv continues after step %d (%d rows kept)", step, kept)


def csv_logger(save_dir: str, name: str = "", version: str = "", flush_logs_every_n_steps: int = 100):
    """A CSV logger writing ``<save_dir>/metrics.csv`` that continues across resumes."""
    return ResumableCSVLogger(
        save_dir=save_dir, name=name, version=version, flush_logs_every_n_steps=flush_logs_every_n_steps
    )


@dataclass
class OfflineRun:
    """What a W&B run file holds: the logged rows, the run config and the final summary."""

    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    finished: bool = False  # the run's exit record is written (wandb writes the file asynchronously)


def _records(data: bytes) -> list[bytes]:
    """The payloads of a LevelDB-style log: 32 KiB blocks of records with a 7-byte header (crc, length, type).

    A file that wandb is still writing ends in a record cut short (or in zeroes not yet written): reading stops
    there, so a live run reads as the complete records so far.
    """
    block, header = 32768, 7
    position, pending, payloads = header, b"", []  # the file starts with its own 7-byte header
    while position + header <= len(data):
        if block - position % block < header:  # too little room left in the block: the rest is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + header])
        if kind not in (1, 2, 3, 4) or position + header + length > len(data):
            break  # not written yet (a torn last record)
        chunk = data[position + header : position + header + length]
        position += header + length
        if kind == 1:  # FULL
            payloads.append(chunk)
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            payloads.append(pending + chunk)
            pending = b""
    return payloads


def _set(target: dict[str, Any], item) -> None:
    """Store one protobuf item; nested keys (a logged dict, e.g. an image's fields) become nested dicts."""
    path = [item.key] if item.key else list(item.nested_key)
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = json.loads(item.value_json)


def read_wandb_run(run_file: str | Path) -> OfflineRun:
    """Read an offline (or not yet synced) W&B run file, ``<run dir>/wandb/*/run-<id>.wandb``, without network.

    Each record is a ``wandb_internal_pb2.Record`` protobuf (wandb's own schema): ``history`` rows from
    ``run.log``, ``config`` updates and ``summary`` updates.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(run_file).read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{run_file} is not a W&B run file (no :W&B header)")
    run = OfflineRun()
    for payload in _records(data):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, item)
            run.history.append(row)
        elif kind in ("config", "run"):
            for item in record.config.update if kind == "config" else record.run.config.update:
                _set(run.config, item)
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary, item)
        elif kind == "exit":
            run.finished = True
    run.config = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in run.config.items()}
    return run
