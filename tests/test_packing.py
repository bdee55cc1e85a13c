"""Packing: the paper's greedy windows reproduced exactly; best fit keeps order and fills rows."""

from __future__ import annotations

import numpy as np
import pytest

from huatuo.data.packing import pack_best_fit, pack_greedy, position_ids


def paper_greedy(lengths: list[int], max_len: int, window: int) -> list[list[int]]:
    """The loop of the paper's data_process.py, on lengths: next-fit per window, flush at window end."""
    rows = []
    for start in range(0, len(lengths), window):
        current: list[int] = []
        fill = 0
        for i in range(start, min(start + window, len(lengths))):
            if fill + lengths[i] <= max_len:
                current.append(i)
                fill += lengths[i]
            else:
                rows.append(current)
                current, fill = [i], lengths[i]
        rows.append(current)
    return rows


def rows_of(packed) -> list[list[int]]:
    return [packed.row(r).tolist() for r in range(len(packed))]


@pytest.mark.parametrize("seed", range(5))
def test_greedy_is_the_papers_packing(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, size=1000).tolist()
    assert rows_of(pack_greedy(lengths, 512, window=64)) == paper_greedy(lengths, 512, 64)


@pytest.mark.parametrize("open_rows", [1, 4, 8])
def test_best_fit_rows_are_valid_and_order_is_kept_within_open_rows(open_rows):
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(20, 200, 800), rng.integers(600, 1024, 200)])
    rng.shuffle(lengths)
    packed = pack_best_fit(lengths, 1024, open_rows=open_rows)
    rows = rows_of(packed)
    assert sorted(d for row in rows for d in row) == list(range(len(lengths)))
    assert all(sum(lengths[d] for d in row) <= 1024 for row in rows)
    assert all(row == sorted(row) for row in rows)
    # order is kept locally: no later document lands more than ~open_rows rows before an earlier one
    row_of = np.empty(len(lengths), dtype=int)
    for r, row in enumerate(rows):
        row_of[row] = r
    later_min = np.minimum.accumulate(row_of[::-1])[::-1]
    assert (row_of - later_min).max() <= 2 * open_rows - 1


def test_best_fit_fills_rows_better_than_greedy():
    rng = np.random.default_rng(1)
    lengths = np.where(rng.random(5000) < 0.8, rng.integers(100, 600, 5000), rng.integers(1500, 4096, 5000))
    fill = lambda packed: lengths.sum() / (len(packed) * 4096)  # noqa: E731
    greedy, best = fill(pack_greedy(lengths, 4096, 256)), fill(pack_best_fit(lengths, 4096, 8))
    assert best > 0.97 and best > greedy + 0.03


def test_position_ids_restart_per_document_only_when_isolating():
    assert position_ids([3, 2], 7, isolate=True).tolist() == [0, 1, 2, 0, 1, 0, 1]
    assert position_ids([3, 2], 7, isolate=False).tolist() == list(range(7))
    assert position_ids([4], 4, isolate=True).tolist() == [0, 1, 2, 3]


def test_samples_longer_than_max_len_are_refused():
    with pytest.raises(ValueError, match="max_len"):
        pack_greedy([10, 600], 512)
