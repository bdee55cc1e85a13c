"""The unify stage against a real ``transformers serve`` of a tiny random checkpoint on 127.0.0.1.

The model writes gibberish, deterministically (greedy decoding): with the Chinese and wording checks off and
``question.max_chars=20``, some of the demo passages pass and some are rejected, which is what the accounting needs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

import huatuo
from huatuo.data.sources import LoadReport, SourceSpec, iter_conversations
from huatuo.unify.run import unify
from tests.faultproxy import FaultProxy
from tests.helpers import ROOT, compose_config, run_script
from tests.servers import make_tiny_checkpoint, transformers_serve

pytestmark = pytest.mark.slow

DEMO = Path(huatuo.asset_path("demo/corpus_passages.jsonl"))
DEMO_IDS = {json.loads(line)["id"] for line in DEMO.read_text().splitlines()}
# Gibberish-tolerant filters (see the module docstring) and short replies, so a run takes seconds on a CPU.
SERVE = [
    "question.params.max_tokens=8",
    "answer.params.max_tokens=8",
    "question.min_chinese_share=0",
    "question.forbidden=[]",
    "question.max_chars=20",
    "endpoint.max_concurrency=4",
    "endpoint.backoff_initial=0.05",
    "endpoint.backoff_max=0.5",
    "progress=false",
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    checkpoint = make_tiny_checkpoint(root / "ckpt")
    previous = os.environ.get("OMP_NUM_THREADS")
    # On a small shared CPU, torch's spinning worker threads make serving ~20x slower; one thread is plenty here.
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        with transformers_serve(checkpoint) as url:
            yield SimpleNamespace(url=url, model=str(checkpoint), root=root)
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous


@pytest.fixture(scope="module")
def reference(served, tmp_path_factory):
    """A clean in-process run over the demo corpus: id -> (question, answer) or the rejection reason."""
    folder = tmp_path_factory.mktemp("reference")
    unify(run_config(folder, served.url, served.model))
    return outcomes(folder)


def run_config(folder: Path, base_url: str, model: str, *overrides: str, input_path: Path = DEMO):
    return compose_config(
        "unify",
        [
            f"input={input_path}",
            f"output={folder / 'out' / 'unified.jsonl'}",
            f"endpoint.base_url={base_url}",
            f"endpoint.model={model}",
            f"paths.run_dir={folder / 'run'}",
            *SERVE,
            *overrides,
        ],
    )


def records(folder: Path) -> tuple[list[dict], list[dict]]:
    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []

    return read(folder / "out" / "unified.jsonl"), read(folder / "out" / "unified.rejected.jsonl")


def outcomes(folder: Path) -> dict:
    accepted, rejected = records(folder)
    ids = [r["id"] for r in accepted + rejected]
    assert len(ids) == len(set(ids)), f"duplicated ids: {[i for i, n in Counter(ids).items() if n > 1]}"
    for path in (folder / "out").glob("*.jsonl"):
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path} ends in a torn line"
    return {r["id"]: (r["question"], r["answer"]) for r in accepted} | {r["id"]: r["reason"] for r in rejected}


def test_the_demo_corpus_through_a_real_server(reference, tmp_path):
    assert set(reference) == DEMO_IDS
    accepted = {k: v for k, v in reference.items() if isinstance(v, tuple)}
    rejected = {k: v for k, v in reference.items() if isinstance(v, str)}
    assert accepted and rejected, "the test filters should accept some gibberish and reject some"
    assert set(rejected.values()) == {"question_too_long"}
    assert all(len(question) <= 20 and answer for question, answer in accepted.values())


def test_the_cli_keeps_a_planted_key_out_of_every_file_and_log(served, reference, tmp_path):
    key = "sk-planted-" + secrets.token_hex(16)
    with FaultProxy(served.url, {}, seed=0) as proxy:
        result = run_script(
            [
                "-m",
                "huatuo.unify",
                f"input={DEMO}",
                f"output={tmp_path / 'out' / 'unified.jsonl'}",
                f"endpoint.base_url={proxy.base_url}",
                f"endpoint.model={served.model}",
                f"hydra.run.dir={tmp_path / 'run'}",
                *SERVE,
            ],
            env={"OPENAI_API_KEY": key},
            timeout=300,
        )
    assert outcomes(tmp_path) == reference
    accepted, rejected = records(tmp_path)
    spec = SourceSpec(name="unified", paths=[str(tmp_path / "out" / "unified.jsonl")])
    assert len(list(iter_conversations(spec, "raise", LoadReport()))) == len(accepted)

    produced = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.relative_to(tmp_path).as_posix() for p in produced}
    assert {"run/.hydra/config.yaml", "run/.hydra/hydra.yaml", "run/.hydra/overrides.yaml", "run/unify.log"} <= names
    assert "read from $OPENAI_API_KEY" in (tmp_path / "run" / "unify.log").read_text()
    for path in produced + [p for p in served.root.rglob("*.log")]:
        assert key.encode() not in path.read_bytes(), f"the key leaked into {path}"
    assert key not in result.stdout and key not in result.stderr

    # On the wire: the key is the Authorization header of every request, and nowhere else.
    assert len(proxy.log) == sum(r["requests"] for r in accepted + rejected)
    for request in proxy.log:
        assert request.headers["authorization"] == f"Bearer {key}"
        assert not [name for name, value in request.headers.items() if key in value and name != "authorization"]
        assert key.encode() not in request.body


def test_faults_in_front_of_a_real_server_change_no_outcome(served, reference, tmp_path):
    faults = {
        "429": 0.06,
        "429_retry_after": 0.05,
        "500": 0.08,
        "hang": 0.04,
        "malformed": 0.06,
        "no_choices": 0.04,
        "drop": 0.05,
    }
    with FaultProxy(served.url, faults, seed=7, hang=4.0, retry_after=0) as proxy:
        stats = unify(
            run_config(tmp_path, proxy.base_url, served.model, "endpoint.timeout=3", "endpoint.max_attempts=8")
        )
    injected = Counter({fault: n for fault, n in proxy.counts.items() if fault != "forwarded"})
    assert set(injected) == set(faults), "the seed should exercise every fault kind"
    failures = Counter(stats["failures"])
    assert failures["http 429"] == injected["429"] + injected["429_retry_after"]
    assert failures["http 500"] == injected["500"]
    assert failures["malformed reply"] == injected["malformed"] + injected["no_choices"]
    assert failures["connection error"] == injected["drop"]
    assert failures["timeout"] >= injected["hang"]
    # Faults only cost time: every passage ends exactly as in the clean run (greedy decoding is deterministic),
    # save any whose request ran out of tries, which must say so.
    got = outcomes(tmp_path)
    assert set(got) == DEMO_IDS
    gave_up = {k for k, v in got.items() if v == "endpoint_error"}
    assert {k: v for k, v in got.items() if k not in gave_up} == {k: reference[k] for k in DEMO_IDS - gave_up}
    assert len(gave_up) <= 1


def line_count(folder: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (folder / "out").glob("*.jsonl"))


def test_sigkill_mid_run_then_rerun_accounts_for_every_passage_once(served, reference, tmp_path):
    # Four copies of the demo corpus under new ids, so the run lasts long enough to be killed twice.
    demo = [json.loads(line) for line in DEMO.read_text().splitlines()]
    corpus = tmp_path / "corpus.jsonl"
    copies = [{"id": f"{r['id']}-{k}", "text": r["text"]} for k in range(4) for r in demo]
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in copies), encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "huatuo.unify",
        f"input={corpus}",
        f"output={tmp_path / 'out' / 'unified.jsonl'}",
        f"endpoint.base_url={served.url}",
        f"endpoint.model={served.model}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *SERVE,
        "endpoint.max_concurrency=2",
    ]
    kills = 0
    for _ in range(2):
        target = line_count(tmp_path) + 12
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while line_count(tmp_path) < target and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        kills += process.wait(timeout=30) == -signal.SIGKILL
        assert target <= line_count(tmp_path) < len(copies), "the kill should land mid-run"
        outcomes(tmp_path)  # no duplicate and no torn line so far
    assert kills == 2
    run_script(command[1:], timeout=300)
    got = outcomes(tmp_path)
    assert set(got) == {r["id"] for r in copies}
    assert all(got[f"{i}-{k}"] == reference[i] for i in DEMO_IDS for k in range(4))
