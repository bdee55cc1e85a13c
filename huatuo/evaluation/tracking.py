"""Evaluation results to the experiment loggers: summary metrics, and with W&B the per-question and subject tables."""

from __future__ import annotations

import math
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def _flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    s, prefix = results["summary"], f"eval/{results['suite']}"
    if results["kind"] == "judge":
        keys = ("win", "tie", "loss", "win_rate", "tie_rate", "loss_rate", "judged", "order_consistency")
        return {f"{prefix}/{k}": float(s[k]) for k in keys}
    metrics = {f"{prefix}/{k}": float(s[k]) for k in ("accuracy", "miss_rate", "n", "macro_accuracy")}
    for name, group in s["by_dataset"].items():
        if group["n"]:  # a dataset whose every question was skipped has no accuracy, not one of 0.0
            metrics[f"{prefix}/{name}/accuracy"] = float(group["accuracy"])
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def log_to_loggers(cfg: DictConfig, results: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    specs = [spec for spec in (cfg.get("logger") or {}).values() if spec is not None]
    if not specs:
        return
    from lightning.pytorch.loggers import WandbLogger

    for spec in specs:
        logger = instantiate(spec)
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        logger.log_metrics(_flat_metrics(results))
        if isinstance(logger, WandbLogger):
            _wandb_tables(logger, results, rows)
            logger.experiment.finish()
        else:
            logger.save()
            logger.finalize("success")


def _wandb_tables(logger, results: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    if results["kind"] == "judge":
        columns = ["id", "ab", "ba", "outcome"]
        logger.log_table("judge/items", columns=columns, data=[[r[c] for c in columns] for r in rows])
        return
    columns = ["uid", "dataset", "subject", "question_type", "gold", "extracted", "correct", "miss", "rule", "reply"]
    logger.log_table("exam/predictions", columns=columns, data=[[r[c] for c in columns] for r in rows])
    subjects = results["summary"]["by_subject"]
    logger.log_table(
        "exam/subjects",
        columns=["subject", "n", "correct", "accuracy", "ci_low", "ci_high", "miss_rate"],
        data=[[k, g["n"], g["correct"], g["accuracy"], *g["ci95"], g["miss_rate"]] for k, g in subjects.items()],
    )
    logger.log_image("exam/subject_accuracy", images=[results["files"]["plot"]])
