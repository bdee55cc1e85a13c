"""Exact resume: a run killed with SIGKILL at a random step and resumed with resume=auto ends bitwise equal to an
uninterrupted run, having seen the same rows in the same order, with one continuous metrics.csv."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from huatuo import asset_path
from tests.helpers import ROOT, run_script

MAX_STEPS = 10


def small_mixture(tmp_path: Path) -> list[str]:
    """Overrides for a 7-conversation source (7 rows of 256 tokens): 10 steps of 2 rows cross two epochs."""
    conversations = json.loads(Path(asset_path("demo/huatuo2_demo.json")).read_text())["sft"][:7]
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations))
    return ["~data.sources", f"+data.sources={{small:{{paths:[{path}],format:jsonl,priority:1,epochs:1}}}}"]


def settings(tmp_path: Path, run: Path) -> list[str]:
    return [
        "train.py",
        f"hydra.run.dir={run}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *small_mixture(tmp_path),
        f"trainer.max_steps={MAX_STEPS}",
        "trainer.max_epochs=10",
        "trainer.accumulate_grad_batches=2",  # an odd number of rows per epoch: the last step of an epoch is partial
        "data.micro_batch_size=1",
        "data.max_len=256",
        "seed=7",
        "checkpoint.every_n_train_steps=3",
        "checkpoint.save_top_k=-1",
        "checkpoint.record_rows=true",
        "logger=csv",
        "logger.csv.flush_logs_every_n_steps=1",
        "export.enabled=false",
        "trainer.enable_progress_bar=false",
    ]


def kill_at_step(args: list[str], ledger: Path, step: int) -> None:
    """Start training and SIGKILL it as soon as the row ledger shows optimizer step ``step``."""
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while True:
            lines = ledger.read_text().splitlines() if ledger.is_file() else []
            if lines and json.loads(lines[-1])["step"] >= step:
                break
            assert process.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "training did not reach the kill step in time"
            time.sleep(0.02)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL


def losses(run: Path) -> list[tuple[int, str]]:
    rows = csv.DictReader((run / "metrics.csv").open())
    return [(int(r["step"]), r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_auto_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    kill_step = int(os.environ.get("HUATUO_KILL_STEP", random.randrange(2, MAX_STEPS - 2)))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_script(settings(tmp_path, whole))
    stats = json.loads((whole / "stats.json").read_text())
    assert stats["packing"]["rows"] == 7  # odd: the last step of every epoch accumulates one micro-batch

    kill_at_step(settings(tmp_path, killed), killed / "rows.jsonl", kill_step)
    saved = sorted(p.name for p in (killed / "checkpoints").glob("step*.ckpt"))
    assert "last.ckpt" in os.listdir(killed / "checkpoints") or saved, f"nothing saved before step {kill_step}"
    run_script([*settings(tmp_path, killed), "resume=auto"])

    context = f"(killed at step {kill_step}; rerun with HUATUO_KILL_STEP={kill_step})"
    a = torch.load(whole / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == MAX_STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"weights differ at {key} {context}"
    for key, value in a["optimizer_states"][0]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, b["optimizer_states"][0]["state"][key][name]), f"AdamW {name} {context}"
    assert a["lr_schedulers"] == b["lr_schedulers"]

    # The same rows in the same order, each consumed once, across the epoch boundaries.
    order_whole = (whole / "rows.jsonl").read_text().splitlines()
    order_killed = (killed / "rows.jsonl").read_text().splitlines()
    assert order_killed == order_whole, context
    epochs = {json.loads(line)["epoch"] for line in order_whole}
    assert epochs == {0, 1, 2}
    # One continuous metrics.csv: every step once, with the uninterrupted run's losses.
    assert losses(killed) == losses(whole)
    assert [step for step, _ in losses(whole)] == list(range(MAX_STEPS))
