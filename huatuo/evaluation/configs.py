"""Composing a command's config from ``conf/`` inside another command (a suite for decontamination, the evaluate
config after training), whether or not a Hydra app is already running."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from huatuo import conf_dir
from huatuo.core.errors import did_you_mean


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """``config_name`` composed with ``overrides``, as its command line would compose it (no ``hydra`` node)."""
    if GlobalHydra.instance().is_initialized():  # inside a command: its search path is conf/ already
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def suite_names() -> list[str]:
    """The suites of the ``eval`` group (``conf/eval/*.yaml``)."""
    return sorted(p.stem for p in (Path(conf_dir()) / "eval").glob("*.yaml"))


def suite_problem(name: str, key: str) -> str | None:
    """Why ``name`` is not a suite of ``conf/eval/``, or None."""
    if name in suite_names():
        return None
    return (
        f"{key}: {name!r} is neither a suite in conf/eval/{did_you_mean(name, suite_names())} nor an exam file or "
        f"folder; use one of {', '.join(suite_names())}, or a path"
    )


def suite_config(name: str) -> DictConfig:
    """The ``eval`` node of suite ``name`` (``conf/eval/<name>.yaml`` with its defaults)."""
    return compose_config("evaluate", [f"eval={name}"]).eval
