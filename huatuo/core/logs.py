"""A rank-zero text logger for library code (never bare ``print``)."""

from __future__ import annotations

import logging
import os


def _rank() -> int:
    # Lightning, torchrun and SLURM all export the global rank before the processes import anything of ours.
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _rank() == 0


def get_logger(name: str) -> logging.Logger:
    """A logger whose records are emitted on global rank zero only."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RankZeroFilter) for f in logger.filters):
        logger.addFilter(_RankZeroFilter())
    return logger
