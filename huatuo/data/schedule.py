"""The curriculum the priorities make: which source's tokens come when in training, as numbers and as a plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from huatuo.data.packing import PackedRows
from huatuo.data.sampler import PoolOrder

SCHEDULE_BINS = 50  # bins of the schedule stored in stats.json


def schedule_counts(
    rows: PackedRows, order: PoolOrder, doc_tokens: np.ndarray, n_sources: int, bins: int
) -> np.ndarray:
    """Tokens of each source in each of ``bins`` equal slices of training progress (by row): ``(bins, sources)``."""
    row_of_doc = np.repeat(np.arange(len(rows)), np.diff(rows.row_offsets))
    bin_of_doc = (row_of_doc * bins) // max(len(rows), 1)
    counts = np.zeros((bins, n_sources), dtype=np.float64)
    np.add.at(counts, (bin_of_doc, order.source[rows.docs]), doc_tokens[rows.docs])
    return counts


def schedule_shares(
    rows: PackedRows, order: PoolOrder, doc_tokens: np.ndarray, n_sources: int, bins: int
) -> np.ndarray:
    """Share of each source's tokens in each of ``bins`` equal slices of training progress (by row)."""
    counts = schedule_counts(rows, order, doc_tokens, n_sources, bins)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _smooth(counts: np.ndarray, width: float) -> np.ndarray:
    """Gaussian-weighted moving sum over about ``width`` bins along axis 0 (same length)."""
    if width <= 1:
        return counts
    sigma = width / 2
    offsets = np.arange(-int(3 * sigma), int(3 * sigma) + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    half, bins = len(offsets) // 2, counts.shape[0]  # "full" then the centre: right even when the kernel is longer
    return np.stack([np.convolve(counts[:, s], kernel)[half : half + bins] for s in range(counts.shape[1])], axis=1)


def plot_schedule(counts: np.ndarray, labels: Sequence[str], path: Path, title: str, documents: int) -> None:
    """The curriculum: each source's smoothed share of tokens along training (top) and how much of it was seen.

    Shares are ratios of Gaussian-weighted sums over a window of ~4% of training, widened on small runs until
    it spans about 50 documents, so single rows do not make the picture jagged; the lower panel is each
    source's cumulative fraction of its own tokens, the clearest view of "early" versus "late".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins, n = counts.shape
    x = (np.arange(bins) + 0.5) / max(bins, 1) * 100
    width = max(bins / 25, 50 * bins / max(documents, 1))
    smoothed = _smooth(counts, width)
    totals = smoothed.sum(axis=1, keepdims=True)
    shares = np.divide(smoothed, totals, out=np.zeros_like(smoothed), where=totals > 0) * 100
    seen = np.cumsum(counts, axis=0)
    seen = np.divide(seen, seen[-1:], out=np.zeros_like(seen), where=seen[-1:] > 0) * 100
    colors = plt.get_cmap("tab10" if n <= 10 else "tab20")(np.arange(n) % (10 if n <= 10 else 20))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), dpi=110, sharex=True, height_ratios=[3, 2])
    top.stackplot(x, shares.T, labels=labels, colors=colors, alpha=0.9, linewidth=0)
    top.set(xlim=(0, 100), ylim=(0, 100), ylabel="share of tokens (%)", title=title)
    top.text(
        0.99,
        0.02,
        f"smoothed over {100 * width / max(bins, 1):.0f}% of training",
        transform=top.transAxes,
        ha="right",
        va="bottom",
        fontsize=8,
        color="white",
    )
    top.grid(axis="y", alpha=0.3)
    for s in range(n):
        bottom.plot(x, seen[:, s], color=colors[s], linewidth=1.8)
    bottom.set(xlim=(0, 100), ylim=(0, 101), xlabel="training progress (% of packed rows)")
    bottom.set_ylabel("share of the source\nalready seen (%)")
    bottom.grid(alpha=0.3)
    top.legend(loc="center left", bbox_to_anchor=(1.01, 0.3), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def order_displacement(rows: PackedRows) -> int:
    """How many rows the packing moved a document ahead of an earlier one (0 = order kept exactly)."""
    if len(rows.docs) == 0:
        return 0
    row_of_position = np.empty(len(rows.docs), dtype=np.int64)
    row_of_position[rows.docs] = np.repeat(np.arange(len(rows)), np.diff(rows.row_offsets))
    later_min = np.minimum.accumulate(row_of_position[::-1])[::-1]
    return int((row_of_position - later_min).max())
