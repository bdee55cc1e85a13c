"""Helpers shared by tests: composing configs, running repository scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from huatuo import conf_dir

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BAICHUAN_TOKENIZER = SHARED / "assets" / "baichuan2" / "tokenizer.model"

# Settings that make a demo training run take seconds.
FAST = [
    "trainer.max_steps=3",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "data.micro_batch_size=2",
    "data.max_len=256",
    "checkpoint.every_n_train_steps=2",
    "logger=none",
]


def compose_config(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose a config from conf/ the way the entry points do."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))


def run_script(args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None):
    """Run a repository script with this interpreter; fail with its output when it fails."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result
