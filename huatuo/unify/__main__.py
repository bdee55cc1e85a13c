"""``python -m huatuo.unify`` (``huatuo-unify``): rewrite raw medical passages into (question, answer) pairs.

    python -m huatuo.unify input=corpus.jsonl output=unified.jsonl \
      endpoint.base_url=http://127.0.0.1:8000/v1 endpoint.model=NAME      # the key, if any: $OPENAI_API_KEY

Rerun the same command to resume. Accepted pairs land in ``output``, rejected passages with their reason beside it
(``<output stem>.rejected.jsonl``), the run's statistics in ``outputs/unify/<time>/stats.json``. The stage itself is
``huatuo.unify.run``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from huatuo import conf_dir
from huatuo.core.cli import reports_errors


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="unify")
@reports_errors
def main(cfg: DictConfig) -> int:
    """Unify every unfinished passage of the input; returns how many were accepted."""
    from huatuo.unify.run import unify

    return unify(cfg)["accepted"]


if __name__ == "__main__":
    main()
