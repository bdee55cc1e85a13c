"""``python train.py`` (``huatuo-train``): prepare the data mixture, train, export. The stage is ``huatuo.training``.

Composes ``conf/train.yaml``. Each run lands in ``outputs/train/<time>/`` (a sweep's jobs in
``multirun/train/<time>/<n>/``): ``checkpoints/``, ``metrics.csv``, ``stats.json``, ``schedule.png``,
``resolved_config.yaml`` and ``export/``, a folder that plain ``transformers`` loads. Returns the final training loss
to a sweeper.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from huatuo import conf_dir
from huatuo.core.cli import reports_errors


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="train")
@reports_errors
def main(cfg: DictConfig) -> float | None:
    """Train on the composed config; returns the final ``train/loss``."""
    from huatuo.training.validation import check_train_config

    check_train_config(cfg)  # every config problem in a second, before Lightning and torch load
    from huatuo.training.run import train

    metrics = train(cfg)
    return metrics.get("train/loss")


if __name__ == "__main__":
    main()
