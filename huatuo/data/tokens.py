"""Reading and tokenizing every source into one flat pair of token files (ids, labels) with per-sample offsets.

Memory stays flat at any corpus size: conversations stream from the files in chunks of ``ENCODE_CHUNK``, and tokens
go straight to disk; only the per-sample lengths stay in memory. Rows are later read back with positioned reads
(``TokenStore.read``).

Tokenizing runs on every core (``num_proc`` workers): this thread reads and checks the records while the workers turn
chunks into ids and labels, at most two chunks per worker in flight, and results are written in reading order, so
the files are byte for byte those of one worker. Workers are threads by default (``workers="thread"``): they share
one tokenizer, whose encoding (sentencepiece's C++ for a rebuilt SentencePiece tokenizer, the Rust backend
otherwise) releases the GIL, so one thread's Python work (collecting ids, assembling labels) overlaps another's
encoding. ``workers="process"`` forks single-threaded worker processes instead (the tokenizer shared copy-on-write):
more CPU per sample (no shared BPE cache, results copied back), for tokenizers without a Rust backend. A source of a
single chunk is encoded here, without a pool.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from huatuo.core.errors import DataError
from huatuo.data.contamination import NgramIndex
from huatuo.data.encoder import ConversationEncoder, EncodedBatch
from huatuo.data.settings import WORKERS, PackingSettings
from huatuo.data.sources import MAX_EXAMPLES, LoadReport, SourceSpec, forget_parsed_json, iter_conversations

DECONTAMINATED = "decontaminated"  # the skip reason of documents that share an n-gram with an exam question
ENCODE_CHUNK = 512  # conversations per tokenizer call: long enough for the Rust threads, short for overlap


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


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_worker_encoder: ConversationEncoder | None = None  # set in the parent just before the workers fork


def _encode_in_worker(conversations: list[list[str]]) -> EncodedBatch:
    _worker_encoder.sentencepiece_threads = 1  # this process is one of num_proc: one core each
    return _worker_encoder.encode_flat(conversations)


class ChunkEncoder:
    """Encodes chunks of conversations in order, on ``num_proc`` worker threads or forked processes.

    The pool is started at the second chunk, so small inputs (the demo, tests) never start one.
    """

    def __init__(self, encoder: ConversationEncoder, num_proc: int, workers: str = "thread") -> None:
        if workers not in WORKERS:
            raise ValueError(f"workers={workers!r}: use thread or process")
        self.encoder = encoder
        self.num_proc = max(1, num_proc)
        forkable = "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin"
        self.processes = workers == "process" and forkable and self.num_proc > 1
        self._pool: ProcessPoolExecutor | ThreadPoolExecutor | None = None

    def _start(self) -> ProcessPoolExecutor | ThreadPoolExecutor:
        if not self.processes:
            return ThreadPoolExecutor(max_workers=self.num_proc, thread_name_prefix="huatuo-encode")
        global _worker_encoder
        _worker_encoder = self.encoder
        # Each worker is one tokenizing core: the Rust thread pool inside a worker would only compete with the
        # other workers (and, forked after it was used, tokenizers would warn and switch it off anyway).
        previous = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            pool = ProcessPoolExecutor(self.num_proc, mp_context=multiprocessing.get_context("fork"))
            pool.submit(int).result()  # with fork, the first task starts every worker: now, with the variable set
        finally:
            if previous is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = previous
        return pool

    def _submit(self, conversations: list[list[str]]) -> Future:
        if self._pool is None:
            self._pool = self._start()
        if isinstance(self._pool, ProcessPoolExecutor):
            return self._pool.submit(_encode_in_worker, conversations)
        return self._pool.submit(self.encoder.encode_flat, conversations)

    def map(self, chunks: Iterator[tuple[list[str], list[list[str]]]]) -> Iterator[tuple[list[str], EncodedBatch]]:
        """``(locations, encoded chunk)`` in the order the chunks come, with a bounded number in flight."""
        first = next(chunks, None)
        if first is None:
            return
        second = next(chunks, None)
        if second is None and self._pool is None:  # a single chunk: no pool for it
            yield first[0], self.encoder.encode_flat(first[1])
            return
        window = 2 * self.num_proc
        pending: deque[tuple[list[str], Future]] = deque()
        for locations, conversations in _chain(first, second, chunks):
            pending.append((locations, self._submit(conversations)))
            if len(pending) > window:
                locations, future = pending.popleft()
                yield locations, future.result()
        while pending:
            locations, future = pending.popleft()
            yield locations, future.result()

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        global _worker_encoder
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if _worker_encoder is self.encoder:
            _worker_encoder = None  # the tokenizer is not kept alive by a finished pool

    def __enter__(self) -> ChunkEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chain(first, second, rest):
    yield first
    if second is not None:
        yield second
        yield from rest


def _drop(report: LoadReport, location: str, _overlaps) -> None:
    report.skip(DECONTAMINATED, location)


def tokenize_sources(
    specs: Sequence[SourceSpec],
    encoder: ConversationEncoder,
    settings: PackingSettings,
    workdir: Path,
    num_proc: int | None = None,
    exclude: NgramIndex | None = None,
    workers: str = "thread",
) -> TokenStore:
    """Read, check and tokenize every source into ``workdir`` (``num_proc`` workers, None: every core).

    ``exclude``: conversations that overlap these exam n-grams are dropped and counted (data.decontaminate).
    """
    ids_path, labels_path = workdir / "ids.bin", workdir / "labels.bin"
    lengths: list[np.ndarray] = []
    supervised: list[np.ndarray] = []
    source_base = [0]
    reports, truncated, truncated_at = [], [], []
    overlong = f"longer than max_len={settings.max_len}"
    count = available_cores() if num_proc is None else max(1, int(num_proc))
    with (
        ids_path.open("wb") as ids_out,
        labels_path.open("wb") as labels_out,
        ChunkEncoder(encoder, count, workers) as chunk_encoder,
    ):
        for spec in specs:
            report = LoadReport()
            cut, kept, examples = 0, 0, []
            progress = tqdm(desc=f"tokenize {spec.name}", unit=" samples", disable=None, mininterval=1.0, leave=False)
            conversations = iter_conversations(spec, settings.on_error, report)
            if exclude is not None:  # counted like a skip: stats.json's skipped/skipped_at under "decontaminated"
                conversations = exclude.drop_overlapping(conversations, partial(_drop, report))
            for locations, batch in chunk_encoder.map(_chunks(conversations, ENCODE_CHUNK)):
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
