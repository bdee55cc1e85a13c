"""A rank-zero text logger for library code (never bare ``print``)."""

from __future__ import annotations

import logging
import os

from lightning.pytorch.utilities import rank_zero_only


def _rank() -> int:
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return getattr(rank_zero_only, "rank", 0) or 0


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _rank() == 0


def get_logger(name: str) -> logging.Logger:
    """A logger whose records are emitted on global rank zero only."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RankZeroFilter) for f in logger.filters):
        logger.addFilter(_RankZeroFilter())
    return logger
