"""The prepare stage: sources -> template -> tokens -> priority order -> packed rows, cached as an Arrow dataset.

``python -m huatuo.prepare data=demo backbone=tiny`` runs it alone; ``train.py`` runs it (or reuses the cache)
before training. The cache folder is named by a fingerprint of everything that changes the result (file
contents, tokenizer, template, priorities, epochs, seed, ``max_len``, packing), so an unchanged mixture is
never prepared twice and a changed one is never served stale.

Memory stays flat at any corpus size: tokens stream to flat binary files per source, the order and the packing
work on length arrays only, and rows are written to Arrow in chunks from memory maps.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from huatuo.logs import get_logger
from huatuo.packing import PackedRows, pack
from huatuo.sampler import PoolOrder, PrioritySampler
from huatuo.sources import DataError, LoadReport, SourceSpec, iter_conversations
from huatuo.template import ASSISTANT_PREFIX, IGNORE_INDEX, TURN_SEPARATOR, USER_PREFIX, ConversationEncoder

log = get_logger(__name__)

PIPELINE_VERSION = 1  # bump when the prepared layout or the token layout changes
ENCODE_CHUNK = 2048  # conversations per tokenizer call
WRITE_CHUNK = 1024  # packed rows per Arrow record batch
SCHEDULE_BINS = 50


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
        if not isinstance(self.max_len, int) or self.max_len < 16:
            out.append(f"{prefix}.max_len={self.max_len!r} must be an integer >= 16 (the paper uses 4096)")
        if self.packing not in ("greedy", "best_fit"):
            out.append(f"{prefix}.packing={self.packing!r}: use greedy (the paper's) or best_fit")
        if not isinstance(self.window, int) or self.window < 1:
            out.append(f"{prefix}.window={self.window!r} must be an integer >= 1 (the paper's is 256)")
        if not isinstance(self.open_rows, int) or self.open_rows < 1:
            out.append(f"{prefix}.open_rows={self.open_rows!r} must be an integer >= 1 (8 is a good default)")
        if self.overlong not in ("truncate", "drop"):
            out.append(f"{prefix}.overlong={self.overlong!r}: use truncate (the paper's) or drop")
        if self.on_error not in ("raise", "skip"):
            out.append(f"{prefix}.on_error={self.on_error!r}: use raise or skip")
        return out


@dataclass
class Prepared:
    """A prepared dataset on disk."""

    path: Path  # folder holding dataset/ (save_to_disk), stats.json, schedule.png
    fingerprint: str
    source_names: list[str]
    stats: dict[str, Any] = field(default_factory=dict)
    reused: bool = False

    @property
    def dataset_dir(self) -> Path:
        return self.path / "dataset"


def sources_from_config(sources: Mapping[str, Mapping[str, Any]]) -> list[SourceSpec]:
    """Build SourceSpecs from ``data.sources`` (name -> settings), collecting every problem into one error."""
    problems, specs = [], []
    if not sources:
        raise DataError("data.sources is empty; add at least one source (see conf/data/demo.yaml)")
    known = set(SourceSpec.__dataclass_fields__) - {"name"}
    for name, settings in sources.items():
        prefix = f"data.sources.{name}"
        if settings is None:
            problems.append(f"{prefix} has no settings; give it paths, priority and epochs")
            continue
        unknown = set(settings) - known
        if unknown:
            problems.append(f"{prefix} has unknown key(s) {sorted(unknown)}; known keys: {sorted(known)}")
            continue
        values = dict(settings)
        if isinstance(values.get("paths"), str):
            values["paths"] = [values["paths"]]
        values["paths"] = [str(p) for p in values.get("paths") or []]
        spec = SourceSpec(name=str(name), **values)
        problems += spec.problems(prefix)
        specs.append(spec)
    if problems:
        raise DataError("bad data config:\n  " + "\n  ".join(problems))
    return specs


def _file_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """A content hash of the tokenizer (its serialized fast tokenizer, or its vocabulary and specials)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.eos_token_id, tokenizer.pad_token_id])
    return hashlib.blake2b((payload + extra).encode(), digest_size=16).hexdigest()


