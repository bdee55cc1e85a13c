"""The order of training: priority sampling over sources, and the order-keeping row sampler for N ranks.

Plain Python and NumPy on purpose (no Lightning import): the order is the curriculum, and it must be testable
and reproducible on its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PoolOrder:
    """The training order of the epoch-expanded pool: for each position, its source and sample index."""

    source: np.ndarray  # int32, index into the list of sources
    sample: np.ndarray  # int64, index of the sample inside its source

    def __len__(self) -> int:
        return len(self.source)


class PrioritySampler:
    """One weighted random permutation, without replacement, of the epoch-expanded pool.

    Source ``s`` contributes ``floor(n_s * epochs_s)`` pool items (sample ``j`` of a repeated source is sample
    ``j mod n_s``, as in the paper's script). Each draw takes a remaining item with probability proportional
    to its source's priority (the successive-sampling / Plackett-Luce law). It is drawn in O(n log n) with
    exponential keys: item ``i`` gets ``E_i / p_i`` with ``E_i ~ Exp(1)`` and the order is the ascending sort
    of the keys; the smallest of independent exponentials with rates ``p_i`` is item ``i`` with probability
    ``p_i / sum(p)``, and by memorylessness the same holds for every later draw among the remaining items.

    The permutation depends on the seed and the pool alone (NumPy's PCG64 stream is the same on every
    platform), so every run, rank and machine computes the same order.
    """

    def __init__(self, sizes: Sequence[int], priorities: Sequence[float], epochs: Sequence[float], seed: int) -> None:
        if not (len(sizes) == len(priorities) == len(epochs)):
            raise ValueError("sizes, priorities and epochs need one entry per source")
        for i, (n, p, e) in enumerate(zip(sizes, priorities, epochs, strict=True)):
            if n < 0:
                raise ValueError(f"source {i}: size must be >= 0, got {n}")
            if not p > 0:
                raise ValueError(f"source {i}: priority must be > 0, got {p}")
            if not e >= 0:
                raise ValueError(f"source {i}: epochs must be >= 0, got {e}")
        self.sizes = [int(n) for n in sizes]
        self.priorities = [float(p) for p in priorities]
        self.epochs = [float(e) for e in epochs]
        self.seed = int(seed)

    def pool_sizes(self) -> list[int]:
        """Number of pool items of each source (its samples times its epochs, rounded down)."""
        return [int(n * e) for n, e in zip(self.sizes, self.epochs, strict=True)]

    def order(self) -> PoolOrder:
        """The full training order of the pool."""
        counts = self.pool_sizes()
        total = sum(counts)
        source = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        sample = np.concatenate(
            [np.arange(c, dtype=np.int64) % max(n, 1) for c, n in zip(counts, self.sizes, strict=True)]
            or [np.zeros(0, dtype=np.int64)]
        )
        rate = np.repeat(np.asarray(self.priorities, dtype=np.float64), counts)
        uniform = np.random.default_rng(self.seed).random(total)  # in [0, 1)
        keys = -np.log1p(-uniform) / rate  # Exp(1) / priority; log1p keeps precision for small u
        perm = np.argsort(keys, kind="stable")
        return PoolOrder(source=source[perm], sample=sample[perm])


class RowSampler:
    """Yields this rank's micro-batches of packed rows in curriculum order, resumable at any row.

    Global micro-step ``m`` takes rows ``[m*W*B, (m+1)*W*B)`` of the order (``W`` ranks, ``B`` rows per rank);
    rank ``r`` gets the ``r``-th slice of ``B``. Every global step therefore consumes the next rows exactly
    once, at any ``W``. A trailing partial global micro-step is dropped (counted in ``dropped_rows``) because
    every rank must take the same number of steps.

    ``rows_done`` is advanced by the training loop when a batch has been consumed (not when it is prefetched),
    and ``state_dict`` stores it, so a resume continues at the exact next row.
    """

    def __init__(self, num_rows: int, micro_batch_size: int, world_size: int = 1, rank: int = 0) -> None:
        if micro_batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler layout: micro_batch_size={micro_batch_size}, rank {rank}/{world_size}")
        self.num_rows = num_rows
        self.micro_batch_size = micro_batch_size
        self.world_size = world_size
        self.rank = rank
        self.rows_done = 0  # rows of the current epoch consumed by all ranks together
        self._resume_from = 0

    @property
    def global_batch_rows(self) -> int:
        """Rows consumed by one global micro-step (all ranks)."""
        return self.micro_batch_size * self.world_size

    @property
    def dropped_rows(self) -> int:
        """Rows at the end of each epoch that do not fill a global micro-step."""
        return self.num_rows % self.global_batch_rows

    def __len__(self) -> int:
        # The whole epoch, also when resuming mid-epoch: Lightning restores how many batches of the epoch were
        # done and ends the epoch when that count reaches this length.
        return self.num_rows // self.global_batch_rows

    def __iter__(self) -> Iterator[list[int]]:
        start, self._resume_from = self._resume_from, 0
        self.rows_done = start
        step_rows = self.global_batch_rows
        for first in range(start, self.num_rows - step_rows + 1, step_rows):
            mine = first + self.rank * self.micro_batch_size
            yield list(range(mine, mine + self.micro_batch_size))

    def advance(self) -> None:
        """Mark one global micro-step as consumed (called once per training batch on every rank)."""
        self.rows_done += self.global_batch_rows

    def state_dict(self) -> dict[str, int]:
        """Position in the order, in rows; independent of the number of ranks."""
        return {"rows_done": self.rows_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the current epoch at row ``rows_done`` on the next iteration."""
        rows_done = int(state["rows_done"])
        if rows_done % self.global_batch_rows:
            raise ValueError(
                f"cannot resume at row {rows_done}: it is not a multiple of micro_batch_size x devices = "
                f"{self.global_batch_rows}; resume with a layout whose global micro-batch divides it"
            )
        finished = rows_done + self.global_batch_rows > self.num_rows  # saved at the end of an epoch
        self._resume_from = 0 if finished else rows_done
        self.rows_done = self._resume_from
