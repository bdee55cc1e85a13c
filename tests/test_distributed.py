"""DDP and FSDP2 with two CPU processes (gloo) train like one process on the same global batch."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from huatuo.training.run import train
from tests.helpers import ROOT, run_script

STEPS = 3
COMMON = [
    f"trainer.max_steps={STEPS}",
    "trainer.max_epochs=1",
    "data.max_len=256",
    "logger=csv",
    "logger.csv.flush_logs_every_n_steps=1",
    "checkpoint.every_n_train_steps=2",
    "trainer.enable_progress_bar=false",
    "export.enabled=true",
    "source_metrics_every_n_steps=1",
]


def step_metrics(run: Path) -> list[dict[str, float]]:
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r.get("train/loss")]
    return [{k: float(v) for k, v in r.items() if v != ""} for r in rows]


def run_two_processes(tmp_path: Path, name: str, *overrides: str) -> Path:
    run = tmp_path / name
    run_script(
        [
            "train.py",
            *COMMON,
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            f"hydra.run.dir={run}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            *overrides,
        ],
        cwd=ROOT,
    )
    return run


@pytest.mark.slow
def test_ddp_and_fsdp2_on_two_processes_match_one_process_on_the_same_global_batch(train_config, tmp_path):
    # Global batch 4 rows: one process x 4 rows | 2 DDP ranks x 1 row x 2 accumulated | 2 FSDP2 ranks x 2 rows
    # (with gradient checkpointing, which recomputes activations and must not change the result).
    single = train(train_config(*COMMON, "data.micro_batch_size=4", f"paths.cache_dir={tmp_path / 'cache'}"))
    assert single["global_step"] == STEPS
    one = Path(train_config().paths.run_dir)
    ddp = run_two_processes(
        tmp_path, "ddp", "strategy=ddp", "data.micro_batch_size=1", "trainer.accumulate_grad_batches=2"
    )
    fsdp2 = run_two_processes(
        tmp_path, "fsdp2", "strategy=fsdp2", "data.micro_batch_size=2", "backbone.model.gradient_checkpointing=true"
    )

    reference = step_metrics(one)
    assert len(reference) == STEPS
    weights = load_file(one / "export" / "model.safetensors")
    for run in (ddp, fsdp2):
        metrics = step_metrics(run)
        assert len(metrics) == STEPS
        for expected, got in zip(reference, metrics, strict=True):
            # the same rows and token counts, summed over ranks; the loss equal up to float reduction order
            assert got["train/supervised_tokens"] == expected["train/supervised_tokens"]
            assert got["source/sft/docs_seen"] == expected["source/sft/docs_seen"]
            assert got["train/loss"] == pytest.approx(expected["train/loss"], rel=1e-5)
            assert got["train/grad_norm"] == pytest.approx(expected["train/grad_norm"], rel=1e-4)
        # The export is consolidated from the shards (FSDP2) and equals the single-process weights. AdamW moves
        # each weight by ~lr = 1e-3 per step whatever the gradient's size, so reduction-order noise in a
        # near-zero gradient shows up as ~1e-5 differences; a wrong gradient scale shows in grad_norm above.
        exported = load_file(run / "export" / "model.safetensors")
        assert exported.keys() == weights.keys()
        for key, value in weights.items():
            torch.testing.assert_close(exported[key], value, rtol=1e-4, atol=1e-4, msg=f"{run.name}: {key}")
    assert (fsdp2 / "checkpoints" / "last.ckpt" / ".metadata").is_file()  # sharded checkpoint folder
    assert not list((fsdp2 / "checkpoints").glob(".*partial*"))
