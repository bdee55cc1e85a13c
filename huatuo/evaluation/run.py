"""``evaluate(cfg)``: exams (loglik / generate) and pairwise judging, as a plain function for ``evaluate.py`` and tests.

The suite comes from the ``eval`` config group: ``kind: mcq`` suites read an exam (local ``eval.data`` or the
suite's hub splits) and score a model on it; ``kind: judge`` suites compare two models' answers to open
questions with an LLM judge behind any OpenAI-compatible endpoint. Results land in the Hydra run folder:
``results.json``, ``results.md`` and the per-question files; with ``logger=wandb`` also W&B tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from huatuo.core.logs import get_logger
from huatuo.evaluation.pairwise import evaluate_judge
from huatuo.evaluation.suites import evaluate_exam
from huatuo.evaluation.validation import check_eval_config

log = get_logger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured suite; returns what ``results.json`` holds."""
    check_eval_config(cfg)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "resolved_config.yaml", resolve=True)
    import torch  # here: the evaluate command checks the config before anything heavy loads

    torch.manual_seed(cfg.seed)
    if cfg.eval.kind == "judge":
        return evaluate_judge(cfg, run_dir)
    return evaluate_exam(cfg, run_dir)
