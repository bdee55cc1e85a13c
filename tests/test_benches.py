"""The benchmarks in bench/ still run against the code they measure (tiny budgets; no timing is asserted).

A benchmark that fell behind an API change would otherwise only be found the next time someone measures.
"""

from __future__ import annotations

import math
import re

import pytest

from tests.helpers import BAICHUAN_TOKENIZER, ROOT, SHARED, run_script

DIALOGUES = SHARED / "data" / "medical_dialogue_zh" / "internal_medicine_2000.csv"

pytestmark = pytest.mark.slow

CASES = {
    "train_step": (
        ["--steps", "36", "--warmup", "2", "--rounds", "1", "--override", "data.max_len=128"],
        [r"framework overhead, median of rounds: wall ([-+]\d+\.\d)%", r"isolated/not: wall (\d+\.\d+)"],
    ),
    "chat": (
        ["--new-tokens", "16", "--repeats", "1"],
        [r"\| tiny-demo 256x4 \| chat.py \| (\d+\.\d+) ms", r"\| tiny-demo 256x4 \| stream=True \| (\d+\.\d+) ms"],
    ),
    "eval": (
        ["--hidden", "64", "--layers", "2", "--max-new-tokens", "8", "--repeats", "1", "--generate-repeats", "1"]
        + ["--endpoint"],  # the same model behind transformers serve, 16 in flight
        [
            r"batched vs unbatched loglik: (\d+\.\d)x",
            r"identical predictions: (48)/48",
            r"endpoint vs in process: (\d+\.\d+)x questions per second; failed requests: (0)",
        ],
    ),
    "unify": (["--latency", "0.05", "--passages", "8", "--concurrency", "4"], [r"ideal speedup (4)x"]),
    "decontaminate": (
        ["--documents", "3000", "--questions", "50", "--planted", "5"],
        [r"planted found: (5)/5; other documents flagged: 0", r"n-grams, (\d+\.\d) MiB; peak RSS"],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_and_prints_its_numbers(name):
    args, patterns = CASES[name]
    result = run_script([f"bench/{name}.py", *args], timeout=600)
    for pattern in patterns:
        found = re.search(pattern, result.stdout)
        assert found, f"bench/{name}.py printed no line matching {pattern!r}:\n{result.stdout[-2000:]}"
        assert math.isfinite(float(found.group(1)))


@pytest.mark.skipif(not BAICHUAN_TOKENIZER.is_file(), reason="needs ../shared/assets/baichuan2/tokenizer.model")
def test_tokenizer_benchmark_finds_no_piece_unlike_sentencepiece():
    result = run_script(["bench/tokenizer.py", "--repeat", "1"], timeout=600)
    assert "identical ids on" in result.stdout and ": True" in result.stdout
    assert "huatuo: 0 of" in result.stdout


@pytest.mark.skipif(not DIALOGUES.is_file(), reason="needs ../shared/data/medical_dialogue_zh")
def test_the_end_to_end_prepare_benchmark_runs_the_command_beside_the_baseline():
    tokenizer = ROOT / "huatuo" / "assets" / "tiny_tokenizer"
    args = ["--end-to-end", "--tokenizer", str(tokenizer), "--e2e-samples", "1500", "--compare-max", "1500"]
    result = run_script(["bench/prepare.py", *args, "--max-len", "512"], timeout=900)
    for label in ("huatuo, cold", "huatuo, warm tokenizer", "per-sample baseline"):
        assert "| 1,500 (" in result.stdout and f"| {label} |" in result.stdout, result.stdout[-2000:]
    found = re.search(r"huatuo, warm tokenizer is (\d+\.\d+)x faster than the per-sample baseline", result.stdout)
    assert found and math.isfinite(float(found.group(1)))
