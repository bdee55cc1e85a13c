"""The prepare stage: sources -> template -> tokens -> priority order -> packed rows, cached as an Arrow dataset.

``python -m huatuo.prepare data=demo backbone=tiny`` runs it alone; ``train.py`` runs it (or reuses the cache)
before training. The cache folder is named by a fingerprint of everything that changes the result (file
contents, tokenizer, template, priorities, epochs, seed, ``max_len``, packing), so an unchanged mixture is
never prepared twice and a changed one is never served stale.

Memory stays flat at any corpus size: conversations stream from the files in chunks, every chunk is tokenized
in one Rust call while the next chunk is read, tokens go to one flat binary file, the order and the packing work
on length arrays only, and rows are read back with positioned reads and written to Arrow a chunk at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from huatuo.logs import get_logger
from huatuo.packing import PackedRows, pack
from huatuo.sampler import PoolOrder, PrioritySampler
from huatuo.sources import (
    MAX_EXAMPLES,
    MISSING,
    DataError,
    LoadReport,
    SourceSpec,
    did_you_mean,
    forget_parsed_json,
    iter_conversations,
)
from huatuo.template import (
    ASSISTANT_PREFIX,
    IGNORE_INDEX,
    TURN_SEPARATOR,
    USER_PREFIX,
    ConversationEncoder,
    EncodedBatch,
)

log = get_logger(__name__)

PIPELINE_VERSION = 2  # bump when the prepared layout or the token layout changes
ENCODE_CHUNK = 1024  # conversations per tokenizer call: enough to keep every core busy, small in memory
WRITE_CHUNK = 1024  # packed rows per Arrow record batch
SCHEDULE_BINS = 50  # bins of the schedule stored in stats.json
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


@dataclass
class PackingSettings:
    """Everything besides the sources that changes the prepared rows."""

    max_len: int = 4096
    packing: str = "best_fit"  # greedy (the paper's) | best_fit
    window: int = 256  # greedy: samples per packing window (the paper's 256)
    open_rows: int = 8  # best_fit: rows open at once
    seed: int = 42
    overlong: str = "truncate"  # truncate (the paper's) | drop
    on_error: str = "raise"  # raise | skip

    def problems(self, prefix: str = "data") -> list[str]:
        """Every problem of these settings, each naming the key, the value and the fix."""
        out = []
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 1:
            out.append(f"{prefix}.max_len={self.max_len!r} must be a positive integer (the paper uses 4096)")
        if self.packing not in ("greedy", "best_fit"):
            out.append(
                f"{prefix}.packing={self.packing!r}{did_you_mean(str(self.packing), ['greedy', 'best_fit'])}: "
                "use greedy (the paper's) or best_fit"
            )
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            out.append(f"{prefix}.window={self.window!r} must be an integer >= 1 (the paper's is 256)")
        if isinstance(self.open_rows, bool) or not isinstance(self.open_rows, int) or self.open_rows < 1:
            out.append(f"{prefix}.open_rows={self.open_rows!r} must be an integer >= 1 (8 is a good default)")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            out.append(f"{prefix}.seed={self.seed!r} must be an integer")
        if self.overlong not in ("truncate", "drop"):
            out.append(f"{prefix}.overlong={self.overlong!r}: use truncate (the paper's) or drop")
        if self.on_error not in ("raise", "skip"):
            out.append(f"{prefix}.on_error={self.on_error!r}: use raise or skip")
        return out


@dataclass
class Prepared:
    """A prepared dataset on disk."""

    path: Path  # folder holding dataset/ (save_to_disk layout), stats.json, schedule.png, sources.json
    fingerprint: str
    source_names: list[str]
    stats: dict[str, Any] = field(default_factory=dict)
    reused: bool = False

    @property
    def dataset_dir(self) -> Path:
        return self.path / "dataset"


def sources_from_config(sources: Mapping[str, Mapping[str, Any]] | None) -> list[SourceSpec]:
    """Build SourceSpecs from ``data.sources`` (name -> settings), collecting every problem into one error."""
    problems, specs = [], []
    if not sources:
        raise DataError("data.sources is empty; add at least one source (see conf/data/demo.yaml)")
    known = sorted(set(SourceSpec.__dataclass_fields__) - {"name"})
    names = [str(n) for n in sources]
    for name, settings in sources.items():
        prefix = f"data.sources.{name}"
        others = [n for n in names if n != str(name)]
        if not isinstance(settings, Mapping):
            problems.append(f"{prefix}={settings!r} is not a mapping; give it paths, format, priority and epochs")
            continue
        unknown = sorted(set(settings) - set(known))
        if unknown:
            hints = "".join(did_you_mean(str(k), known) for k in unknown)
            problems.append(f"{prefix} has unknown key(s) {unknown}{hints}; known keys: {known}")
            continue
        values = dict(settings)
        if "paths" not in values and values.get("format") != "hf":
            # typically `+data.sources.<typo>.priority=...`: a new source holding only the overridden key
            problems.append(
                f"{prefix} has no paths: {str(name)!r} is not a source of this mixture{did_you_mean(str(name), others)}"
                f"; override an existing source (data.sources.<name>.priority=...) or give the new one paths"
            )
            continue
        paths = values.get("paths")
        if paths == MISSING or paths is None:
            paths = [MISSING] if paths == MISSING else []
        elif isinstance(paths, str):
            paths = [paths]
        values["paths"] = [str(p) for p in paths]
        spec = SourceSpec(name=str(name), **values)
        problems += spec.problems(prefix)
        specs.append(spec)
    if problems:
        raise DataError("bad data config:\n  " + "\n  ".join(problems))
    return specs


def _file_digest(path: str | Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """A content hash of the tokenizer (its serialized fast tokenizer, or its vocabulary and specials)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        serialized = json.loads(backend.to_str())
        for state in ("truncation", "padding"):  # call-time settings the encoder switches off; not the tokenizer
            serialized.pop(state, None)
        payload = json.dumps(serialized, sort_keys=True)
    else:
        payload = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.eos_token_id, tokenizer.pad_token_id])
    return hashlib.blake2b((payload + extra).encode(), digest_size=16).hexdigest()


