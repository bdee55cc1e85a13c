"""Shared fixtures: composed configs and the tiny tokenizer."""

from __future__ import annotations

import os

import pytest
from omegaconf import DictConfig

import huatuo
from tests.helpers import FAST, compose_config

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def train_config(tmp_path):
    """A composed train.yaml with its run folder and cache under tmp_path; extra overrides as arguments."""

    def make(*overrides: str, fast: bool = True) -> DictConfig:
        base = [f"paths.run_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"]
        return compose_config("train", base + (FAST if fast else []) + list(overrides))

    return make


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from huatuo.models.loading import load_tokenizer

    return load_tokenizer(huatuo.asset_path("tiny_tokenizer"))
