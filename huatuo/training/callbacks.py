"""Callbacks of a training run: the row ledger (which packed rows every step consumed), the prepare report, and the
progress bar."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.loggers import WandbLogger

from huatuo.data.prepare import log_to_wandb
from huatuo.training.tracking import remember_wandb_run

ROWS_FILE = "rows.jsonl"


class RowLedger(Callback):
    """Appends the packed rows of every global micro-batch to ``<run dir>/rows.jsonl`` (data provenance).

    One line per micro-batch: epoch, position in the epoch's order (rows), optimizer step, and the row ids of
    every rank. A resumed run first drops the lines from the resumed position on, so the file always lists
    each consumed batch once, in order.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = None

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        sampler = trainer.datamodule.sampler
        resumed = (trainer.current_epoch, sampler.rows_done if sampler is not None else 0)
        kept = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                entry = json.loads(line)
                if (entry["epoch"], entry["position"]) < resumed:
                    kept.append(line)
        self.path.write_text("".join(f"{line}\n" for line in kept))
        self._handle = self.path.open("a")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rows = trainer.strategy.all_gather(batch["rows"])  # (world, micro) on every rank: a collective
        if self._handle is None:
            return
        sampler = trainer.datamodule.sampler
        entry = {
            "epoch": trainer.current_epoch,
            "position": sampler.rows_done - sampler.global_batch_rows,
            "step": trainer.global_step,
            "rows": rows.reshape(-1).tolist(),
        }
        self._handle.write(json.dumps(entry) + "\n")
        self._handle.flush()

    def on_train_end(self, trainer, pl_module) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class PrepareReport(Callback):
    """Sends the prepare stage's statistics and schedule plot to W&B once the data is set up (rank zero)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                remember_wandb_run(logger, self.run_dir)
                log_to_wandb(trainer.datamodule.prepared, logger)


class EpochProgressBar(RichProgressBar):
    """Lightning's rich progress bar, with epochs counted from one: ``Epoch 1/2`` then ``Epoch 2/2``.

    (Lightning's own shows the zero-based index over the last index, ``Epoch 0/1`` then ``Epoch 1/1``, which reads
    as one epoch for a two-epoch run.)
    """

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            description += f"/{self.trainer.max_epochs}"
        return f"{description:{len(self.validation_description)}}"