def fingerprint(specs: Sequence[SourceSpec], tokenizer, settings: PackingSettings) -> str:
    """Hash of everything that affects the prepared rows."""
    described = []
    for spec in specs:
        entry = asdict(spec)
        entry["paths"] = [_file_digest(p) for p in spec.paths]  # contents, not names: moving a file keeps the cache
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
class _SourceTokens:
    ids: np.ndarray  # memory-mapped flat int32 tokens of every kept sample
    labels: np.ndarray
    offsets: np.ndarray  # int64, n+1
    supervised: np.ndarray  # int64 supervised tokens per sample
    report: LoadReport
    truncated: int


def _tokenize_source(
    spec: SourceSpec, encoder: ConversationEncoder, settings: PackingSettings, workdir: Path, index: int
) -> _SourceTokens:
    report = LoadReport()
    lengths: list[np.ndarray] = []
    supervised: list[np.ndarray] = []
    truncated = 0
    ids_path, labels_path = workdir / f"{index}.ids.bin", workdir / f"{index}.labels.bin"
    progress = tqdm(desc=f"tokenize {spec.name}", unit=" samples", leave=False, mininterval=1.0)
    with ids_path.open("wb") as ids_out, labels_path.open("wb") as labels_out:
        chunk: list[list[str]] = []

        def flush() -> None:
            nonlocal truncated
            chunk_lengths, chunk_supervised = [], []
            for sample in encoder.encode_batch(chunk):
                if sample.truncated:
                    truncated += 1
                    if settings.overlong == "drop":
                        report.skipped[f"longer than max_len={settings.max_len}"] += 1
                        continue
                ids_out.write(sample.input_ids.tobytes())
                labels_out.write(sample.labels.tobytes())
                chunk_lengths.append(len(sample.input_ids))
                chunk_supervised.append(int((sample.labels != IGNORE_INDEX).sum()))
            lengths.append(np.asarray(chunk_lengths, dtype=np.int64))
            supervised.append(np.asarray(chunk_supervised, dtype=np.int64))
            progress.update(len(chunk))
            chunk.clear()

        for turns in iter_conversations(spec, settings.on_error, report):
            chunk.append(turns)
            if len(chunk) == ENCODE_CHUNK:
                flush()
        if chunk:
            flush()
    progress.close()
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(all_lengths) + 1, dtype=np.int64)
    np.cumsum(all_lengths, out=offsets[1:])

    def mapped(path: Path) -> np.ndarray:
        return np.memmap(path, dtype=np.int32, mode="r") if offsets[-1] else np.zeros(0, dtype=np.int32)

    return _SourceTokens(
        ids=mapped(ids_path),
        labels=mapped(labels_path),
        offsets=offsets,
        supervised=np.concatenate(supervised) if supervised else np.zeros(0, dtype=np.int64),
        report=report,
        truncated=truncated,
    )


