"""Lightning glue for the packed rows: in-order, distributed, resumable loading and batch assembly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from huatuo.core.logs import get_logger
from huatuo.core.template import IGNORE_INDEX
from huatuo.data.packing import position_ids
from huatuo.data.prepare import Prepared
from huatuo.data.sampler import RowSampler

log = get_logger(__name__)


class PackedRowsDataset(Dataset):
    """Random access to prepared rows (memory-mapped Arrow)."""

    def __init__(self, path: str) -> None:
        from datasets import load_from_disk

        self.rows = load_from_disk(path).with_format("numpy")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: list[int]) -> list[dict[str, np.ndarray]]:
        batch = self.rows[indices]
        keys = ("input_ids", "labels", "doc_lengths", "doc_sources")
        return [{k: batch[k][i] for k in keys} | {"row": indices[i]} for i in range(len(indices))]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.__getitems__([index])[0]


class RowCollator:
    """Pads rows and builds labels, position ids (restarting per document when isolating) and source ids."""

    def __init__(
        self,
        pad_id: int,
        max_len: int,
        isolate: bool,
        pad_to: str,
        step_normalizer: np.ndarray,
        group: int,
        n_sources: int,
    ):
        self.pad_id = pad_id
        self.n_sources = n_sources
        self.max_len = max_len
        self.isolate = isolate
        self.pad_to = pad_to
        self.step_normalizer = step_normalizer
        self.group = group

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = self.max_len if self.pad_to == "max_len" else max(len(item["input_ids"]) for item in items)
        n = len(items)
        input_ids = np.full((n, length), self.pad_id, dtype=np.int64)
        labels = np.full((n, length), IGNORE_INDEX, dtype=np.int64)
        positions = np.zeros((n, length), dtype=np.int64)
        sources = np.full((n, length), -1, dtype=np.int64)
        for i, item in enumerate(items):
            k = len(item["input_ids"])
            input_ids[i, :k] = item["input_ids"]
            labels[i, :k] = item["labels"]
            positions[i] = position_ids(item["doc_lengths"], length, self.isolate)
            sources[i, :k] = np.repeat(item["doc_sources"].astype(np.int64), item["doc_lengths"])
        rows = np.asarray([item["row"] for item in items], dtype=np.int64)
        docs = np.bincount(np.concatenate([item["doc_sources"] for item in items]), minlength=self.n_sources)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(positions),
            "source_ids": torch.from_numpy(sources),
            "rows": torch.from_numpy(rows),
            "source_docs": torch.from_numpy(docs.astype(np.int64)),
            # supervised tokens of the whole optimizer step (all micro-batches, all ranks): the loss denominator
            "loss_normalizer": torch.tensor(float(self.step_normalizer[rows[0] // self.group])),
        }


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the order is saved in Lightning checkpoints (via its RowSampler).

    Lightning 2.6 saves this state but does not load it back when ``configure_optimizers`` asked for
    ``trainer.estimated_stepping_batches`` (Lightning issue #20550), so ``PackedDataModule`` restores the
    position itself; loading the same position twice is harmless.
    """

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)


class PackedDataModule(L.LightningDataModule):
    """Feeds prepared rows in curriculum order; ``prepare`` builds or reuses the cache (rank zero first)."""

    def __init__(
        self,
        prepare: Callable[[], Prepared],
        micro_batch_size: int,
        max_len: int,
        pad_id: int,
        isolate: bool = True,
        pad_to: str = "max_len",
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if pad_to not in ("max_len", "longest"):
            raise ValueError(f"data.pad_to={pad_to!r}: use max_len (static shapes) or longest")
        self._prepare = prepare
        self.micro_batch_size = micro_batch_size
        self.max_len = max_len
        self.pad_id = pad_id
        self.isolate = isolate
        self.pad_to = pad_to
        self.num_workers = num_workers
        self.prepared: Prepared | None = None
        self.dataset: PackedRowsDataset | None = None
        self.sampler: RowSampler | None = None
        self._sampler_state: dict[str, int] | None = None  # a resumed position waiting for the sampler

    def state_dict(self) -> dict[str, Any]:
        """The position in the order (saved in every checkpoint under the data module's name)."""
        return {"sampler": self.sampler.state_dict()} if self.sampler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved position: now if the loader exists, else when ``train_dataloader`` builds it."""
        self._sampler_state = state.get("sampler")
        if self.sampler is not None and self._sampler_state is not None:
            self.sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None

    def prepare_data(self) -> None:
        self.prepared = self._prepare()

    def setup(self, stage: str) -> None:
        if self.prepared is None:  # ranks that did not prepare: a cache hit on the folder rank zero wrote
            self.prepared = self._prepare()
        if self.dataset is None:
            self.dataset = PackedRowsDataset(str(self.prepared.dataset_dir))

    @property
    def source_names(self) -> list[str]:
        """Names of the sources, in the index order used by ``source_ids`` in batches."""
        assert self.prepared is not None, "call setup() first"
        return self.prepared.source_names

    def _layout(self) -> tuple[int, int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0, 1
        return trainer.world_size, trainer.global_rank, trainer.accumulate_grad_batches

    def train_dataloader(self) -> DataLoader:
        assert self.dataset is not None, "call setup() first"
        world, rank, accumulate = self._layout()
        self.sampler = RowSampler(len(self.dataset), self.micro_batch_size, world, rank)
        if self._sampler_state is not None:  # once: a loader rebuilt later starts its epoch from the top
            self.sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
        if self.sampler.dropped_rows:
            log.info(
                "%d trailing rows per epoch do not fill a global micro-batch and are skipped", self.sampler.dropped_rows
            )
        group = self.sampler.global_batch_rows * accumulate
        usable = len(self.dataset) - self.sampler.dropped_rows
        supervised = np.asarray(self.dataset.rows["n_supervised"][:usable], dtype=np.float64)
        starts = np.arange(0, max(usable, 1), group)
        normalizer = np.add.reduceat(supervised, starts) if usable else np.ones(1)
        collate = RowCollator(
            self.pad_id,
            self.max_len,
            self.isolate,
            self.pad_to,
            np.maximum(normalizer, 1),
            group,
            len(self.source_names),
        )
        loader = ResumableLoader(
            self.dataset,
            batch_sampler=self.sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=False,
        )
        return loader

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Counted when a batch reaches the step (after prefetching), so a checkpoint holds the exact position.
        if self.trainer is not None and self.trainer.training and self.sampler is not None:
            self.sampler.advance()
        return batch
