"""``train(cfg)``: prepare -> fit -> export, as a plain function that ``train.py``, ``huatuo-train`` and tests call."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from huatuo.backbone import import_class
from huatuo.datamodule import PackedDataModule
from huatuo.export import export_trained, gather_full_state_dict
from huatuo.logs import get_logger
from huatuo.module import CausalLMModule
from huatuo.prepare import (
    PackingSettings,
    Prepared,
    log_to_wandb,
    prepare,
    publish,
    settings_from_config,
    sources_from_config,
)
from huatuo.strategies import PARTIAL_SUFFIX, AtomicCheckpointIO
from huatuo.tracking import ResumableCSVLogger, remember_wandb_run
from huatuo.validate import check_train_config, derived_accumulation

log = get_logger(__name__)

ROWS_FILE = "rows.jsonl"


def checkpoint_step(path: Path) -> int | None:
    """The optimizer step a checkpoint was saved at, or ``None`` when it is missing, partial or unreadable.

    Reads only the metadata: a memory-mapped ``torch.load`` for files, the small ``meta.pt`` of FSDP/FSDP2
    sharded folders, the ``latest`` tag of DeepSpeed folders.
    """
    try:
        if path.is_file():
            return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["global_step"])
        if (path / "meta.pt").is_file() and (path / ".metadata").is_file():
            return int(torch.load(path / "meta.pt", map_location="cpu", weights_only=False)["global_step"])
        if (path / "latest").is_file():
            tag = (path / "latest").read_text().strip()
            states = sorted((path / tag).glob("*model_states.pt"))
            if states:
                client = torch.load(states[0], map_location="cpu", mmap=True, weights_only=False)
                return int(client["global_step"])
    except Exception as err:  # any failure means "not loadable": resume=auto moves on to an older checkpoint
        log.warning("skipping checkpoint %s: %s", path, err)
    return None


def find_checkpoint(resume: str | None, run_dir: Path) -> tuple[str | None, int]:
    """The checkpoint to resume from and its step: ``auto`` picks the newest loadable in ``<run dir>/checkpoints``."""
    if resume in (None, "", "null"):
        return None, 0
    if resume != "auto":
        step = checkpoint_step(Path(resume))
        if step is None:
            raise ValueError(f"resume={resume!r} is not a loadable checkpoint; use auto, null or another .ckpt")
        return str(resume), step
    folder = run_dir / "checkpoints"
    candidates = []
    for path in sorted(folder.glob("*.ckpt")) if folder.is_dir() else []:
        if PARTIAL_SUFFIX in path.name or path.name.startswith("."):
            continue
        step = checkpoint_step(path)
        if step is not None:
            candidates.append((step, path.stat().st_mtime, path))
    if not candidates:
        log.info("resume=auto: no loadable checkpoint in %s, starting fresh", folder)
        return None, 0
    step, _, path = max(candidates)
    log.info("resume=auto: resuming from %s (step %d)", path, step)
    return str(path), step


def _prepare_and_publish(specs, tokenizer, settings: PackingSettings, cache_dir: str, run_dir: Path) -> Prepared:
    prepared = prepare(specs, tokenizer, settings, cache_dir)
    if L.fabric.utilities.rank_zero.rank_zero_only.rank == 0:
        publish(prepared, run_dir)
    return prepared


def build_loggers(cfg: DictConfig) -> list:
    """Instantiate every logger of the ``logger`` group (an empty group means none)."""
    return [instantiate(spec) for spec in (cfg.get("logger") or {}).values() if spec is not None]


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, plus ``last.ckpt`` at the final step when the run stops between periodic saves.

    (Lightning writes ``last.ckpt`` at train end only if none was written yet, so a run stopped by ``max_steps``
    would keep a stale one and ``resume=auto`` would redo its last steps.)
    """

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)


