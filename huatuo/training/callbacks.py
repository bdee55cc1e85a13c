"""Callbacks of a training run: the row ledger (which packed rows every step consumed), the prepare report, and the
progress bar."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.loggers import WandbLogger

from huatuo.core.jsonl import JsonlAppender, read_jsonl, write_jsonl
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
        self._out: JsonlAppender | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        sampler = trainer.datamodule.sampler
        resumed = (trainer.current_epoch, sampler.rows_done if sampler is not None else 0)
        if self.path.is_file():
            # a run killed mid-write leaves a torn last line: its batch is redone, so the line goes
            entries = [entry for _, entry in read_jsonl(self.path, allow_torn_tail=True)]
            write_jsonl([e for e in entries if (e["epoch"], e["position"]) < resumed], self.path)
        self._out = JsonlAppender(self.path, fsync=False)  # one whole line per write: a kill tears the last at most

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rows = trainer.strategy.all_gather(batch["rows"])  # (world, micro) on every rank: a collective
        if self._out is None:
            return
        sampler = trainer.datamodule.sampler
        entry = {
            "epoch": trainer.current_epoch,
            "position": sampler.rows_done - sampler.global_batch_rows,
            "step": trainer.global_step,
            "rows": rows.reshape(-1).tolist(),
        }
        self._out.append(entry)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


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
