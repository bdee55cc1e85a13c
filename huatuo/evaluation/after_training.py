"""``train.py evaluate_after=true``: score the export on the run's own suite right after training, so ``main`` returns
the exam score and a sweeper (``hydra/sweeper=priorities``) searches the mixture for it.

The suite is the run's ``evaluate_with`` (the overrides ``evaluate.py run=<run dir>`` would add), composed from
``conf/evaluate.yaml`` in this process; its reports land in ``<run dir>/eval/`` and the score in
``<run dir>/score.json``, which the sweep report (``huatuo.evaluation.sweep_report``) collects.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from huatuo.core.jsonl import write_json
from huatuo.core.logs import get_logger
from huatuo.data.settings import parse_sources
from huatuo.evaluation.configs import compose_config

log = get_logger(__name__)

EVAL_DIR = "eval"  # the evaluation's folder inside the run folder
SCORE_FILE = "score.json"  # what the trial returned, and why: read back by the sweep report
LOSS = "train/loss"


def evaluation_overrides(run_dir: Path, evaluate_with: Sequence[Any]) -> list[str]:
    """The evaluate.py command line that scores this run's export on its suite, into ``<run dir>/eval``."""
    return [*map(str, evaluate_with), f"model_path={run_dir / 'export'}", f"paths.run_dir={run_dir / EVAL_DIR}"]


def evaluate_after_problems(cfg: DictConfig) -> list[str]:
    """Every problem of ``evaluate_after=true`` found before training: the suite composes and checks, the export
    is written, and an Optuna sweeper's direction fits what ``main`` returns."""
    from huatuo.evaluation.validation import eval_config_problems

    problems = []
    if cfg.get("evaluate_after") not in (True, False):
        problems.append(f"evaluate_after={cfg.get('evaluate_after')!r}: use true or false")
    if cfg.get("evaluate_after") is True:
        if not cfg.export.enabled:
            problems.append("evaluate_after=true scores the export, but export.enabled=false; enable the export")
        overrides = [*map(str, cfg.get("evaluate_with") or []), f"paths.run_dir={cfg.paths.run_dir}/{EVAL_DIR}"]
        try:
            # model_path is left out: the export it names is written only at the end of training
            problems += [f"evaluate_with: {p}" for p in eval_config_problems(compose_config("evaluate", overrides))]
        except Exception as error:  # noqa: BLE001 - Hydra reports a bad override with many exception types
            problems.append(f"evaluate_with={list(cfg.get('evaluate_with') or [])}: {error}")
    direction = sweeper_direction()
    maximize = cfg.get("evaluate_after") is True
    if direction == "maximize" and not maximize:
        problems.append(
            "hydra.sweeper.direction=maximize, but evaluate_after=false makes main return the training loss, which the "
            "sweeper would drive up; add evaluate_after=true (the exam score), or hydra.sweeper.direction=minimize"
        )
    elif direction == "minimize" and maximize:
        problems.append(
            "evaluate_after=true makes main return the exam score, but hydra.sweeper.direction=minimize would drive it "
            "down; add hydra.sweeper.direction=maximize (hydra/sweeper=priorities sets it)"
        )
    return problems


def sweeper_direction() -> str | None:
    """``maximize`` or ``minimize`` when this job belongs to a sweep whose sweeper has one (Optuna's), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    direction = HydraConfig.get().sweeper.get("direction")
    if direction is None or OmegaConf.is_list(direction) or isinstance(direction, list | tuple):
        return None  # none, or several objectives: main returns one number, the sweeper will say what it expects
    return str(getattr(direction, "name", direction)).rsplit(".", 1)[-1].lower()


def objective(results: dict[str, Any]) -> tuple[str, float]:
    """The score a run is judged by: accuracy for an exam, win rate for a judged comparison."""
    summary = results["summary"]
    name = "accuracy" if "accuracy" in summary else "win_rate"
    return name, float(summary[name])


def evaluate_export(run_dir: Path, evaluate_with: Sequence[Any]) -> dict[str, Any]:
    """Score ``<run dir>/export`` on the suite ``evaluate_with`` names; returns what ``eval/results.json`` holds."""
    import torch

    from huatuo.evaluation.run import evaluate

    gc.collect()  # the trained model's optimizer state and activations: gone before the export loads
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    overrides = evaluation_overrides(run_dir, evaluate_with)
    log.info("evaluate_after: python evaluate.py %s", " ".join(overrides))
    return evaluate(compose_config("evaluate", overrides))


def scorer(cfg: DictConfig) -> Callable[[Path], dict[str, float]]:
    """``train(cfg, after_export=...)``: evaluate the export, write ``score.json``, return the metrics to log."""
    run_dir = Path(cfg.paths.run_dir)

    def score(export: Path) -> dict[str, float]:
        results = evaluate_export(export.parent, list(cfg.get("evaluate_with") or []))
        name, value = objective(results)
        write_trial(run_dir, cfg, f"eval/{name}", value, "maximize", results)
        return {"eval/score": value, f"eval/{results['suite']}/{name}": value}

    return score


def write_trial(
    run_dir: Path, cfg: DictConfig, name: str, value: float | None, direction: str, results: dict | None = None
) -> Path:
    """``<run dir>/score.json``: the value ``main`` returns, what it is, and the mixture that produced it."""
    from hydra.core.hydra_config import HydraConfig

    # the specs, not the YAML: a source that omits priority or epochs trained with SourceSpec's default, not None.
    # Their problems were reported before training; a data file moved since must not cost the trial its score.
    specs, _ = parse_sources(OmegaConf.to_container(cfg.data.sources, resolve=True))
    summary = (results or {}).get("summary", {})
    record = {
        "objective": name,
        "value": value,
        "direction": direction,
        "suite": (results or {}).get("suite"),
        "n": summary.get("n"),
        "ci95": summary.get("ci95"),
        "results": str(run_dir / EVAL_DIR / "results.json") if results else None,
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "priorities": {spec.name: spec.priority for spec in specs},
        "epochs": {spec.name: spec.epochs for spec in specs},
        "run_dir": str(run_dir),
    }
    return write_json(record, run_dir / SCORE_FILE)