class RowLedger(Callback):
    """Appends the packed rows of every global micro-batch to ``<run dir>/rows.jsonl`` (data provenance).

    One line per micro-batch: epoch, position in the epoch's order (rows), optimizer step, and the row ids of
    every rank. A resumed run first drops the lines from the resumed position on, so the file always lists
    each consumed batch once, in order.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = None

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        sampler = trainer.datamodule.sampler
        resumed = (trainer.current_epoch, sampler.rows_done if sampler is not None else 0)
        kept = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                entry = json.loads(line)
                if (entry["epoch"], entry["position"]) < resumed:
                    kept.append(line)
        self.path.write_text("".join(f"{line}\n" for line in kept))
        self._handle = self.path.open("a")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rows = trainer.strategy.all_gather(batch["rows"])  # (world, micro) on every rank: a collective
        if self._handle is None:
            return
        sampler = trainer.datamodule.sampler
        entry = {
            "epoch": trainer.current_epoch,
            "position": sampler.rows_done - sampler.global_batch_rows,
            "step": trainer.global_step,
            "rows": rows.reshape(-1).tolist(),
        }
        self._handle.write(json.dumps(entry) + "\n")
        self._handle.flush()

    def on_train_end(self, trainer, pl_module) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class PrepareReport(Callback):
    """Sends the prepare stage's statistics and schedule plot to W&B once the data is set up (rank zero)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                remember_wandb_run(logger, self.run_dir)
                log_to_wandb(trainer.datamodule.prepared, logger)


def train(cfg: DictConfig, extra_callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Train the backbone on the prepared mixture and export it; returns the final metrics.

    ``extra_callbacks`` join the run's own (checkpointing, reports), e.g. to inspect gradients in tests.
    """
    check_train_config(cfg)  # before anything heavy: every problem of the config at once
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    tokenizer = instantiate(cfg.backbone.tokenizer)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    specs = sources_from_config(data["sources"])
    settings = settings_from_config(data)
    datamodule = PackedDataModule(
        prepare=partial(_prepare_and_publish, specs, tokenizer, settings, data["cache_dir"], run_dir),
        micro_batch_size=data["micro_batch_size"],
        max_len=settings.max_len,
        pad_id=tokenizer.pad_token_id,
        isolate=data["isolate"],
        pad_to=data.get("pad_to", "max_len"),
        num_workers=data.get("num_workers", 0),
    )
    module = CausalLMModule(
        model_factory=instantiate(cfg.backbone.model),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        weight_decay=cfg.weight_decay,
        source_names=[s.name for s in specs],
        layer_class=import_class(cfg.backbone.layer_class) if cfg.backbone.get("layer_class") else None,
        finetune=instantiate(cfg.finetune) if cfg.get("finetune") else None,
        source_metrics_every_n_steps=cfg.get("source_metrics_every_n_steps", 10),
    )
    checkpoint = RunCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint.every_n_train_steps,
        save_last=cfg.checkpoint.save_last,
        save_top_k=cfg.checkpoint.save_top_k,
        monitor="step",
        mode="max",
    )
    callbacks: list[Callback] = [checkpoint, PrepareReport(run_dir)]
    if cfg.checkpoint.get("record_rows"):
        callbacks.append(RowLedger(run_dir / ROWS_FILE))
    callbacks += list(extra_callbacks or [])
    loggers = build_loggers(cfg)
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_args["accumulate_grad_batches"] = derived_accumulation(cfg)
    trainer = L.Trainer(
        **trainer_args,
        strategy=instantiate(cfg.strategy),
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,  # the RowSampler already gives each rank its slice of the order
    )
    ckpt_path, resumed_step = find_checkpoint(cfg.get("resume"), run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if trainer.is_global_zero:
        OmegaConf.save(OmegaConf.create(resolved), run_dir / "resolved_config.yaml")
        for logger in loggers:
            if ckpt_path is not None and isinstance(logger, ResumableCSVLogger):
                logger.resume_at(resumed_step)
    for logger in loggers:
        logger.log_hyperparams(resolved)

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.export.enabled:
        state = gather_full_state_dict(trainer, module.model)  # collective: every rank takes part
        if trainer.is_global_zero:
            export_trained(
                module.model,
                state,
                tokenizer,
                run_dir / "export",
                generation=OmegaConf.to_container(cfg.export.generation),
                dtype=cfg.export.get("dtype"),
                metadata={"huatuo_version": _version(), "steps": trainer.global_step},
                adapter=cfg.export.get("adapter", True),
            )
        trainer.strategy.barrier("export")
    metrics["global_step"] = trainer.global_step
    for logger in loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()  # the next job of a multirun must open its own W&B run
    return metrics


def _version() -> str:
    from huatuo import __version__

    return __version__


def main() -> float | None:
    """Hydra entry point (``python train.py`` / ``huatuo-train``); returns the final loss for sweepers."""
    import hydra

    from huatuo import conf_dir

    @hydra.main(version_base="1.3", config_path=conf_dir(), config_name="train")
    def _main(cfg: DictConfig) -> float | None:
        metrics = train(cfg)
        return metrics.get("train/loss")

    return _main()
