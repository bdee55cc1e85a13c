"""``python train.py`` (``huatuo-train``): prepare the data mixture, train, export. The stage is ``huatuo.training``.

Composes ``conf/train.yaml``. Each run lands in ``outputs/train/<time>/`` (a sweep's jobs in
``multirun/train/<time>/<n>/``): ``checkpoints/``, ``metrics.csv``, ``stats.json``, ``schedule.png``,
``resolved_config.yaml``, ``export/`` (a folder that plain ``transformers`` loads) and ``score.json``. Returns the
final training loss to a sweeper, or with ``evaluate_after=true`` the exam score of the export on ``evaluate_with``
(its reports in ``<run dir>/eval/``): ``python train.py -m hydra/sweeper=priorities`` searches the priorities for it.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from huatuo import conf_dir
from huatuo.core.cli import reports_errors
from huatuo.core.errors import raise_problems


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="train")
@reports_errors
def main(cfg: DictConfig) -> float | None:
    """Train on the composed config; returns the final ``train/loss``, or the exam score with ``evaluate_after``."""
    from huatuo.evaluation.after_training import LOSS, evaluate_after_problems, scorer, write_trial
    from huatuo.evaluation.contamination import data_exclusion, data_exclusion_problems
    from huatuo.training.validation import train_config_problems

    # every config problem at once, in a second, before Lightning and torch load
    problems = train_config_problems(cfg) + evaluate_after_problems(cfg) + data_exclusion_problems(cfg)
    raise_problems("the config cannot run", problems)
    from huatuo.training.run import train

    evaluate_after = cfg.get("evaluate_after") is True
    after_export = scorer(cfg) if evaluate_after else None
    metrics = train(cfg, exclude=data_exclusion(cfg), after_export=after_export, checked=True)
    if evaluate_after:
        return metrics.get("eval/score")  # scorer wrote score.json with the suite's results beside it
    loss = metrics.get(LOSS)
    write_trial(Path(cfg.paths.run_dir), cfg, LOSS, loss, "minimize")
    return loss


if __name__ == "__main__":
    main()
