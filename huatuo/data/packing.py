"""Packing tokenized samples, taken in training order, into rows of at most ``max_len`` tokens.

Both packers see only the lengths, in order, and return rows as a CSR pair: ``docs`` (positions in the order)
and ``row_offsets`` (row ``r`` holds ``docs[row_offsets[r]:row_offsets[r+1]]``, in that order).

- ``greedy`` is the paper's scheme: windows of ``window`` samples; inside a window, next-fit (append while the
  row stays within ``max_len``, else close it); the last row of every window is closed (and later padded).
- ``best_fit`` streams samples into ``open_rows`` open rows; each goes into the fullest open row it fits in;
  when none fits, the oldest open row is emitted to make room; a row that becomes exactly full is emitted at once,
  and a row is emitted at the latest when ``open_rows`` newer rows have been opened. Order is kept to within about
  ``2 * open_rows`` rows, and nothing is padded at window ends.

Position ids for attention isolation (every document restarts at 0) are built per batch from the document
lengths: see ``position_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

PackingMethod = Literal["greedy", "best_fit"]


@dataclass(frozen=True)
class PackedRows:
    """Rows as CSR: ``docs[row_offsets[r]:row_offsets[r+1]]`` are the order positions in row ``r``."""

    docs: np.ndarray
    row_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.row_offsets) - 1

    def row(self, index: int) -> np.ndarray:
        """Order positions of the documents in row ``index``."""
        return self.docs[self.row_offsets[index] : self.row_offsets[index + 1]]


def _check(lengths: np.ndarray, max_len: int) -> None:
    if len(lengths) and (lengths.min() < 1 or lengths.max() > max_len):
        raise ValueError(f"every sample must have 1..max_len={max_len} tokens (truncate first)")


def pack_greedy(lengths: Sequence[int] | np.ndarray, max_len: int, window: int = 256) -> PackedRows:
    """The paper's packing: next-fit inside windows of ``window`` samples taken in order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    _check(lengths, max_len)
    offsets = [0]
    fill = 0
    for i, n in enumerate(lengths.tolist()):
        if i % window == 0 or fill + n > max_len:
            if i:
                offsets.append(i)
            fill = 0
        fill += n
    if len(lengths):
        offsets.append(len(lengths))
    return PackedRows(np.arange(len(lengths), dtype=np.int64), np.asarray(offsets, dtype=np.int64))


def pack_best_fit(lengths: Sequence[int] | np.ndarray, max_len: int, open_rows: int = 8) -> PackedRows:
    """Order-keeping best fit over a few open rows (see the module docstring)."""
    if open_rows < 1:
        raise ValueError(f"open_rows must be >= 1, got {open_rows}")
    lengths = np.asarray(lengths, dtype=np.int64)
    _check(lengths, max_len)
    rows: list[list[int]] = []  # open rows, oldest first
    fills: list[int] = []
    born: list[int] = []  # creation number of each open row
    created = 0
    emitted: list[list[int]] = []
    for i, n in enumerate(lengths.tolist()):
        best = -1
        best_fill = -1
        for j, f in enumerate(fills):
            if f + n <= max_len and f > best_fill:
                best, best_fill = j, f
        if best < 0:
            # Make room, and bound the reordering: a row is emitted at the latest when open_rows newer rows exist,
            # even when rows emitted full left free slots.
            while rows and (len(rows) == open_rows or born[0] <= created - open_rows):
                emitted.append(rows.pop(0))
                fills.pop(0)
                born.pop(0)
            rows.append([i])
            fills.append(n)
            born.append(created)
            created += 1
            best = len(rows) - 1
        else:
            rows[best].append(i)
            fills[best] += n
        if fills[best] == max_len:
            emitted.append(rows.pop(best))
            fills.pop(best)
            born.pop(best)
    emitted.extend(rows)
    docs = np.fromiter((d for row in emitted for d in row), dtype=np.int64, count=len(lengths))
    offsets = np.zeros(len(emitted) + 1, dtype=np.int64)
    np.cumsum([len(row) for row in emitted], out=offsets[1:])
    return PackedRows(docs, offsets)


def pack(lengths: Sequence[int] | np.ndarray, max_len: int, method: PackingMethod, window: int, open_rows: int):
    """Dispatch to the packer named in the config."""
    if method == "greedy":
        return pack_greedy(lengths, max_len, window)
    if method == "best_fit":
        return pack_best_fit(lengths, max_len, open_rows)
    raise ValueError(f"unknown packing method {method!r}: use 'greedy' (the paper's) or 'best_fit'")


def position_ids(doc_lengths: Sequence[int], row_len: int, isolate: bool) -> np.ndarray:
    """Position ids of one padded row: restarting at 0 for every document when ``isolate``, else 0..row_len-1.

    With isolation the padding after the last document counts as one more document, so a model that derives
    document boundaries from position resets (transformers' packed-sequence masks, the native Baichuan2 ALiBi
    bias) never lets a real token attend to padding or to another document.
    """
    if not isolate:
        return np.arange(row_len, dtype=np.int64)
    pieces = [np.arange(n, dtype=np.int64) for n in doc_lengths]
    used = int(sum(doc_lengths))
    if used < row_len:
        pieces.append(np.arange(row_len - used, dtype=np.int64))
    return np.concatenate(pieces)[:row_len]
