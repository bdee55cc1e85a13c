"""Reading and tokenizing every source into one flat pair of token files (ids, labels) with per-sample offsets.

Memory stays flat at any corpus size: conversations stream from the files in chunks, every chunk is tokenized in
one Rust call while the next chunk is read, and tokens go straight to disk; only the per-sample lengths stay in
memory. Rows are later read back with positioned reads (``TokenStore.read``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from huatuo.core.errors import DataError
from huatuo.data.contamination import NgramIndex
from huatuo.data.encoder import ConversationEncoder, EncodedBatch
from huatuo.data.settings import PackingSettings
from huatuo.data.sources import MAX_EXAMPLES, LoadReport, SourceSpec, forget_parsed_json, iter_conversations

DECONTAMINATED = "decontaminated"  # the skip reason of documents that share an n-gram with an exam question
ENCODE_CHUNK = 1024  # conversations per tokenizer call: enough to keep every core busy, small in memory


@dataclass
class TokenStore:
    """Every kept sample of every source, tokenized, in one flat pair of files."""

    ids_path: Path
    labels_path: Path
    offsets: np.ndarray  # int64, samples + 1: sample g is tokens[offsets[g]:offsets[g+1]]
    supervised: np.ndarray  # int64 per sample
    source_base: np.ndarray  # int64, sources + 1: source s holds samples source_base[s]:source_base[s+1]
    reports: list[LoadReport]
    truncated: list[int]  # samples longer than max_len, per source
    truncated_at: list[list[str]]  # where the first few of them are, per source

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def read(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ids and labels of these samples, concatenated in the given order.

        One positioned read per sample. A memory map would be simpler, but the kernel maps whole neighbourhoods of
        the file on every fault, so scattered reads pull most of the file into our resident memory (gigabytes at
        1M samples); ``pread`` costs about 2 us per sample and keeps memory flat.
        """
        starts, ends = self.offsets[samples] * 4, self.offsets[samples + 1] * 4  # bytes: int32 tokens
        out = []
        for path in (self.ids_path, self.labels_path):
            values = np.empty(int((ends - starts).sum()) // 4, dtype=np.int32)
            view, at = memoryview(values).cast("B"), 0
            fd = os.open(path, os.O_RDONLY)
            try:
                for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
                    if os.preadv(fd, [view[at : at + end - start]], start) != end - start:
                        raise OSError(f"{path}: short read at byte {start}; was the cache folder modified?")
                    at += end - start
            finally:
                os.close(fd)
            out.append(values)
        return out[0], out[1]


def _chunks(items: Iterator[tuple[str, list[str]]], size: int) -> Iterator[tuple[list[str], list[list[str]]]]:
    locations: list[str] = []
    conversations: list[list[str]] = []
    for location, turns in items:
        locations.append(location)
        conversations.append(turns)
        if len(conversations) == size:
            yield locations, conversations
            locations, conversations = [], []
    if conversations:
        yield locations, conversations


def _encoded_chunks(
    chunks: Iterator[tuple[list[str], list[list[str]]]], encoder: ConversationEncoder
) -> Iterator[tuple[list[str], EncodedBatch]]:
    """Encode chunk k in a worker thread while the caller's thread reads and parses chunk k+1.

    The tokenizer releases the GIL, so reading JSON (Python) and tokenizing (Rust, all cores) overlap.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="huatuo-encode") as pool:
        pending = None
        for locations, conversations in chunks:
            future = (locations, pool.submit(encoder.encode_flat, conversations))
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = future
        if pending is not None:
            yield pending[0], pending[1].result()


def _drop(report: LoadReport, location: str, _overlaps) -> None:
    report.skip(DECONTAMINATED, location)


def tokenize_sources(
    specs: Sequence[SourceSpec],
    encoder: ConversationEncoder,
    settings: PackingSettings,
    workdir: Path,
    exclude: NgramIndex | None = None,
):
    ids_path, labels_path = workdir / "ids.bin", workdir / "labels.bin"
    lengths: list[np.ndarray] = []
    supervised: list[np.ndarray] = []
    source_base = [0]
    reports, truncated, truncated_at = [], [], []
    overlong = f"longer than max_len={settings.max_len}"
    with ids_path.open("wb") as ids_out, labels_path.open("wb") as labels_out:
        for spec in specs:
            report = LoadReport()
            cut, kept, examples = 0, 0, []
            progress = tqdm(desc=f"tokenize {spec.name}", unit=" samples", disable=None, mininterval=1.0, leave=False)
            conversations = iter_conversations(spec, settings.on_error, report)
            if exclude is not None:  # counted like a skip: stats.json's skipped/skipped_at under "decontaminated"
                conversations = exclude.drop_overlapping(conversations, partial(_drop, report))
            for locations, batch in _encoded_chunks(_chunks(conversations, ENCODE_CHUNK), encoder):
                ids, labels, sample_lengths, sample_supervised = (
                    batch.input_ids,
                    batch.labels,
                    batch.lengths,
                    batch.supervised,
                )
                where = np.flatnonzero(batch.truncated)
                cut += len(where)
                for i in where[: max(0, MAX_EXAMPLES - len(examples))]:
                    examples.append(locations[i])
                if settings.overlong == "drop" and len(where):
                    for i in where:
                        report.skip(overlong, locations[i])
                    keep = ~batch.truncated
                    token_keep = np.repeat(keep, sample_lengths)
                    ids, labels = ids[token_keep], labels[token_keep]
                    sample_lengths, sample_supervised = sample_lengths[keep], sample_supervised[keep]
                ids_out.write(ids.tobytes())
                labels_out.write(labels.tobytes())
                lengths.append(sample_lengths)
                supervised.append(sample_supervised)
                kept += len(sample_lengths)
                progress.update(len(batch))
            progress.close()
            if kept == 0:
                raise DataError(
                    f"source {spec.name!r}: all {report.records} samples are longer than max_len={settings.max_len} "
                    f"(first at {examples[0]}) and data.overlong=drop removed them; raise data.max_len or set "
                    "data.overlong=truncate"
                )
            source_base.append(source_base[-1] + kept)
            reports.append(report)
            truncated.append(cut)
            truncated_at.append(examples)
    forget_parsed_json()
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(all_lengths) + 1, dtype=np.int64)
    np.cumsum(all_lengths, out=offsets[1:])
    return TokenStore(
        ids_path=ids_path,
        labels_path=labels_path,
        offsets=offsets,
        supervised=np.concatenate(supervised) if supervised else np.zeros(0, dtype=np.int64),
        source_base=np.asarray(source_base, dtype=np.int64),
        reports=reports,
        truncated=truncated,
        truncated_at=truncated_at,
    )
