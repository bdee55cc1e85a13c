"""End to end: train(cfg) on the demo, the export, DDP on CPU, and Hydra multiruns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from huatuo.core.template import build_prompt
from huatuo.training.run import train
from tests.helpers import ROOT, run_script


def test_train_end_to_end_writes_a_checkpoint_and_an_export_plain_transformers_loads(train_config, tmp_path):
    cfg = train_config()
    metrics = train(cfg)
    run = Path(cfg.paths.run_dir)
    assert metrics["global_step"] == 3
    assert 0 < metrics["train/loss"] < 10
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "step0000002.ckpt").is_file()
    assert (run / "stats.json").is_file() and (run / "schedule.png").is_file()
    assert yaml.safe_load((run / "resolved_config.yaml").read_text())["data"]["sources"]["sft"]["priority"] == 1

    export = run / "export"
    assert (export / "model.safetensors").is_file()
    assert not list(export.glob("*.bin")) and not list(export.glob("*.py"))  # safetensors, no remote code
    generation = json.loads((export / "generation_config.json").read_text())
    assert (generation["temperature"], generation["top_p"], generation["repetition_penalty"]) == (0.3, 0.7, 1.1)

    tokenizer = AutoTokenizer.from_pretrained(export, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=False)
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "q2"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<问>：q\n<答>：a\n<问>：q2\n<答>：" == build_prompt(messages)
    ids = tokenizer(rendered, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_loss_decreases_on_the_demo(train_config):
    cfg = train_config(
        "trainer.max_steps=25", "optimizer.lr=3e-3", "scheduler.warmup_ratio=0.0", "export.enabled=false", "logger=csv"
    )
    train(cfg)
    losses = read_losses(Path(cfg.paths.run_dir) / "metrics.csv")
    assert len(losses) == 25
    assert losses[0] > 8.0  # ln(4096) = 8.32 at random init
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5


def read_losses(metrics_csv: Path) -> list[float]:
    rows = list(csv.DictReader(metrics_csv.open()))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def test_the_same_seed_gives_the_same_losses(train_config, tmp_path):
    first = train_config("export.enabled=false", "logger=csv")
    train(first)
    second = train_config("export.enabled=false", "logger=csv", f"paths.run_dir={tmp_path / 'second'}")
    train(second)
    a, b = (read_losses(Path(c.paths.run_dir) / "metrics.csv") for c in (first, second))
    assert len(a) == 3 and a == b


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tmp_path):
    run = tmp_path / "ddp"
    run_script(
        [
            "train.py",
            "strategy=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_steps=2",
            "data.micro_batch_size=2",
            "data.max_len=256",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=ROOT,
    )
    assert (run / "export" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert "train/loss" in (run / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_multirun_sweep_writes_one_export_and_resolved_config_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    run_script(
        [
            "train.py",
            "-m",
            "data.sources.sft.priority=1,8",
            "trainer.max_steps=2",
            "data.micro_batch_size=2",
            "data.max_len=256",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "evaluate_with=['eval=demo','eval.limit=5']",
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=ROOT,
    )
    priorities = []
    for job in ("0", "1"):
        assert (sweep / job / "export" / "model.safetensors").is_file()
        resolved = yaml.safe_load((sweep / job / "resolved_config.yaml").read_text())
        priorities.append(resolved["data"]["sources"]["sft"]["priority"])
        stats = json.loads((sweep / job / "stats.json").read_text())
        assert stats["sources"]["sft"]["priority"] == priorities[-1]
    assert priorities == [1, 8]
    # different priorities give different prepared data (different fingerprints)
    fingerprints = {json.loads((sweep / j / "stats.json").read_text())["fingerprint"] for j in ("0", "1")}
    assert len(fingerprints) == 2
    # evaluate.py run=<job folder> scores that job's export on the suite the run names (evaluate_with)
    scored = tmp_path / "scored"
    run_script(["evaluate.py", f"run={sweep / '1'}", f"hydra.run.dir={scored}", "progress=false"], cwd=ROOT)
    resolved = yaml.safe_load((scored / "resolved_config.yaml").read_text())
    assert resolved["model_path"] == str(sweep / "1" / "export") and resolved["run"] == str(sweep / "1")
    assert json.loads((scored / "results.json").read_text())["summary"]["n"] == 5
