"""The loop from priorities to exam score: ``train.py evaluate_after=true`` returns the score its ``eval/results.json``
holds (and logs it to W&B), and a two-trial Optuna sweep over the tiny model ends with its report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import huatuo
from huatuo.evaluation.after_training import write_trial
from huatuo.evaluation.sweep_report import parameters, write_sweep_report
from huatuo.train import main
from huatuo.training.tracking import read_wandb_run
from tests.helpers import FAST, ROOT, run_script

QUICK_EVAL = "evaluate_with=['eval=demo','progress=false','eval.limit=12']"


@pytest.mark.slow
def test_main_returns_the_exam_score_of_its_results_json_and_logs_it_to_wandb(train_config, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no credentials: offline
    cfg = train_config("evaluate_after=true", QUICK_EVAL, "logger=wandb")
    score = main(cfg)
    run_dir = Path(cfg.paths.run_dir)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["suite"] == "demo" and results["summary"]["n"] == 12
    assert score == results["summary"]["accuracy"]
    trial = json.loads((run_dir / "score.json").read_text())
    assert trial["value"] == score and trial["direction"] == "maximize" and trial["objective"] == "eval/accuracy"
    assert trial["priorities"]["sft"] == 1 and trial["ci95"] == results["summary"]["ci95"]
    assert results["model"] == str(run_dir / "export")
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    run = read_wandb_run(files[0])
    deadline = time.monotonic() + 120
    while not run.finished:  # wandb writes the file asynchronously after finish()
        assert time.monotonic() < deadline, "the W&B run file never got its exit record"
        time.sleep(0.5)
        run = read_wandb_run(files[0])
    assert run.summary["eval/score"] == pytest.approx(score)
    assert run.summary["eval/demo/accuracy"] == pytest.approx(score)


@pytest.mark.slow
def test_without_evaluate_after_main_returns_the_loss(train_config):
    cfg = train_config("export.enabled=false")
    loss = main(cfg)
    trial = json.loads((Path(cfg.paths.run_dir) / "score.json").read_text())
    assert trial["objective"] == "train/loss" and trial["direction"] == "minimize" and trial["value"] == loss
    assert not (Path(cfg.paths.run_dir) / "eval").exists()


@pytest.mark.slow
def test_a_two_trial_optuna_sweep_over_the_tiny_model_writes_its_report(tmp_path):
    sweep = tmp_path / "sweep"
    run_script(
        [
            str(ROOT / "train.py"),
            "-m",
            "hydra/sweeper=priorities",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            QUICK_EVAL,
            *[o for o in FAST if not o.startswith("trainer.max_steps")],
            "trainer.max_steps=2",
        ],
        cwd=tmp_path,
        timeout=900,
    )
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in trials] == ["0", "1"]  # each trial keeps its own run folder
    values = []
    for trial in trials:
        score = json.loads((trial / "score.json").read_text())
        results = json.loads((trial / "eval" / "results.json").read_text())
        assert score["value"] == results["summary"]["accuracy"]  # what main returned to Optuna
        assert (trial / "export" / "config.json").is_file() and (trial / "stats.json").is_file()
        values.append(score["value"])
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(values)
    report = (sweep / "sweep.md").read_text()
    assert report.startswith("# Sweep: 2 trials, eval/accuracy (maximize)")
    assert "hydra/sweeper=priorities" in report and "| web_cn.priority |" in report.replace(" | web_en", " |")
    assert (sweep / "sweep.png").stat().st_size > 10_000
    sweep_priorities = [json.loads((t / "score.json").read_text())["priorities"] for t in trials]
    assert all(p["sft"] == 1 for p in sweep_priorities) and sweep_priorities[0] != sweep_priorities[1]


def test_the_report_lists_only_what_varied_and_ranks_by_direction(tmp_path):
    for number, (loss, web) in enumerate([(2.5, 32), (1.5, 4), (2.0, 8)]):
        folder = tmp_path / str(number)
        folder.mkdir()
        record = {
            "objective": "train/loss",
            "value": loss,
            "direction": "minimize",
            "priorities": {"web_cn": web, "sft": 1},
            "overrides": [f"data.sources.web_cn.priority={web}", "trainer.max_steps=2"],
            "run_dir": str(folder),
        }
        (folder / "score.json").write_text(json.dumps(record))
    path = write_sweep_report(tmp_path, "python train.py -m data.sources.web_cn.priority=32,4,8")
    lines = path.read_text().splitlines()
    table = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[1] for row in table] == ["1", "2", "0"]  # lowest loss first
    assert "| rank | trial | train/loss | 95% CI | web_cn.priority |" in lines
    records = [json.loads((tmp_path / str(i) / "score.json").read_text()) for i in range(3)]
    assert list(parameters(records)) == ["web_cn.priority"]


def test_the_priorities_sweeper_is_documented_and_maximizes():
    text = (ROOT / "conf" / "hydra" / "sweeper" / "priorities.yaml").read_text()
    assert text.startswith("# python train.py -m hydra/sweeper=priorities")
    config = yaml.safe_load(text)
    assert config["direction"] == "maximize" and config["params"]["evaluate_after"] is True
    searched = [k for k, v in config["params"].items() if str(v).startswith("tag(log")]
    assert len(searched) == 8 and config["params"]["data.sources.sft.priority"] == 1  # nine, relative to SFT's


def test_a_source_without_a_priority_is_recorded_with_its_default_and_reported(tmp_path):
    data = huatuo.asset_path("demo/huatuo2_demo.json")
    for number, web in enumerate([4, 8]):
        cfg = OmegaConf.create(
            {
                "data": {
                    "sources": {
                        "web_cn": {"paths": [data], "format": "huatuo_json", "priority": web},
                        "sft": {"paths": [data], "format": "huatuo_json"},
                    }
                }
            }  # fmt: skip
        )  # sft names no priority and no epochs: the sampler gives it SourceSpec's 1.0 of each
        write_trial(tmp_path / str(number), cfg, "train/loss", 2.0 - number, "minimize")
    trial = json.loads((tmp_path / "0" / "score.json").read_text())
    assert trial["priorities"] == {"web_cn": 4, "sft": 1.0} and trial["epochs"] == {"web_cn": 1.0, "sft": 1.0}
    report = write_sweep_report(tmp_path, "python train.py -m data.sources.web_cn.priority=4,8").read_text()
    assert "- best priorities: web_cn 8, sft 1" in report
