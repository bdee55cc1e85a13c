"""The bad-input catalog, run as a new user runs the commands: each case ends with exit status 2, no traceback, and
one message whose first line says what is wrong (the lines after it name the file or key, the value and the fix).

``HYDRA_FULL_ERROR=1`` and ``verbose=true`` bring the traceback back for whoever wants it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

BIN = Path(sys.executable).parent
ENV = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "OPENAI_API_KEY")}
ENV["PYTHONUNBUFFERED"] = "1"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli")
    broken = folder / "broken.jsonl"
    broken.write_text('["头痛怎么办？", "多休息。"]\n["咳嗽" "多喝水"]\n', encoding="utf-8")
    exam = folder / "exam.jsonl"
    exam.write_text(
        '{"question": "q", "option": {"A": "a", "B": "b"}, "answer": "A"}\n{"question": \n', encoding="utf-8"
    )
    corpus = folder / "corpus.jsonl"
    corpus.write_text('{"id": 1, "text": "高血压患者应当限制食盐摄入。"}\n{"id": 2, "text": 3}\n', encoding="utf-8")
    (folder / "empty").mkdir()
    rubric = folder / "rubric.txt"
    rubric.write_text("{question}\n[1]\n{answer_1}\n[2]\n{answer2}\n", encoding="utf-8")
    return {
        "dir": folder,
        "broken": broken,
        "exam": exam,
        "corpus": corpus,
        "empty": folder / "empty",
        "rubric": rubric,
    }


def run(command: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=300)


def script(name: str) -> list[str]:
    return [sys.executable, str(ROOT / name)]


def module(name: str) -> list[str]:
    return [sys.executable, "-m", name]


def paths(files, name: str) -> list[str]:
    return [f"hydra.run.dir={files['dir'] / 'runs' / name}", f"paths.cache_dir={files['dir'] / 'cache'}"]


# (case, command, arguments given the fixture's files, how the message's first line starts, a phrase of the rest)
CATALOG = [
    (
        "train: a data file that does not exist",
        script("train.py"),
        lambda f: ["data.sources.sft.paths=[/no/such/sft.jsonl]"],
        "the config cannot run:",
        "  - data.sources.sft.paths: file '/no/such/sft.jsonl' does not exist; fix the path or remove it",
    ),
    (
        "train: an unknown W&B mode",
        script("train.py"),
        lambda f: ["logger=wandb", "logger.wandb.mode=bogus", *paths(f, "tw")],
        "the config cannot run:",
        "  - logger.wandb.mode='bogus': use auto, online or offline",
    ),
    (
        "train: a broken JSONL line",
        script("train.py"),
        lambda f: [f"data.sources.sft.paths=[{f['broken']}]", "data.sources.sft.format=jsonl", *paths(f, "t1")],
        "source 'sft' has 1 bad record(s):",
        "broken.jsonl:2: malformed JSON: Expecting ',' delimiter at column 7",
    ),
    (
        "train: data.max_len too small for the template",
        script("train.py"),
        lambda f: ["data.max_len=3"],
        "the config cannot run:",
        "  - data.max_len=3 cannot hold even a one-token exchange in the HuatuoGPT-II template",
    ),
    (
        "train: a model path that is an empty folder",
        script("train.py"),
        lambda f: [f"backbone.model.path={f['empty']}"],
        "the config cannot run:",
        "has no config.json, so it is not a model folder",
    ),
    (
        "prepare: a data file that does not exist",
        module("huatuo.prepare"),
        lambda f: ["data.sources.web_cn.paths=[/no/such/web.jsonl]"],
        "bad data config:",
        "  - data.sources.web_cn.paths: file '/no/such/web.jsonl' does not exist; fix the path or remove it",
    ),
    (
        "prepare: a broken JSONL line",
        module("huatuo.prepare"),
        lambda f: [f"data.sources.sft.paths=[{f['broken']}]", "data.sources.sft.format=jsonl", *paths(f, "p1")],
        "source 'sft' has 1 bad record(s):",
        "Fix the records, or set data.on_error=skip to drop them (they are counted in stats.json).",
    ),
    (
        "evaluate: a model path that is an empty folder",
        script("evaluate.py"),
        lambda f: [f"model_path={f['empty']}"],
        "the evaluate config cannot run:",
        "has no config.json, so it is not a model folder",
    ),
    (
        "evaluate: an exam file with a broken line",
        script("evaluate.py"),
        lambda f: ["eval=mcq", f"eval.data={f['exam']}", *paths(f, "e1")],
        "{dir}/exam.jsonl:2: malformed JSON: Expecting value at column 14",
        "fix the line (one JSON value per line)",
    ),
    (
        "evaluate: a server asked for log-likelihoods, with no model name",
        script("evaluate.py"),
        lambda f: ["eval.backend=endpoint", *paths(f, "e2")],
        "the evaluate config cannot run:",
        "eval.endpoint.model=None: name the model the endpoint serves",
    ),
    (
        "evaluate: a judge rubric with a misspelt placeholder",
        script("evaluate.py"),
        lambda f: ["eval=judge_inst", f"eval.model_b.answers={f['exam']}", f"eval.judge.prompt_file={f['rubric']}"],
        "the evaluate config cannot run:",
        "unknown placeholder(s) {answer2}",
    ),
    (
        "evaluate: a mistyped judge setting, named before either model generates",
        script("evaluate.py"),
        lambda f: ["eval=judge_inst", f"eval.model_b.answers={f['exam']}", "+eval.judge.max_concurency=4"],
        "the evaluate config cannot run:",
        "  - eval.judge.max_concurency is not a setting (did you mean 'max_concurrency'?)",
    ),
    (
        "evaluate: run= a folder that is not a train run",
        script("evaluate.py"),
        lambda f: [f"run={f['empty']}"],
        "run={empty}: {empty}/.hydra/config.yaml not found; give the folder a train run wrote",
        "use model_path=DIR for any other model",
    ),
    (
        "chat: no model to chat with",
        script("chat.py"),
        lambda f: ["message=hi"],
        "the chat config cannot run:",
        "model_path is required: pass model_path=DIR",
    ),
    (
        "plan: a model path that does not exist",
        module("huatuo.plan"),
        lambda f: ["backbone.model.path=/no/such/model"],
        "backbone.model.path=/no/such/model: no such folder; check the path (an export folder is <run dir>/export)",
        None,
    ),
    (
        "decontaminate: a suite that does not exist and an n too small",
        module("huatuo.decontaminate"),
        lambda f: ["suites=[demoo]", "n=2"],
        "the decontaminate config cannot run:",
        "  - suites: 'demoo' is neither a suite in conf/eval/ (did you mean 'demo'?) nor an exam file or folder",
    ),
    (
        "decontaminate: suites given as one name, not a list",
        module("huatuo.decontaminate"),
        lambda f: ["suites=demo"],
        "the decontaminate config cannot run:",
        "  - suites='demo' must be a list of suite names or exam paths, e.g. suites=[demo]",
    ),
    (
        "decontaminate: a training file that does not exist",
        module("huatuo.decontaminate"),
        lambda f: ["data.sources.sft.paths=[/no/such/sft.jsonl]"],
        "the decontaminate config cannot run:",
        "  - data.sources.sft.paths: file '/no/such/sft.jsonl' does not exist; fix the path or remove it",
    ),
    (
        "decontaminate: an exam file with a broken line",
        module("huatuo.decontaminate"),
        lambda f: [f"suites=[{f['exam']}]", *paths(f, "d1")],
        "{dir}/exam.jsonl:2: malformed JSON: Expecting value at column 14",
        "fix the line (one JSON value per line)",
    ),
    (
        "decontaminate: a broken training line",
        module("huatuo.decontaminate"),
        lambda f: [f"data.sources.sft.paths=[{f['broken']}]", "data.sources.sft.format=jsonl", *paths(f, "d2")],
        "source 'sft' has 1 bad record(s):",
        "broken.jsonl:2: malformed JSON",
    ),
    (
        "prepare: data.decontaminate names no suite",
        module("huatuo.prepare"),
        lambda f: ["data.decontaminate=[pharmacistt]"],
        "bad data config:",
        "  - data.decontaminate: 'pharmacistt' is neither a suite in conf/eval/ (did you mean 'pharmacist'?)",
    ),
    (
        "train: evaluate_after with an Optuna sweep that minimizes",
        script("train.py"),
        lambda f: [
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=1",
            f"hydra.sweep.dir={f['dir'] / 'sw'}",
            "evaluate_after=true",
            "data.sources.sft.priority=interval(1,4)",
        ],  # fmt: skip
        "the config cannot run:",
        "hydra.sweeper.direction=minimize would drive it down; add hydra.sweeper.direction=maximize",
    ),
    (
        "evaluate: a contamination report that does not exist",
        script("evaluate.py"),
        lambda f: ["contamination=/no/such/contamination.json"],
        "the evaluate config cannot run:",
        "  - contamination='/no/such/contamination.json': no such file",
    ),
    (
        "unify: a required value left unset",
        module("huatuo.unify"),
        lambda f: [],
        "input is required (it is ??? in the config): pass it on the command line, input=...",
        None,
    ),
    (
        "unify: an input that does not exist and no key for the default endpoint",
        module("huatuo.unify"),
        lambda f: ["input=/no/such/corpus.jsonl", f"output={f['dir'] / 'out.jsonl'}", "endpoint.model=m"],
        "bad unify config:",
        "  - input='/no/such/corpus.jsonl': no such file",
    ),
    (
        "unify: a passage whose text is not a string",
        module("huatuo.unify"),
        lambda f: [
            f"input={f['corpus']}",
            f"output={f['dir'] / 'unified.jsonl'}",
            "endpoint.base_url=http://127.0.0.1:9/v1",  # never reached: the input is checked first
            "endpoint.model=m",
            *paths(f, "u1"),
        ],
        "1 bad input record(s):",
        "corpus.jsonl:2: field 'text' is int, not a string",
    ),
]


@pytest.mark.parametrize(("case", "command", "arguments", "first", "later"), CATALOG, ids=[c[0] for c in CATALOG])
def test_bad_input_gets_one_message_and_exit_status_2(files, case, command, arguments, first, later):
    result = run([*command, *arguments(files)], cwd=files["dir"])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    first = first.format(empty=files["empty"], dir=files["dir"])
    starts = [i for i, line in enumerate(lines) if line.startswith(first)]
    assert len(starts) == 1, result.stderr[-3000:]  # said once
    before = lines[: starts[0]]  # only log lines ("[time][logger][level] ...") may come before the message
    assert all(re.sub(r"\x1b\[[0-9;]*m", "", line).startswith("[") for line in before), result.stderr[-3000:]
    if later is not None:
        assert later in "\n".join(lines[starts[0] :])


def test_the_console_scripts_report_the_same_way(files):
    executable = shutil.which("huatuo-train", path=str(BIN)) or "huatuo-train"
    result = run([executable, "data.max_len=3"], cwd=files["dir"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the config cannot run:" in result.stderr.splitlines()


@pytest.mark.parametrize("how", ["HYDRA_FULL_ERROR=1", "verbose=true"])
def test_the_traceback_comes_back_when_asked_for(files, how):
    env, extra = dict(ENV), []
    if how.startswith("HYDRA"):
        env["HYDRA_FULL_ERROR"] = "1"
    else:
        extra.append(how)
    result = run([*script("train.py"), "data.max_len=3", *extra], cwd=files["dir"], env=env)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr
    assert "data.max_len=3 cannot hold" in result.stderr


def test_a_user_error_raised_inside_hydra_instantiate_is_unwrapped():
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from huatuo.core.cli import user_error
    from huatuo.core.errors import ConfigError

    with pytest.raises(InstantiationException) as caught:
        instantiate({"_target_": "huatuo.training.strategies.deepspeed_config", "stage": 5})
    assert isinstance(user_error(caught.value), ConfigError)
    assert str(user_error(caught.value)).startswith("strategy.stage=5: DeepSpeed ZeRO stages are 1, 2 and 3")
    assert user_error(RuntimeError("a bug")) is None  # anything else keeps its traceback
