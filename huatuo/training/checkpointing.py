"""Checkpoints that survive a crash, and finding the one to resume from.

Every checkpoint is written atomically: a file or folder is written under a temporary name and renamed into place,
so a process killed in the middle of a save leaves the previous checkpoints intact and loadable. ``resume=auto``
picks the newest loadable checkpoint of the run folder by reading only its metadata.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from huatuo.core.errors import ConfigError
from huatuo.core.logs import get_logger

log = get_logger(__name__)

PARTIAL_SUFFIX = ".partial"  # unfinished checkpoint writes; resume=auto never picks them


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(written: Path, target: Path) -> None:
    """Move a finished checkpoint (file or folder) onto ``target``, never leaving ``target`` half-written.

    A file replaces a file in one ``os.replace``. A folder cannot replace a non-empty folder in one call, so the
    old one is renamed aside first; a kill between the two renames loses ``target`` but no other checkpoint.
    """
    if target.is_dir() and not target.is_symlink():
        aside = target.with_name(f".{target.name}.old")
        _remove(aside)
        os.replace(target, aside)
        os.replace(written, target)
        _remove(aside)
    else:
        os.replace(written, target)
    _fsync_dir(target.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Torch checkpoint files written to a temporary name, flushed to disk, then renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}{PARTIAL_SUFFIX}-{os.getpid()}")
        try:
            with partial.open("wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            replace_atomically(partial, target)
        finally:
            if partial.exists():
                partial.unlink()


def save_folder_atomically(strategy, save: Callable[[Path], None], filepath) -> None:
    """Run a collective folder save into a temporary folder, then let rank zero rename it into place."""
    target = Path(strategy.broadcast(str(filepath)))
    partial = target.with_name(f".{target.name}{PARTIAL_SUFFIX}")
    if strategy.is_global_zero:
        _remove(partial)
    strategy.barrier("checkpoint_partial_clean")
    save(partial)
    strategy.barrier("checkpoint_written")
    if strategy.is_global_zero:
        replace_atomically(partial, target)
    strategy.barrier("checkpoint_renamed")


def checkpoint_step(path: Path) -> int | None:
    """The optimizer step a checkpoint was saved at, or ``None`` when it is missing, partial or unreadable.

    Reads only the metadata: a memory-mapped ``torch.load`` for files, the small ``meta.pt`` of FSDP/FSDP2
    sharded folders, the ``latest`` tag of DeepSpeed folders.
    """
    try:
        if path.is_file():
            return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["global_step"])
        if (path / "meta.pt").is_file() and (path / ".metadata").is_file():
            return int(torch.load(path / "meta.pt", map_location="cpu", weights_only=False)["global_step"])
        if (path / "latest").is_file():
            tag = (path / "latest").read_text().strip()
            states = sorted((path / tag).glob("*model_states.pt"))
            if states:
                client = torch.load(states[0], map_location="cpu", mmap=True, weights_only=False)
                return int(client["global_step"])
    except Exception as err:  # any failure means "not loadable": resume=auto moves on to an older checkpoint
        log.warning("skipping checkpoint %s: %s", path, err)
    return None


def find_checkpoint(resume: str | None, run_dir: Path) -> tuple[str | None, int]:
    """The checkpoint to resume from and its step: ``auto`` picks the newest loadable in ``<run dir>/checkpoints``."""
    if resume in (None, "", "null"):
        return None, 0
    if resume != "auto":
        step = checkpoint_step(Path(resume))
        if step is None:
            raise ConfigError(f"resume={resume!r} is not a loadable checkpoint; use auto, null or another .ckpt")
        return str(resume), step
    folder = run_dir / "checkpoints"
    candidates = []
    for path in sorted(folder.glob("*.ckpt")) if folder.is_dir() else []:
        if PARTIAL_SUFFIX in path.name or path.name.startswith("."):
            continue
        step = checkpoint_step(path)
        if step is not None:
            candidates.append((step, path.stat().st_mtime, path))
    if not candidates:
        log.info("resume=auto: no loadable checkpoint in %s, starting fresh", folder)
        return None, 0
    step, _, path = max(candidates)
    log.info("resume=auto: resuming from %s (step %d)", path, step)
    return str(path), step


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, plus ``last.ckpt`` at the final step when the run stops between periodic saves.

    (Lightning writes ``last.ckpt`` at train end only if none was written yet, so a run stopped by ``max_steps``
    would keep a stale one and ``resume=auto`` would redo its last steps.)
    """

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)
