"""``python -m huatuo.decontaminate`` (``huatuo-decontaminate``): which exam questions a training mixture contains.

    python -m huatuo.decontaminate                                        # the demo mixture against the demo exam
    python -m huatuo.decontaminate data=huatuo2 'suites=[pharmacist,cmb]'  # your corpus against the paper's exams
    python -m huatuo.decontaminate experiment=huatuogpt2_7b 'suites=[pharmacist]'   # what that run trains on
    python -m huatuo.decontaminate 'suites=[/data/held_out_exam.jsonl]' n=20

Composes ``conf/decontaminate.yaml`` (the train.py composition plus the suites). Every question (with its options)
is indexed as n-grams of normalized units and every training document streams through once (the stage is
``huatuo.data.contamination`` and ``huatuo.evaluation.contamination``). Into ``outputs/decontaminate/<time>/``:
``contamination.json`` (per suite and per source, the share of questions found), ``contamination_hits.jsonl``
(question, document ``file:record`` and the shared span), ``contamination.md`` and ``contamination.png``. Returns the
largest share of any suite's questions found. ``data.decontaminate=[...]`` drops such documents while preparing.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from huatuo import conf_dir
from huatuo.core.cli import reports_errors
from huatuo.core.errors import raise_problems
from huatuo.core.logs import get_logger

log = get_logger("huatuo.decontaminate")


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="decontaminate")
@reports_errors
def main(cfg: DictConfig) -> float:
    """Check the composed mixture against the composed suites; returns the largest share of a suite found."""
    from huatuo.evaluation.contamination import entry_problems
    from huatuo.training.validation import data_config_problems

    suites = OmegaConf.to_container(cfg.suites) if OmegaConf.is_list(cfg.suites) else cfg.suites
    problems = data_config_problems(cfg) + entry_problems(suites, cfg.n, "suites", "n")
    raise_problems("the decontaminate config cannot run", problems)
    from huatuo.data.settings import sources_from_config
    from huatuo.evaluation.contamination import build_exam_index, load_suites, scan_sources

    data = OmegaConf.to_container(cfg.data, resolve=True)
    specs = sources_from_config(data["sources"])
    exams = build_exam_index(load_suites(suites), cfg.n)
    log.info(
        "%d questions (%s) as %d %d-grams (%.1f MiB); scanning %d source(s)",
        len(exams.questions),
        exams.index.meta["label"],
        len(exams.index),
        cfg.n,
        exams.index.nbytes() / 2**20,
        len(specs),
    )
    run_dir = Path(cfg.paths.run_dir)
    result = scan_sources(specs, exams, run_dir, on_error=data["on_error"], progress=cfg.progress)
    for suite, entry in result["suites"].items():
        log.info(
            "%s: %d of %d questions (%.1f%%) share a %d-unit span with the training data%s",
            suite,
            entry["overlapping"],
            entry["questions"],
            100 * entry["share"],
            cfg.n,
            "".join(f"; {k} {v['questions']}" for k, v in entry["by_source"].items() if v["questions"]),
        )
    log.info(
        "%d documents in %.1fs (%.0f/s), %d hits\n  report: %s\n  hits:   %s\n  plot:   %s",
        result["documents"],
        result["seconds"],
        result["documents_per_second"] or 0,
        result["hits"],
        run_dir / "contamination.md",
        result["files"]["hits"],
        result["files"]["plot"],
    )
    return max((entry["share"] for entry in result["suites"].values()), default=0.0)


if __name__ == "__main__":
    main()
