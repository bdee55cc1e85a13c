"""Metrics reach the loggers: W&B offline (read back from its run file) and a CSV file that survives resumes."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from huatuo.training.run import train
from huatuo.training.tracking import ResumableCSVLogger, read_wandb_run

STEP_METRICS = (
    "train/loss",
    "train/token_acc",
    "train/lr",
    "train/grad_norm",
    "train/tokens_per_s",
    "train/supervised_tokens",
    "train/tokens_seen",
    "source/sft/docs_seen",
    "source/web_cn/docs_seen",
)


@pytest.mark.slow
def test_wandb_offline_run_holds_the_metrics_config_and_prepare_report(train_config, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no credentials: offline, never a prompt
    cfg = train_config("logger=wandb", "export.enabled=false", "source_metrics_every_n_steps=1")
    metrics = train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    run = read_wandb_run(files[0])
    deadline = time.monotonic() + 120
    while not run.finished:  # wandb's service writes the file asynchronously after finish()
        assert time.monotonic() < deadline, "the W&B run file never got its exit record"
        time.sleep(0.5)
        run = read_wandb_run(files[0])

    # a file still being written reads as its complete records so far (wandb writes it asynchronously)
    data = files[0].read_bytes()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 3):
        torn = tmp_path / f"torn-{cut}.wandb"
        torn.write_bytes(data[:cut])
        partial = read_wandb_run(torn)
        assert partial.history == run.history[: len(partial.history)]

    steps = [row for row in run.history if "train/loss" in row]
    assert [row["trainer/global_step"] for row in steps] == [0, 1, 2]
    for row in steps:
        assert set(STEP_METRICS) <= row.keys()
    assert steps[-1]["train/loss"] == pytest.approx(metrics["train/loss"], rel=1e-6)
    # counters along the steps: tokens grow every step, documents seen per source never shrink
    tokens = [row["train/tokens_seen"] for row in steps]
    assert tokens == sorted(set(tokens)) and tokens[0] > 0
    for name in ("source/sft/docs_seen", "source/web_cn/docs_seen"):
        values = [row[name] for row in steps]
        assert values == sorted(values)
    assert sum(steps[-1][f"source/{n}/docs_seen"] for n in cfg.data.sources) > 0

    # the resolved config once, and the prepare stage's report with its schedule plot
    assert run.config["data"]["sources"]["sft"]["priority"] == 1
    assert run.config["trainer"]["max_steps"] == 3
    stats = json.loads((run_dir / "stats.json").read_text())
    assert run.summary["prepare/rows"] == stats["packing"]["rows"]
    assert run.summary["prepare/fingerprint"] == stats["fingerprint"]
    report = next(row for row in run.history if "prepare/schedule" in row)
    assert report["prepare/schedule"]["_type"] == "image-file"
    assert report["prepare/sources"]["_type"] == "table-file"
    assert (run_dir / "wandb_run_id").read_text().strip() in files[0].name


def test_csv_metrics_continue_after_a_resume_instead_of_starting_over(tmp_path):
    first = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    for step in range(5):
        first.log_metrics({"train/loss": 10.0 - step}, step=step)
    first.save()
    # resumed from the checkpoint of step 3: rows 3 and 4 will be logged again by the resumed run
    second = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    second.resume_at(3)
    for step in range(3, 6):
        second.log_metrics({"train/loss": 20.0 + step, "train/lr": 0.1}, step=step)
    second.save()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [(int(r["step"]), float(r["train/loss"])) for r in rows] == [
        (0, 10.0),
        (1, 9.0),
        (2, 8.0),
        (3, 23.0),
        (4, 24.0),
        (5, 25.0),
    ]
    assert [r["train/lr"] for r in rows] == ["", "", "", "0.1", "0.1", "0.1"]  # a new column joins the header
