"""Writing packed rows as an Arrow dataset (the ``datasets`` ``save_to_disk`` layout) a chunk at a time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from huatuo.data.packing import PackedRows
from huatuo.data.sampler import PoolOrder
from huatuo.data.tokens import TokenStore

WRITE_CHUNK = 1024  # packed rows per Arrow record batch
ROW_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("doc_lengths", pa.list_(pa.int32())),  # tokens of each document in the row, in order
        ("doc_sources", pa.list_(pa.int16())),  # source index (into sources.json) of each document, in order
        ("doc_samples", pa.list_(pa.int64())),  # index of each document inside its source
        ("n_tokens", pa.int32()),
        ("n_supervised", pa.int32()),
    ]
)


def write_rows(
    path: Path, rows: PackedRows, order: PoolOrder, global_sample: np.ndarray, tokens: TokenStore
) -> tuple[np.ndarray, np.ndarray]:
    """Write the packed rows as an Arrow stream file; returns per-row token and supervised-token counts."""
    lengths = tokens.lengths
    row_tokens = np.add.reduceat(lengths[global_sample[rows.docs]], rows.row_offsets[:-1]) if len(rows) else []
    row_tokens = np.asarray(row_tokens, dtype=np.int64)
    row_supervised = np.asarray(
        np.add.reduceat(tokens.supervised[global_sample[rows.docs]], rows.row_offsets[:-1]) if len(rows) else [],
        dtype=np.int64,
    )
    progress = tqdm(total=len(rows), desc="write rows", unit=" rows", disable=None, mininterval=1.0, leave=False)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, ROW_SCHEMA) as writer:
        for start in range(0, len(rows), WRITE_CHUNK):
            stop = min(start + WRITE_CHUNK, len(rows))
            lo, hi = rows.row_offsets[start], rows.row_offsets[stop]
            positions = rows.docs[lo:hi]
            samples = global_sample[positions]
            doc_lengths = lengths[samples]
            flat_ids, flat_labels = tokens.read(samples)
            token_offsets = np.zeros(stop - start + 1, dtype=np.int32)
            np.cumsum(row_tokens[start:stop], out=token_offsets[1:])
            doc_offsets = pa.array(rows.row_offsets[start : stop + 1] - lo, type=pa.int32())
            batch = pa.record_batch(
                [
                    pa.ListArray.from_arrays(pa.array(token_offsets), pa.array(flat_ids)),
                    pa.ListArray.from_arrays(pa.array(token_offsets), pa.array(flat_labels)),
                    pa.ListArray.from_arrays(doc_offsets, pa.array(doc_lengths.astype(np.int32))),
                    pa.ListArray.from_arrays(doc_offsets, pa.array(order.source[positions].astype(np.int16))),
                    pa.ListArray.from_arrays(doc_offsets, pa.array(order.sample[positions])),
                    pa.array(row_tokens[start:stop].astype(np.int32)),
                    pa.array(row_supervised[start:stop].astype(np.int32)),
                ],
                schema=ROW_SCHEMA,
            )
            writer.write_batch(batch)
            progress.update(stop - start)
    progress.close()
    return row_tokens, row_supervised


def save_dataset(rows_file: Path, target: Path) -> None:
    """Turn an Arrow stream of rows into a ``datasets`` ``save_to_disk`` folder without copying the rows.

    ``datasets`` writes the folder's metadata for a one-row slice; the data file it names is then replaced by the
    full stream (the metadata holds the schema, not the row count). Copying a large dataset through
    ``save_to_disk`` would read every row back and double the disk traffic.
    """
    import datasets

    with pa.memory_map(str(rows_file)) as source:
        head = pa.ipc.open_stream(source).read_next_batch().slice(0, 1)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bar()
    try:
        datasets.Dataset(pa.Table.from_batches([head])).save_to_disk(str(target))
    finally:
        if bars:
            datasets.enable_progress_bar()
    state = json.loads((target / "state.json").read_text())
    (data_file,) = [entry["filename"] for entry in state["_data_files"]]
    os.replace(rows_file, target / data_file)
