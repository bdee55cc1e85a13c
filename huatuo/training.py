"""``train(cfg)``: prepare -> fit -> export, as a plain function that ``train.py``, ``huatuo-train`` and tests call."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from huatuo.backbone import import_class
from huatuo.datamodule import PackedDataModule
from huatuo.export import export_model
from huatuo.logs import get_logger
from huatuo.module import CausalLMModule
from huatuo.prepare import PackingSettings, Prepared, prepare, publish, settings_from_config, sources_from_config
from huatuo.validate import check_train_config

log = get_logger(__name__)


def find_checkpoint(resume: str | None, run_dir: Path) -> str | None:
    """The checkpoint to resume from: ``auto`` picks the newest in ``<run dir>/checkpoints``."""
    if resume in (None, "", "null"):
        return None
    if resume != "auto":
        return str(resume)
    folder = run_dir / "checkpoints"
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not candidates:
        log.info("resume=auto: no checkpoint in %s, starting fresh", folder)
        return None
    log.info("resume=auto: resuming from %s", candidates[-1])
    return str(candidates[-1])


def _prepare_and_publish(specs, tokenizer, settings: PackingSettings, cache_dir: str, run_dir: Path) -> Prepared:
    prepared = prepare(specs, tokenizer, settings, cache_dir)
    if L.fabric.utilities.rank_zero.rank_zero_only.rank == 0:
        publish(prepared, run_dir)
    return prepared


def build_loggers(cfg: DictConfig) -> list:
    """Instantiate every logger of the ``logger`` group (an empty group means none)."""
    return [instantiate(spec) for spec in (cfg.get("logger") or {}).values() if spec is not None]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train the backbone on the prepared mixture and export it; returns the final metrics."""
    check_train_config(cfg)
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
    )
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint.every_n_train_steps,
        save_last=cfg.checkpoint.save_last,
        save_top_k=cfg.checkpoint.save_top_k,
        monitor="step",
        mode="max",
    )
    loggers = build_loggers(cfg)
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        strategy=instantiate(cfg.strategy),
        logger=loggers or False,
        callbacks=[checkpoint],
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,  # the RowSampler already gives each rank its slice of the order
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if trainer.is_global_zero:
        OmegaConf.save(OmegaConf.create(resolved), run_dir / "resolved_config.yaml")
    for logger in loggers:
        logger.log_hyperparams(resolved)

    trainer.fit(module, datamodule=datamodule, ckpt_path=find_checkpoint(cfg.get("resume"), run_dir))

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.export.enabled and trainer.is_global_zero:
        export_model(
            module.model,
            tokenizer,
            run_dir / "export",
            generation=OmegaConf.to_container(cfg.export.generation),
            dtype=cfg.export.get("dtype"),
            metadata={"huatuo_version": _version(), "steps": trainer.global_step},
        )
    metrics["global_step"] = trainer.global_step
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
