"""How fast the commands answer before any real work: ``--help``, ``--cfg job`` and a bad-config error.

    python bench/startup.py              # 5 runs of each, median wall time, against `python -c "import torch"`
    python bench/startup.py --repeats 9

Each command runs as a fresh process, as a user runs it; the baseline is the same interpreter importing torch alone
(what any command that touched the model would pay first). Target: every row under 2 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cases(scratch: Path) -> list[tuple[str, list[str], int]]:
    """(label, arguments after the interpreter, expected exit status)."""
    empty = scratch / "empty"
    empty.mkdir(exist_ok=True)
    train = str(ROOT / "train.py")
    return [
        ('python -c "import torch"', ["-c", "import torch"], 0),
        ("train.py --help", [train, "--help"], 0),
        ("train.py --cfg job", [train, "--cfg", "job"], 0),
        ("train.py data.max_len=3 (bad config)", [train, "data.max_len=3"], 2),
        ("train.py a missing data file", [train, "data.sources.sft.paths=[/no/such.jsonl]"], 2),
        ("-m huatuo.prepare a missing data file", ["-m", "huatuo.prepare", "data.sources.sft.paths=[/no.jsonl]"], 2),
        ("evaluate.py model_path=<empty folder>", [str(ROOT / "evaluate.py"), f"model_path={empty}"], 2),
        ("chat.py without a model", [str(ROOT / "chat.py"), "message=hi"], 2),
        ("-m huatuo.unify without input", ["-m", "huatuo.unify"], 2),
        ("-m huatuo.plan --help", ["-m", "huatuo.plan", "--help"], 0),
    ]


def timed(arguments: list[str], expected: int, cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *arguments], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != expected:
        raise SystemExit(f"{arguments}: exit {result.returncode}, expected {expected}\n{result.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        rows = []
        for label, arguments, expected in cases(scratch):
            timed(arguments, expected, scratch)  # warm the file cache
            samples = [timed(arguments, expected, scratch) for _ in range(args.repeats)]
            rows.append((label, statistics.median(samples), min(samples)))
    baseline = rows[0][1]
    print(f"| command | median s | best s | vs import torch |  ({args.repeats} runs each)")
    print("| --- | ---: | ---: | ---: |")
    for label, median, best in rows:
        print(f"| `{label}` | {median:.2f} | {best:.2f} | {median / baseline:.2f}x |")


if __name__ == "__main__":
    main()