def _write_rows(
    path: Path, rows: PackedRows, order: PoolOrder, tokens: list[_SourceTokens]
) -> tuple[np.ndarray, np.ndarray]:
    """Write packed rows as an Arrow stream file; returns per-row token and supervised-token counts."""
    schema = pa.schema(
        [
            ("input_ids", pa.list_(pa.int32())),
            ("labels", pa.list_(pa.int32())),
            ("doc_lengths", pa.list_(pa.int32())),
            ("doc_sources", pa.list_(pa.int16())),
            ("doc_samples", pa.list_(pa.int64())),
            ("n_tokens", pa.int32()),
            ("n_supervised", pa.int32()),
        ]
    )
    row_tokens = np.zeros(len(rows), dtype=np.int64)
    row_supervised = np.zeros(len(rows), dtype=np.int64)
    progress = tqdm(total=len(rows), desc="write rows", unit=" rows", leave=False, mininterval=1.0)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, len(rows), WRITE_CHUNK):
            stop = min(start + WRITE_CHUNK, len(rows))
            ids_parts, label_parts, doc_lengths, doc_sources, doc_samples = [], [], [], [], []
            row_offsets, doc_offsets = [0], [0]
            for r in range(start, stop):
                positions = rows.row(r)
                for position in positions.tolist():
                    source, sample = int(order.source[position]), int(order.sample[position])
                    t = tokens[source]
                    lo, hi = t.offsets[sample], t.offsets[sample + 1]
                    ids_parts.append(t.ids[lo:hi])
                    label_parts.append(t.labels[lo:hi])
                    doc_lengths.append(hi - lo)
                    doc_sources.append(source)
                    doc_samples.append(sample)
                    row_supervised[r] += t.supervised[sample]
                row_tokens[r] = sum(doc_lengths[doc_offsets[-1] :])
                row_offsets.append(row_offsets[-1] + int(row_tokens[r]))
                doc_offsets.append(len(doc_lengths))
            flat_ids = np.concatenate(ids_parts).astype(np.int32, copy=False)
            flat_labels = np.concatenate(label_parts).astype(np.int32, copy=False)
            token_offsets = pa.array(row_offsets, type=pa.int32())
            doc_offsets_arr = pa.array(doc_offsets, type=pa.int32())
            batch = pa.record_batch(
                [
                    pa.ListArray.from_arrays(token_offsets, pa.array(flat_ids)),
                    pa.ListArray.from_arrays(token_offsets, pa.array(flat_labels)),
                    pa.ListArray.from_arrays(doc_offsets_arr, pa.array(doc_lengths, type=pa.int32())),
                    pa.ListArray.from_arrays(doc_offsets_arr, pa.array(doc_sources, type=pa.int16())),
                    pa.ListArray.from_arrays(doc_offsets_arr, pa.array(doc_samples, type=pa.int64())),
                    pa.array(row_tokens[start:stop], type=pa.int32()),
                    pa.array(row_supervised[start:stop], type=pa.int32()),
                ],
                schema=schema,
            )
            writer.write_batch(batch)
            progress.update(stop - start)
    progress.close()
    return row_tokens, row_supervised