def fingerprint(specs: Sequence[SourceSpec], tokenizer, settings: PackingSettings) -> str:
    """Hash of everything that affects the prepared rows."""
    described = []
    for spec in specs:
        entry = asdict(spec)
        entry["paths"] = [_file_digest(p) for p in spec.files()]  # contents, not names: moving a file keeps the cache
        described.append(entry)
    blob = json.dumps(
        {
            "version": PIPELINE_VERSION,
            "template": [USER_PREFIX, ASSISTANT_PREFIX, TURN_SEPARATOR, IGNORE_INDEX],
            "settings": asdict(settings),
            "sources": described,
            "tokenizer": tokenizer_digest(tokenizer),
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class _Tokens:
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


def _tokenize(specs: Sequence[SourceSpec], encoder: ConversationEncoder, settings: PackingSettings, workdir: Path):
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
    return _Tokens(
        ids_path=ids_path,
        labels_path=labels_path,
        offsets=offsets,
        supervised=np.concatenate(supervised) if supervised else np.zeros(0, dtype=np.int64),
        source_base=np.asarray(source_base, dtype=np.int64),
        reports=reports,
        truncated=truncated,
        truncated_at=truncated_at,
    )


def _write_rows(
    path: Path, rows: PackedRows, order: PoolOrder, global_sample: np.ndarray, tokens: _Tokens
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


def _save_dataset(rows_file: Path, target: Path) -> None:
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


def _build(specs, tokenizer, settings: PackingSettings, workdir: Path, key: str) -> dict[str, Any]:
    started = time.perf_counter()
    log.info(
        "preparing %d source(s) (%s packing, max_len %d) into %s",
        len(specs),
        settings.packing,
        settings.max_len,
        workdir.parent / key,
    )
    try:
        encoder = ConversationEncoder(tokenizer, settings.max_len)
    except ValueError as err:  # max_len below the template's minimum, or a tokenizer without </s>
        raise DataError(str(err)) from None
    tmp = workdir / "tokens"
    tmp.mkdir(parents=True)
    tokens = _tokenize(specs, encoder, settings, tmp)
    phases = {"read_and_tokenize": time.perf_counter() - started}
    mark = time.perf_counter()
    sizes = np.diff(tokens.source_base).tolist()
    sampler = PrioritySampler(sizes, [s.priority for s in specs], [s.epochs for s in specs], settings.seed)
    order = sampler.order()
    if len(order) == 0:
        raise DataError(
            "the epoch-expanded pool is empty: every source has epochs=0 (or rounds down to 0 items); "
            "give at least one source data.sources.<name>.epochs > 0"
        )
    global_sample = tokens.source_base[order.source] + order.sample
    doc_tokens = tokens.lengths[global_sample]
    phases["order"] = time.perf_counter() - mark
    mark = time.perf_counter()
    rows = pack(doc_tokens, settings.max_len, settings.packing, settings.window, settings.open_rows)
    phases["pack"] = time.perf_counter() - mark
    mark = time.perf_counter()
    rows_file = workdir / "rows.arrow"
    row_tokens, row_supervised = _write_rows(rows_file, rows, order, global_sample, tokens)
    _save_dataset(rows_file, workdir / "dataset")
    shutil.rmtree(tmp)
    phases["write"] = time.perf_counter() - mark
    mark = time.perf_counter()

    names = [s.name for s in specs]
    labels = [f"{s.name} (priority {s.priority:g}, {s.epochs:g} ep)" for s in specs]
    fine = schedule_counts(rows, order, doc_tokens, len(specs), int(min(400, max(len(rows), 1))))
    title = f"curriculum: {len(order):,} documents in {len(rows):,} rows ({settings.packing}, seed {settings.seed})"
    plot_schedule(fine, labels, workdir / "schedule.png", title, len(order))
    shares = schedule_shares(rows, order, doc_tokens, len(specs), int(min(SCHEDULE_BINS, max(len(rows), 1))))
    phases["schedule"] = time.perf_counter() - mark
    pool = sampler.pool_sizes()
    capacity = len(rows) * settings.max_len
    stats = {
        "fingerprint": key,
        "settings": asdict(settings),
        "sources": {
            spec.name: {
                "files": [str(p) for p in spec.files()] if spec.format != "hf" else [spec.hf_name],
                "priority": spec.priority,
                "epochs": spec.epochs,
                "records_read": tokens.reports[i].records,
                "samples": sizes[i],
                "truncated": tokens.truncated[i],
                "truncated_at": tokens.truncated_at[i],
                "skipped": dict(tokens.reports[i].skipped),
                "skipped_at": tokens.reports[i].examples,
                "tokens": int(tokens.lengths[tokens.source_base[i] : tokens.source_base[i + 1]].sum()),
                "supervised_tokens": int(tokens.supervised[tokens.source_base[i] : tokens.source_base[i + 1]].sum()),
                "pool_items": pool[i],
                "pool_tokens": int(doc_tokens[order.source == i].sum()),
                "mean_position": float(np.flatnonzero(order.source == i).mean() / len(order)) if pool[i] else None,
            }
            for i, spec in enumerate(specs)
        },
        "packing": {
            "method": settings.packing,
            "rows": len(rows),
            "documents": len(order),
            "tokens": int(row_tokens.sum()),
            "supervised_tokens": int(row_supervised.sum()),
            "fill": float(row_tokens.sum() / capacity) if capacity else 0.0,
            "pad_tokens_at_max_len": int(capacity - row_tokens.sum()),
            "max_order_displacement_rows": order_displacement(rows),
        },
        "schedule": {"bins": len(shares), "names": names, "shares": np.round(shares, 4).tolist()},
        "seconds": round(time.perf_counter() - started, 2),
        "phase_seconds": {k: round(v, 2) for k, v in phases.items()},
    }
    (workdir / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False))
    (workdir / "sources.json").write_text(json.dumps(names, ensure_ascii=False))
    for spec, report in zip(specs, tokens.reports, strict=True):
        if report.skipped:
            log.warning(
                "source %s: skipped %d record(s) (%s); see skipped_at in %s",
                spec.name,
                sum(report.skipped.values()),
                ", ".join(f"{k}: {v}" for k, v in report.skipped.most_common()),
                workdir.parent / key / "stats.json",
            )
    return stats


def prepare(
    specs: Sequence[SourceSpec], tokenizer, settings: PackingSettings, cache_dir: str | Path, force: bool = False
) -> Prepared:
    """Prepare (or reuse) the packed dataset for these sources; returns where it lives and its statistics."""
    problems = settings.problems()
    if problems:
        raise DataError("bad data config:\n  " + "\n  ".join(problems))
    key = fingerprint(specs, tokenizer, settings)
    names = [s.name for s in specs]
    for spec in specs:
        if spec.format == "hf" and not spec.hf_revision:
            log.warning(
                "source %s: hub dataset %s has no hf_revision, so the cache is keyed by its name only and will not "
                "notice new data on the hub; pin data.sources.%s.hf_revision to a commit",
                spec.name,
                spec.hf_name,
                spec.name,
            )
    final = Path(cache_dir) / key
    if (final / "stats.json").is_file() and (final / "dataset").is_dir() and not force:
        log.info("reusing prepared data %s", final)
        stats = json.loads((final / "stats.json").read_text())
        return Prepared(final, key, names, stats, reused=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    workdir = final.parent / f"{key}.tmp-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    try:
        stats = _build(specs, tokenizer, settings, workdir, key)
        if final.exists():
            shutil.rmtree(final)
        os.replace(workdir, final)  # atomic: a reader sees the old folder, no folder, or the complete new one
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log.info(
        "prepared %d rows (%s packing, fill %.1f%%) from %d documents in %.1fs -> %s",
        stats["packing"]["rows"],
        settings.packing,
        100 * stats["packing"]["fill"],
        stats["packing"]["documents"],
        stats["seconds"],
        final,
    )
    return Prepared(final, key, names, stats)


def settings_from_config(data: Mapping[str, Any]) -> PackingSettings:
    """The PackingSettings part of a ``data`` config group."""
    keys = PackingSettings.__dataclass_fields__
    return PackingSettings(**{k: data[k] for k in keys if k in data})


def publish(prepared: Prepared, run_dir: str | Path) -> list[Path]:
    """Copy stats.json and schedule.png next to a run's outputs; returns the copies."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in ("stats.json", "schedule.png"):
        if (prepared.path / name).is_file():
            shutil.copy2(prepared.path / name, run_dir / name)
            copied.append(run_dir / name)
    return copied


def log_to_wandb(prepared: Prepared, logger) -> None:
    """Log the curriculum picture, the per-source table and the packing numbers to a W&B run.

    ``logger`` is Lightning's ``WandbLogger`` (its ``experiment`` is used) or a ``wandb`` run. Call it on rank
    zero once the data is prepared; ``stats.json`` is attached to the run as a file.
    """
    import wandb

    run = getattr(logger, "experiment", logger)
    stats = prepared.stats
    columns = ["source", "priority", "epochs", "samples", "tokens", "truncated", "skipped", "pool_items"]
    table = wandb.Table(columns=[*columns, "mean_position"])
    for name, entry in stats["sources"].items():
        skipped = sum(entry["skipped"].values())
        table.add_data(name, *(entry[c] for c in columns[1:6]), skipped, entry["pool_items"], entry["mean_position"])
    payload: dict[str, Any] = {"prepare/sources": table}
    if (prepared.path / "schedule.png").is_file():
        payload["prepare/schedule"] = wandb.Image(str(prepared.path / "schedule.png"), caption="curriculum")
    run.log(payload, commit=False)  # joins the next row, so the trainer's step axis stays its own
    for k, v in stats["packing"].items():
        run.summary[f"prepare/{k}"] = v
    run.summary["prepare/fingerprint"] = prepared.fingerprint
    run.save(str(prepared.path / "stats.json"), base_path=str(prepared.path), policy="now")


def run(cfg) -> Prepared:
    """Prepare the data of a composed config (``data`` and ``backbone`` groups); used by the CLI and train."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    tokenizer = instantiate(cfg.backbone.tokenizer)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    specs = sources_from_config(data["sources"])
    prepared = prepare(specs, tokenizer, settings_from_config(data), data["cache_dir"], force=cfg.get("force", False))
    publish(prepared, cfg.paths.run_dir)
    return prepared


def main() -> None:
    """``python -m huatuo.prepare`` / ``huatuo-prepare``: prepare the data of a config and report where it is."""
    import hydra

    from huatuo import conf_dir

    @hydra.main(version_base="1.3", config_path=conf_dir(), config_name="prepare")
    def _main(cfg) -> None:
        prepared = run(cfg)
        packing = prepared.stats["packing"]
        log.info(
            "%s prepared data: %s\n  rows %d, fill %.2f%%, supervised tokens %d\n"
            "  stats:    %s (copy: %s)\n  schedule: %s (copy: %s)",
            "reused" if prepared.reused else "wrote",
            prepared.dataset_dir,
            packing["rows"],
            100 * packing["fill"],
            packing["supervised_tokens"],
            prepared.path / "stats.json",
            Path(cfg.paths.run_dir) / "stats.json",
            prepared.path / "schedule.png",
            Path(cfg.paths.run_dir) / "schedule.png",
        )

    _main()


if __name__ == "__main__":
    main()
