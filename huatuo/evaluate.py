"""``python evaluate.py`` (``huatuo-evaluate``): score a model on a medical exam, or judge it against another model.

    python evaluate.py model_path=outputs/train/<time>/export              # the demo exam, log-likelihood mode
    python evaluate.py run=outputs/train/<time>                           # a run's export on the suite it names
    python evaluate.py model_path=DIR eval=pharmacist eval.mode=generate   # the paper's protocol and exam

Composes ``conf/evaluate.yaml``. Results land in ``outputs/evaluate/<time>/``: ``results.json``, ``results.md``,
``predictions.jsonl`` (or ``judgments.jsonl``) and a plot. Returns the accuracy (or the win rate) to a sweeper. The
stage is ``huatuo.evaluation``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from huatuo import conf_dir
from huatuo.core.cli import fail, reports_errors, wants_traceback


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="evaluate")
@reports_errors
def _evaluate(cfg: DictConfig) -> float | None:
    from huatuo.evaluation.validation import check_eval_config

    check_eval_config(cfg)  # before torch and the model load
    from huatuo.evaluation.run import evaluate

    summary = evaluate(cfg)["summary"]
    return summary.get("accuracy", summary.get("win_rate"))


def main() -> float | None:
    """Evaluate with the composed config (``run=DIR`` is expanded first); returns accuracy or win rate."""
    from huatuo.core.errors import HuatuoError
    from huatuo.evaluation.run_folder import expand_run

    try:
        sys.argv[1:] = expand_run(sys.argv[1:])
    except HuatuoError as err:
        if wants_traceback():
            raise
        fail(err)
    return _evaluate()


if __name__ == "__main__":
    main()
