"""The prepare stage: rows in priority order with the source of every document, the cache, stats and schedule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk

from huatuo import asset_path
from huatuo.data.encoder import ConversationEncoder
from huatuo.data.prepare import log_to_wandb, prepare, publish, run
from huatuo.data.sampler import PrioritySampler
from huatuo.data.settings import PackingSettings, sources_from_config
from huatuo.data.sources import LoadReport, iter_conversations
from tests.helpers import ROOT, compose_config, run_script

DEMO = asset_path("demo/huatuo2_demo.json")
PAPER = {  # the demo file's nine sources with the paper's priorities
    "web_cn": 32,
    "web_en": 32,
    "literature_cn": 16,
    "literature_en": 16,
    "encyclopedia_cn": 8,
    "encyclopedia_en": 8,
    "books_cn": 4,
    "books_en": 4,
    "sft": 1,
}


def demo_sources(**changes) -> dict:
    sources = {n: {"paths": [DEMO], "format": "huatuo_json", "priority": p, "epochs": 1} for n, p in PAPER.items()}
    sources["sft"]["epochs"] = 3
    for key, value in changes.items():
        name, field = key.split("__")
        sources[name][field] = value
    return sources


@pytest.fixture(scope="module")
def greedy_demo(tmp_path_factory, tiny_tokenizer):
    specs = sources_from_config(demo_sources())
    settings = PackingSettings(max_len=512, packing="greedy", window=16, seed=7)
    return specs, settings, prepare(specs, tiny_tokenizer, settings, tmp_path_factory.mktemp("greedy"))


def test_rows_hold_every_document_in_priority_order_with_its_source(greedy_demo, tiny_tokenizer):
    specs, settings, prepared = greedy_demo
    rows = load_from_disk(str(prepared.dataset_dir)).with_format("numpy")
    sizes = [prepared.stats["sources"][s.name]["samples"] for s in specs]
    order = PrioritySampler(sizes, [s.priority for s in specs], [s.epochs for s in specs], settings.seed).order()
    sources = np.concatenate(list(rows["doc_sources"]))
    samples = np.concatenate(list(rows["doc_samples"]))
    np.testing.assert_array_equal(sources, order.source)  # greedy keeps the order exactly
    np.testing.assert_array_equal(samples, order.sample)
    # every document's tokens are exactly its conversation encoded alone
    encoder = ConversationEncoder(tiny_tokenizer, settings.max_len)
    conversations = [[t for _, t in iter_conversations(spec, "raise", LoadReport())] for spec in specs]
    for r in range(0, len(rows), 7):
        row = rows[r]
        assert row["n_tokens"] == len(row["input_ids"]) == row["doc_lengths"].sum() <= settings.max_len
        start = 0
        for source, sample, n in zip(row["doc_sources"], row["doc_samples"], row["doc_lengths"], strict=True):
            alone = encoder.encode(conversations[source][sample])
            np.testing.assert_array_equal(row["input_ids"][start : start + n], alone.input_ids)
            np.testing.assert_array_equal(row["labels"][start : start + n], alone.labels)
            start += n
    assert json.loads((prepared.path / "sources.json").read_text()) == list(PAPER)


def test_stats_count_samples_tokens_and_fill(greedy_demo):
    _, settings, prepared = greedy_demo
    stats = json.loads((prepared.path / "stats.json").read_text())
    assert stats == prepared.stats
    rows = load_from_disk(str(prepared.dataset_dir))
    n_tokens = np.asarray(rows["n_tokens"])
    sources = stats["sources"]
    assert [sources[n]["samples"] for n in PAPER] == [32, 32, 30, 30, 30, 30, 30, 30, 36]
    assert sources["sft"]["pool_items"] == 108 and sources["web_cn"]["pool_items"] == 32
    assert sum(s["pool_tokens"] for s in sources.values()) == n_tokens.sum() == stats["packing"]["tokens"]
    assert stats["packing"]["rows"] == len(rows)
    assert stats["packing"]["fill"] == pytest.approx(n_tokens.sum() / (len(rows) * settings.max_len))
    assert stats["packing"]["max_order_displacement_rows"] == 0
    assert all(s["skipped"] == {} for s in sources.values())
    # the curriculum: high priorities early, SFT late
    assert sources["web_cn"]["mean_position"] < sources["books_cn"]["mean_position"] < sources["sft"]["mean_position"]
    shares = np.asarray(stats["schedule"]["shares"])
    assert shares.shape == (stats["schedule"]["bins"], 9) and np.allclose(shares.sum(axis=1), 1, atol=1e-3)
    assert shares[-1, 8] > 0.9 and shares[0, 8] < 0.2  # SFT's share of the last and first slice
    assert (prepared.path / "schedule.png").stat().st_size > 20_000


def test_pinned_demo_order_and_packing(tiny_tokenizer, tmp_path):
    # Pinned so that a change to the order law, the template or the packing is noticed.
    specs = sources_from_config(demo_sources())
    prepared = prepare(specs, tiny_tokenizer, PackingSettings(max_len=512, seed=42), tmp_path)
    rows = load_from_disk(str(prepared.dataset_dir))
    first = list(zip(rows[0]["doc_sources"], rows[0]["doc_samples"], strict=True))
    assert first == PINNED_FIRST_ROW
    assert (prepared.stats["packing"]["rows"], prepared.stats["packing"]["tokens"]) == PINNED_ROWS_TOKENS


PINNED_FIRST_ROW = [(1, 19), (0, 27), (2, 20)]  # web_en, web_cn, literature_cn: the priority-32/16 sources first
PINNED_ROWS_TOKENS = (174, 80464)


def test_cache_is_reused_and_keyed_by_content_not_by_path(tiny_tokenizer, tmp_path):
    settings = PackingSettings(max_len=512)
    copy = tmp_path / "elsewhere.json"
    copy.write_bytes(Path(DEMO).read_bytes())
    first = prepare(sources_from_config(demo_sources()), tiny_tokenizer, settings, tmp_path / "cache")
    again = prepare(sources_from_config(demo_sources()), tiny_tokenizer, settings, tmp_path / "cache")
    assert not first.reused and again.reused and again.fingerprint == first.fingerprint
    moved = sources_from_config({n: {**v, "paths": [str(copy)]} for n, v in demo_sources().items()})
    assert prepare(moved, tiny_tokenizer, settings, tmp_path / "cache").reused


@pytest.mark.parametrize(
    "change",
    ["content", "priority", "epochs", "seed", "max_len", "packing", "open_rows", "tokenizer", "format", "key"],
)
def test_fingerprint_changes_with_everything_that_changes_the_rows(change, tiny_tokenizer, tmp_path):
    from huatuo.data.prepare import fingerprint

    copy = tmp_path / "demo.json"
    copy.write_bytes(Path(DEMO).read_bytes())
    sources = demo_sources(**{f"{n}__paths": [str(copy)] for n in PAPER})
    settings = PackingSettings(max_len=512)
    before = fingerprint(sources_from_config(sources), tiny_tokenizer, settings)
    tokenizer = tiny_tokenizer
    if change == "content":
        copy.write_text(copy.read_text(encoding="utf-8").replace("感冒", "流感", 1), encoding="utf-8")
    elif change in ("priority", "epochs"):
        sources["sft"][change] = 2
    elif change in ("seed", "max_len", "open_rows"):
        settings = PackingSettings(**{"max_len": 512, change: {"seed": 1, "max_len": 256, "open_rows": 4}[change]})
    elif change == "packing":
        settings = PackingSettings(max_len=512, packing="greedy")
    elif change == "tokenizer":
        import copy as copying

        tokenizer = copying.deepcopy(tiny_tokenizer)
        tokenizer.add_tokens(["<新词>"])
    elif change == "format":
        sources["sft"]["format"] = "auto"
    else:
        sources["sft"]["key"] = "web_cn"
    assert fingerprint(sources_from_config(sources), tokenizer, settings) != before


def test_run_publishes_stats_and_schedule_into_the_run_folder(tmp_path):
    cfg = compose_config(
        "prepare", [f"paths.run_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", "data.max_len=256"]
    )
    prepared = run(cfg)
    for name in ("stats.json", "schedule.png"):
        assert (tmp_path / "run" / name).read_bytes() == (prepared.path / name).read_bytes()
    assert prepared.path.parent == tmp_path / "cache" / "prepared"
    assert publish(prepared, tmp_path / "other") == [
        tmp_path / "other" / "stats.json",
        tmp_path / "other" / "schedule.png",
    ]


@pytest.mark.slow
def test_the_prepare_command_prints_where_it_wrote(tmp_path):
    result = run_script(
        ["-m", "huatuo.prepare", f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=ROOT,
    )
    output = result.stdout + result.stderr
    assert "wrote prepared data:" in output
    assert str(tmp_path / "run" / "stats.json") in output and str(tmp_path / "run" / "schedule.png") in output
    again = run_script(
        ["-m", "huatuo.prepare", f"hydra.run.dir={tmp_path / 'run2'}", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=ROOT,
    )
    assert "reused prepared data:" in again.stdout + again.stderr


@pytest.mark.slow
def test_log_to_wandb_logs_the_schedule_table_and_stats_offline(tmp_path, monkeypatch, tiny_tokenizer):
    from huatuo.training.tracking import wandb_logger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    prepared = prepare(sources_from_config(demo_sources()), tiny_tokenizer, PackingSettings(max_len=256), tmp_path)
    logger = wandb_logger(project="huatuo-test", save_dir=str(tmp_path / "wandb"), mode="offline")
    log_to_wandb(prepared, logger)
    run_dir = Path(logger.experiment.dir)
    logger.experiment.finish()
    assert (run_dir / "stats.json").read_bytes() == (prepared.path / "stats.json").read_bytes()
    media = list((run_dir / "media").rglob("*"))
    assert any(p.suffix == ".png" for p in media) and any("sources" in p.name for p in media)