def schedule_shares(rows: PackedRows, order: PoolOrder, doc_tokens: np.ndarray, n_sources: int, bins: int):
    """Share of each source's tokens in each of ``bins`` equal slices of training progress (by row)."""
    row_of_doc = np.repeat(np.arange(len(rows)), np.diff(rows.row_offsets))
    bin_of_doc = (row_of_doc * bins) // max(len(rows), 1)
    source_of_doc = order.source[rows.docs]
    counts = np.zeros((bins, n_sources), dtype=np.float64)
    np.add.at(counts, (bin_of_doc, source_of_doc), doc_tokens[rows.docs])
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def plot_schedule(shares: np.ndarray, names: Sequence[str], path: Path, title: str) -> None:
    """Stacked-area picture of the curriculum: each source's share of tokens along training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = (np.arange(len(shares)) + 0.5) / max(len(shares), 1) * 100
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    ax.stackplot(x, shares.T * 100, labels=names, alpha=0.9)
    ax.set(
        xlim=(0, 100),
        ylim=(0, 100),
        xlabel="training progress (% of packed rows)",
        ylabel="share of tokens (%)",
        title=title,
    )
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _build(specs, tokenizer, settings: PackingSettings, workdir: Path, key: str) -> dict[str, Any]:
    started = time.perf_counter()
    encoder = ConversationEncoder(tokenizer, settings.max_len)
    tmp = workdir / "tokens"
    tmp.mkdir(parents=True)
    tokens = [_tokenize_source(spec, encoder, settings, tmp, i) for i, spec in enumerate(specs)]
    empty = [spec.name for spec, t in zip(specs, tokens, strict=True) if len(t.offsets) == 1]
    if empty:
        raise DataError(
            f"source(s) {empty} have no usable samples (all empty or skipped); fix their files or remove them "
            "from data.sources"
        )
    sizes = [len(t.offsets) - 1 for t in tokens]
    sampler = PrioritySampler(sizes, [s.priority for s in specs], [s.epochs for s in specs], settings.seed)
    order = sampler.order()
    if len(order) == 0:
        raise DataError("the epoch-expanded pool is empty: every source has epochs=0; give one source epochs > 0")
    length_tables = [np.diff(t.offsets) for t in tokens]
    doc_tokens = np.empty(len(order), dtype=np.int64)
    for s, table in enumerate(length_tables):
        mask = order.source == s
        doc_tokens[mask] = table[order.sample[mask]]
    rows = pack(doc_tokens, settings.max_len, settings.packing, settings.window, settings.open_rows)
    arrow_path = workdir / "rows.arrow"
    row_tokens, row_supervised = _write_rows(arrow_path, rows, order, tokens)

    from datasets import Dataset

    Dataset.from_file(str(arrow_path)).save_to_disk(str(workdir / "dataset"))
    arrow_path.unlink()
    shutil.rmtree(tmp)

    names = [s.name for s in specs]
    bins = int(min(SCHEDULE_BINS, max(len(rows) // 8, 1)))  # ~8 rows per bin keeps small runs readable
    shares = schedule_shares(rows, order, doc_tokens, len(specs), bins)
    plot_schedule(
        shares, names, workdir / "schedule.png", f"priority schedule ({settings.packing}, seed {settings.seed})"
    )
    pool = sampler.pool_sizes()
    capacity = len(rows) * settings.max_len
    stats = {
        "fingerprint": key,
        "settings": asdict(settings),
        "sources": {
            spec.name: {
                "priority": spec.priority,
                "epochs": spec.epochs,
                "records_read": t.report.records,
                "samples": sizes[i],
                "truncated": t.truncated,
                "skipped": dict(t.report.skipped),
                "tokens": int(t.offsets[-1]),
                "supervised_tokens": int(t.supervised.sum()),
                "pool_items": pool[i],
                "pool_tokens": int(doc_tokens[order.source == i].sum()),
                "mean_position": float(np.flatnonzero(order.source == i).mean() / len(order)) if pool[i] else None,
            }
            for i, (spec, t) in enumerate(zip(specs, tokens, strict=True))
        },
        "packing": {
            "method": settings.packing,
            "rows": len(rows),
            "documents": len(order),
            "tokens": int(row_tokens.sum()),
            "supervised_tokens": int(row_supervised.sum()),
            "fill": float(row_tokens.sum() / capacity) if capacity else 0.0,
            "pad_tokens_at_max_len": int(capacity - row_tokens.sum()),
        },
        "schedule": {"bins": len(shares), "names": names, "shares": np.round(shares, 4).tolist()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    (workdir / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False))
    (workdir / "sources.json").write_text(json.dumps(names, ensure_ascii=False))
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
    final = Path(cache_dir) / key
    if (final / "stats.json").is_file() and not force:
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


def publish(prepared: Prepared, run_dir: str | Path) -> None:
    """Copy stats.json and schedule.png next to a run's outputs."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("stats.json", "schedule.png"):
        if (prepared.path / name).is_file():
            shutil.copy2(prepared.path / name, run_dir / name)


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
            "%s prepared data: %s\n  rows %d, fill %.2f%%, supervised tokens %d\n  stats: %s\n  schedule: %s",
            "reused" if prepared.reused else "wrote",
            prepared.dataset_dir,
            packing["rows"],
            100 * packing["fill"],
            packing["supervised_tokens"],
            Path(cfg.paths.run_dir) / "stats.json",
            Path(cfg.paths.run_dir) / "schedule.png",
        )

    _main()


if __name__ == "__main__":
    main()
