"""The prepare stage: sources -> template -> tokens -> priority order -> packed rows, cached as an Arrow dataset.

``python -m huatuo.prepare data=demo backbone=tiny`` runs it alone (``huatuo/prepare.py``); ``train.py`` runs it (or
reuses the cache) before training. The cache folder is named by a fingerprint of everything that changes the result
(file contents, tokenizer, template, priorities, epochs, seed, ``max_len``, packing), so an unchanged mixture is
never prepared twice and a changed one is never served stale.

The steps live in their own modules: ``settings`` (the config), ``tokens`` (read + tokenize), ``sampler`` (the
priority order), ``packing``, ``arrow`` (the rows on disk), ``schedule`` (the curriculum plot), ``fingerprint``
(the cache key). Memory stays flat at any corpus size: the order and the packing work on length arrays only.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from huatuo.core.errors import ConfigError, raise_problems
from huatuo.core.logs import get_logger
from huatuo.data.arrow import save_dataset, write_rows
from huatuo.data.contamination import NgramIndex
from huatuo.data.encoder import ConversationEncoder
from huatuo.data.fingerprint import FileDigests, fingerprint
from huatuo.data.packing import pack
from huatuo.data.sampler import PrioritySampler
from huatuo.data.schedule import SCHEDULE_BINS, order_displacement, plot_schedule, schedule_counts, schedule_shares
from huatuo.data.settings import PackingSettings, reading_options, settings_from_config, sources_from_config
from huatuo.data.sources import SourceSpec
from huatuo.data.tokens import tokenize_sources

log = get_logger(__name__)


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


class _Phases:
    """Wall and CPU seconds (this process and its finished workers) of each phase of a build."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._mark = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime
        return time.perf_counter(), cpu

    def end(self, name: str) -> None:
        """Close the phase that started at the previous ``end`` (or at construction)."""
        now = self._now()
        self.wall[name], self.cpu[name] = now[0] - self._mark[0], now[1] - self._mark[1]
        self._mark = now


def seconds_since_process_start() -> float | None:
    """How long this process has existed (Linux; None elsewhere): the start-up before a stage's own work."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat, in clock ticks since boot
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def _build(specs, tokenizer, settings: PackingSettings, workdir: Path, key: str, **reading: Any) -> dict[str, Any]:
    """Build the prepared folder in ``workdir``; ``reading`` goes to ``tokenize_sources`` (workers, exclusions)."""
    started = time.perf_counter()
    start_up = seconds_since_process_start()
    phases = _Phases()
    log.info(
        "preparing %d source(s) (%s packing, max_len %d) into %s",
        len(specs),
        settings.packing,
        settings.max_len,
        workdir.parent / key,
    )
    encoder = ConversationEncoder(tokenizer, settings.max_len)  # ConfigError: max_len below the template's minimum
    tmp = workdir / "tokens"
    tmp.mkdir(parents=True)
    tokens = tokenize_sources(specs, encoder, settings, tmp, **reading)
    phases.end("read_and_tokenize")
    sizes = np.diff(tokens.source_base).tolist()
    sampler = PrioritySampler(sizes, [s.priority for s in specs], [s.epochs for s in specs], settings.seed)
    order = sampler.order()
    if len(order) == 0:
        raise ConfigError(
            "the epoch-expanded pool is empty: every source has epochs=0 (or rounds down to 0 items); "
            "give at least one source data.sources.<name>.epochs > 0"
        )
    global_sample = tokens.source_base[order.source] + order.sample
    doc_tokens = tokens.lengths[global_sample]
    phases.end("order")
    rows = pack(doc_tokens, settings.max_len, settings.packing, settings.window, settings.open_rows)
    phases.end("pack")
    rows_file = workdir / "rows.arrow"
    row_tokens, row_supervised = write_rows(rows_file, rows, order, global_sample, tokens)
    save_dataset(rows_file, workdir / "dataset")
    shutil.rmtree(tmp)
    phases.end("write")

    names = [s.name for s in specs]
    labels = [f"{s.name} (priority {s.priority:g}, {s.epochs:g} ep)" for s in specs]
    fine = schedule_counts(rows, order, doc_tokens, len(specs), int(min(400, max(len(rows), 1))))
    title = f"curriculum: {len(order):,} documents in {len(rows):,} rows ({settings.packing}, seed {settings.seed})"
    plot_schedule(fine, labels, workdir / "schedule.png", title, len(order))
    shares = schedule_shares(rows, order, doc_tokens, len(specs), int(min(SCHEDULE_BINS, max(len(rows), 1))))
    phases.end("schedule")
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
        "phase_seconds": {k: round(v, 2) for k, v in phases.wall.items()},
        # CPU seconds over wall seconds per phase: how many cores each kept busy
        "phase_cores_busy": {k: round(phases.cpu[k] / v, 2) if v > 0 else None for k, v in phases.wall.items()},
        "start_up_seconds": None if start_up is None else round(start_up, 2),  # process start to the first record
    }
    # per source, the documents data.decontaminate dropped are under skipped["decontaminated"]
    if (exclude := reading.get("exclude")) is not None:
        stats["decontamination"] = {**exclude.meta, "digest": exclude.digest()}
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
    specs: Sequence[SourceSpec],
    tokenizer,
    settings: PackingSettings,
    cache_dir: str | Path,
    force: bool = False,
    num_proc: int | None = None,
    exclude: NgramIndex | None = None,
    workers: str = "thread",
) -> Prepared:
    """Prepare (or reuse) the packed dataset for these sources; returns where it lives and its statistics.

    ``num_proc`` tokenizing ``workers`` (threads or processes; None: every core): the rows do not depend on them.
    ``exclude``: documents sharing an n-gram with it (``data.decontaminate``: exam questions) are left out.
    """
    raise_problems("bad data config", settings.problems())
    key = fingerprint(specs, tokenizer, settings, exclude, FileDigests(Path(cache_dir) / "file_digests.json"))
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
        stats = _build(specs, tokenizer, settings, workdir, key, num_proc=num_proc, exclude=exclude, workers=workers)
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


def run(cfg, exclude: NgramIndex | None = None) -> Prepared:
    """Prepare the data of a composed config (its ``data`` and ``backbone`` groups), as the prepare command does.

    ``exclude``: the exam index of ``data.decontaminate``, which the command builds (exams are not this layer's).
    """
    from omegaconf import OmegaConf

    from huatuo.data.tokenizer_cache import prepare_tokenizer

    data = OmegaConf.to_container(cfg.data, resolve=True)
    specs = sources_from_config(data["sources"])  # the command checked the config before this layer loaded
    tokenizer = prepare_tokenizer(OmegaConf.to_container(cfg.backbone.tokenizer, resolve=True), data["cache_dir"])
    reading = {**reading_options(data), "exclude": exclude}
    prepared = prepare(
        specs, tokenizer, settings_from_config(data), data["cache_dir"], force=cfg.get("force", False), **reading
    )
    publish(prepared, cfg.paths.run_dir)
    return prepared
