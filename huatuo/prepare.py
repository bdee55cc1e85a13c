"""``python -m huatuo.prepare`` (``huatuo-prepare``): tokenize, order and pack a data mixture into the cache.

    python -m huatuo.prepare                          # the demo mixture with the tiny tokenizer
    python -m huatuo.prepare experiment=huatuogpt2_7b # exactly what that training run will read (same fingerprint)
    python -m huatuo.prepare data.sources.sft.priority=4 force=true
    python -m huatuo.prepare 'data.decontaminate=[demo]'  # drop training documents that share a span with the exam

Composes ``conf/prepare.yaml`` (the train.py composition), so its cache is the one ``train.py`` looks for. The
prepared dataset lands in ``<data.cache_dir>/<fingerprint>/``; ``stats.json`` and ``schedule.png`` are copied into
this run's folder (``outputs/prepare/<time>/``). The stage itself is ``huatuo.data.prepare``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from huatuo import conf_dir
from huatuo.core.cli import reports_errors
from huatuo.core.errors import raise_problems
from huatuo.core.logs import get_logger

log = get_logger("huatuo.prepare")


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="prepare")
@reports_errors
def main(cfg: DictConfig) -> None:
    """Prepare the data of the composed config and say where it is."""
    from huatuo.evaluation.contamination import data_exclusion, data_exclusion_problems
    from huatuo.training.validation import data_config_problems

    problems = data_config_problems(cfg) + data_exclusion_problems(cfg)
    raise_problems("bad data config", problems)  # before the tokenizer and pyarrow load
    from huatuo.data.prepare import run

    prepared = run(cfg, exclude=data_exclusion(cfg))  # data.decontaminate: the exams' n-grams, built here
    packing = prepared.stats["packing"]
    run_dir = Path(cfg.paths.run_dir)
    log.info(
        "%s prepared data: %s\n  rows %d, fill %.2f%%, supervised tokens %d\n"
        "  stats:    %s (copy: %s)\n  schedule: %s (copy: %s)",
        "reused" if prepared.reused else "wrote",
        prepared.dataset_dir,
        packing["rows"],
        100 * packing["fill"],
        packing["supervised_tokens"],
        prepared.path / "stats.json",
        run_dir / "stats.json",
        prepared.path / "schedule.png",
        run_dir / "schedule.png",
    )


if __name__ == "__main__":
    main()
