"""``train(cfg)``: prepare -> fit -> export, as a plain function that ``train.py``, ``huatuo-train`` and tests call."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from huatuo.data.contamination import NgramIndex
from huatuo.data.datamodule import PackedDataModule
from huatuo.data.encoder import ConversationEncoder
from huatuo.data.prepare import PackingSettings, Prepared, prepare, publish, settings_from_config, sources_from_config
from huatuo.data.settings import reading_options
from huatuo.models.loading import import_class
from huatuo.training.callbacks import ROWS_FILE, EpochProgressBar, PrepareReport, RowLedger
from huatuo.training.checkpointing import AtomicCheckpointIO, RunCheckpoint, find_checkpoint
from huatuo.training.export import export_trained, gather_full_state_dict
from huatuo.training.module import CausalLMModule
from huatuo.training.tracking import ResumableCSVLogger
from huatuo.training.validation import check_train_config, derived_accumulation


def _prepare_and_publish(
    specs, tokenizer, settings: PackingSettings, cache_dir: str, run_dir: Path, **reading: Any
) -> Prepared:
    prepared = prepare(specs, tokenizer, settings, cache_dir, **reading)
    if L.fabric.utilities.rank_zero.rank_zero_only.rank == 0:
        publish(prepared, run_dir)
    return prepared


class _NoAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")  # Lightning's suggestions to install its cloud products


def quiet_lightning() -> None:
    """Lightning's messages once each and without its advertisements.

    ``import lightning`` gives the ``lightning`` logger a console handler of its own even when the root logger has
    one (Hydra's), so every message would print twice; with a root handler, Lightning's is dropped.
    """
    # Lightning's own use of a torch API torch deprecated; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _NoAdvertisements) for f in target.filters):
            target.addFilter(_NoAdvertisements())


def build_loggers(cfg: DictConfig) -> list:
    """Instantiate every logger of the ``logger`` group (an empty group means none)."""
    return [instantiate(spec) for spec in (cfg.get("logger") or {}).values() if spec is not None]


def train(
    cfg: DictConfig,
    extra_callbacks: list[Callback] | None = None,
    exclude: NgramIndex | None = None,
    after_export: Callable[[Path], Mapping[str, float]] | None = None,
    checked: bool = False,
) -> dict[str, Any]:
    """Train the backbone on the prepared mixture and export it; returns the final metrics.

    ``extra_callbacks`` join the run's own (checkpointing, reports), e.g. to inspect gradients in tests.
    ``exclude``: training documents sharing an n-gram with it are dropped (``data.decontaminate``; the command
    builds it from the exams). ``after_export(export_dir)`` runs on rank zero once the export is written (the exam
    score of ``evaluate_after``); its metrics go to every logger of the run and into the returned metrics.
    ``checked``: the caller already raised ``train_config_problems`` (the command does, before torch loads).
    """
    if not checked:
        check_train_config(cfg)  # before anything heavy: every problem of the config (and its data files) at once
    quiet_lightning()
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    data = OmegaConf.to_container(cfg.data, resolve=True)
    specs = sources_from_config(data["sources"])
    settings = settings_from_config(data)
    tokenizer = instantiate(cfg.backbone.tokenizer)
    ConversationEncoder(tokenizer, settings.max_len)  # the template fits data.max_len with this tokenizer
    datamodule = PackedDataModule(
        prepare=partial(
            _prepare_and_publish,
            specs,
            tokenizer,
            settings,
            data["cache_dir"],
            run_dir,
            exclude=exclude,
            **reading_options(data),
        ),
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
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(EpochProgressBar())
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
    if after_export is not None and cfg.export.enabled and trainer.is_global_zero:
        scores = {k: float(v) for k, v in after_export(run_dir / "export").items()}
        for logger in loggers:  # beside the training curves: W&B's summary and metrics.csv get the score
            logger.log_metrics(scores, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(scores)
            logger.save()
        metrics.update(scores)
    for logger in loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()  # the next job of a multirun must open its own W&B run
    return metrics


def _version() -> str:
    from huatuo import __version__

    return __version__
