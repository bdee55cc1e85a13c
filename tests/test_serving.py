"""Exams and judged answers through a serving engine (``eval.backend=endpoint``) against scripted local servers: what
each request carries, reading replies as in-process generation does, resuming after a kill, and failures listed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

import huatuo
from huatuo.core.errors import ConfigError, DataError
from huatuo.evaluation.exam_files import load_exam
from huatuo.evaluation.prompt import mcq_prompt
from huatuo.evaluation.run import evaluate
from huatuo.evaluation.serving import read_replies, request_params
from huatuo.evaluation.validation import check_eval_config
from tests.fakeserver import CannedServer
from tests.helpers import ROOT, compose_config

DEMO = huatuo.asset_path("demo/exam_demo.json")
QUESTIONS = {mcq_prompt(q): q for q in load_exam(DEMO).questions}
QUESTIONS_BY_UID = {q.uid: q for q in QUESTIONS.values()}
PAPER = {"do_sample": True, "temperature": 0.5, "top_p": 0.7, "repetition_penalty": 1.1, "max_new_tokens": 768}


def exam_reply(body: dict) -> str:
    """A model that answers every demo question right, in one of several styles a reader has to cope with."""
    question = QUESTIONS[body["messages"][-1]["content"]]
    styles = [
        f"答案是{question.answer}。",
        f"正确选项是{'、'.join(question.answer)}",
        f"The answer is {question.answer}.",
    ]
    return styles[int(question.uid[-3:]) % len(styles)] + "\n<问>：下一题"  # the model goes on to write a user turn


def config(tmp_path, url, *overrides, suite: str = "demo"):
    return compose_config(
        "evaluate",
        [
            f"paths.run_dir={tmp_path / 'run'}",
            "progress=false",
            f"eval={suite}",
            *(["eval.mode=generate"] if suite == "demo" else []),
            "eval.backend=endpoint",
            f"eval.endpoint.base_url={url}",
            "eval.endpoint.model=served-huatuo",
            "eval.endpoint.max_concurrency=4",
            "eval.endpoint.backoff_initial=0.01",
            *overrides,
        ],
    )


def test_request_fields_for_each_server_kind():
    assert request_params(PAPER, "extra_body", seed=3) == {
        "max_tokens": 768,
        "temperature": 0.5,
        "top_p": 0.7,
        "seed": 3,
        "extra_body": {"repetition_penalty": 1.1},  # vLLM and SGLang read it from the body
    }
    assert request_params({**PAPER, "top_k": 5}, "generation_config", seed=None)["extra_body"] == {
        "generation_config": '{"repetition_penalty": 1.1, "top_k": 5}'  # what `transformers serve` accepts
    }
    assert "extra_body" not in request_params(PAPER, "none", seed=None)  # hosted APIs: not sent, and logged
    greedy = request_params({**PAPER, "do_sample": False}, "extra_body", seed=3)
    assert greedy == {"max_tokens": 768, "temperature": 0.0, "extra_body": {"repetition_penalty": 1.1}}


def test_the_demo_exam_through_a_server_reads_and_reports_like_in_process_generation(tmp_path):
    with CannedServer(exam_reply) as server:
        results = evaluate(config(tmp_path, server.base_url))
    s = results["summary"]
    assert results["backend"] == "endpoint" and results["model"].startswith("served-huatuo")
    assert (s["n"], s["correct"], s["misses"]) == (48, 48, 0)
    assert set(s["read_back_rules"]) == {"phrase", "choice_phrase", "english_phrase"}
    assert len(server.bodies) == 48
    body = server.bodies[0]
    assert body["model"] == "served-huatuo" and body["messages"][0]["role"] == "user"
    assert {body["messages"][0]["content"] for body in server.bodies} == set(QUESTIONS)  # the paper's message bytes
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["repetition_penalty"]) == (0.5, 0.7, 768, 1.1)
    assert server.max_in_flight <= 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert all("<问>" not in row["reply"] for row in rows)  # cut at the next user turn, as in process
    assert len(read_replies(tmp_path / "run" / "replies.jsonl")) == 48


def test_a_rerun_asks_only_for_what_is_missing_or_changed(tmp_path):
    with CannedServer(exam_reply) as server:
        evaluate(config(tmp_path, server.base_url, "eval.limit=10"))
        replies = tmp_path / "run" / "replies.jsonl"
        lines = replies.read_text(encoding="utf-8").splitlines(keepends=True)
        replies.write_text("".join(lines[:6]) + lines[6][:25], encoding="utf-8")  # a kill: 6 whole lines, one torn
        again = evaluate(config(tmp_path, server.base_url, "eval.limit=10"))
        assert len(server.bodies) == 10 + 4 and again["summary"]["correct"] == 10
        evaluate(config(tmp_path, server.base_url, "eval.limit=10", "eval.generate.top_p=0.8"))
        assert len(server.bodies) == 14 + 10  # a changed setting changes every request's fingerprint


def test_failed_requests_are_named_at_once_or_skipped_and_listed(tmp_path):
    def flaky(body):
        question = QUESTIONS[body["messages"][-1]["content"]]
        return (400, "prompt too long") if question.uid.endswith(("-003", "-005")) else f"答案是{question.answer}"

    with CannedServer(flaky) as server:
        with pytest.raises(DataError) as err:
            evaluate(config(tmp_path, server.base_url, "eval.limit=6"))
        message = str(err.value)
        assert "2 record(s) cannot be scored" in message and "demo-003" in message and "demo-005" in message
        assert "endpoint: http 400" in message and "eval.on_error=skip" in message
        results = evaluate(config(tmp_path, server.base_url, "eval.limit=6", "eval.on_error=skip"))
        assert len(server.bodies) == 6 + 2  # the four answered are not asked again
    assert results["skipped"] == 2 and results["summary"]["n"] == 4
    assert [r["uid"] for r in results["skipped_records"]] == ["demo/demo-003", "demo/demo-005"]
    assert results["summary"]["by_dataset"]["demo"]["skipped"] == 2
    assert (
        "| 4 | 4 | 100.0 |" in (tmp_path / "run" / "results.md").read_text()
        and " 2 |" in (tmp_path / "run" / "results.md").read_text()
    )


def test_endpoint_settings_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError) as err:
        check_eval_config(
            config(
                tmp_path,
                "http://127.0.0.1:9/v1",
                "eval.mode=loglik",
                "eval.endpoint.model=null",
                "eval.endpoint.penalty_field=header",
            )  # fmt: skip
        )
    message = str(err.value)
    assert "set eval.mode=generate" in message and "eval.endpoint.model=None" in message
    assert "eval.endpoint.penalty_field='header'" in message


def test_model_a_answers_from_a_server_then_judged(tmp_path):
    from huatuo.evaluation.answers import read_questions

    def both(body):
        if body["model"] == "judge":
            return "Compared.\nVERDICT: Assistant 1 is equal to Assistant 2"
        return f"回答{len(body['messages'])}：{body['messages'][-1]['content'][:4]}"

    conversations = read_questions(huatuo.asset_path("demo/judge_questions.jsonl"), "multi")[:3]
    reference = tmp_path / "reference.jsonl"
    reference.write_text(
        "".join(
            json.dumps({"id": q.id, "turns": q.turns, "replies": ["参考"] * len(q.turns)}) + "\n" for q in conversations
        ),
        encoding="utf-8",
    )
    with CannedServer(both) as server:
        cfg = config(
            tmp_path,
            server.base_url,
            "eval.limit=3",
            f"eval.model_b.answers={reference}",
            f"eval.judge.base_url={server.base_url}",
            "eval.judge.model=judge",
            "eval.judge.api_key_env=HUATUO_TEST_UNSET_KEY",
            suite="judge_conv",
        )
        results = evaluate(cfg)
    assert results["summary"]["judged"] == 3 and results["summary"]["tie"] == 3
    served = [b for b in server.bodies if b["model"] == "served-huatuo"]
    assert len(served) == sum(len(q.turns) for q in conversations)
    last = max(served, key=lambda b: len(b["messages"]))
    assert [m["role"] for m in last["messages"]][-3:] == ["user", "assistant", "user"]
    assert last["messages"][1]["content"].startswith("回答1：")  # its own earlier reply is the history
    assert (last["temperature"], last["top_p"], last["repetition_penalty"]) == (0.3, 0.7, 1.1)  # the chat settings


@pytest.mark.slow
def test_a_killed_run_resumes_and_asks_every_question_once(tmp_path):
    asked: list[str] = []

    def slow(body):
        question = QUESTIONS[body["messages"][-1]["content"]]
        asked.append(question.uid)
        return f"答案是{question.answer}"

    command = [
        sys.executable,
        "evaluate.py",
        f"hydra.run.dir={tmp_path / 'run'}",
        "progress=false",
        "eval.mode=generate",
        "eval.backend=endpoint",
        "eval.endpoint.model=served",
        "eval.endpoint.max_concurrency=2",
    ]
    replies = tmp_path / "run" / "replies.jsonl"
    with CannedServer(slow, latency=0.05) as server:
        command.append(f"eval.endpoint.base_url={server.base_url}")
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while (not replies.exists() or replies.read_bytes().count(b"\n") < 12) and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        answered = {key for key, record in read_replies(replies).items() if record.get("reply")}
        first = len(asked)
        assert 12 <= len(answered) < 48, "the kill should land mid-run"
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)
    again = asked[first:]
    assert set(asked) == set(QUESTIONS_BY_UID) and not answered & set(again)  # nothing answered is asked again
    assert len(again) == 48 - len(answered)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["summary"]["correct"] == 48 and results["summary"]["n"] == 48


@pytest.mark.slow
def test_transformers_serve_gives_the_letters_of_in_process_generation(tmp_path):
    """A tiny export behind a real ``transformers serve`` on 127.0.0.1: greedy replies, read back, as in process."""
    from tests.servers import make_tiny_checkpoint, transformers_serve

    model = make_tiny_checkpoint(tmp_path / "tiny")
    greedy = ["eval.limit=12", "eval.generate.do_sample=false", "eval.generate.max_new_tokens=12"]
    local = evaluate(
        compose_config(
            "evaluate",
            [f"paths.run_dir={tmp_path / 'local'}", "progress=false", f"model_path={model}", "eval.mode=generate"]
            + greedy,
        )
    )
    with transformers_serve(model) as url:
        served = evaluate(
            compose_config(
                "evaluate",
                [
                    f"paths.run_dir={tmp_path / 'served'}",
                    "progress=false",
                    "eval.mode=generate",
                    "eval.backend=endpoint",
                    f"eval.endpoint.base_url={url}",
                    f"eval.endpoint.model={model}",
                    "eval.endpoint.penalty_field=generation_config",  # the repetition penalty, as it accepts it
                    "eval.endpoint.max_concurrency=4",
                ]
                + greedy,
            )
        )

    def rows(run: str) -> dict[str, dict]:
        lines = (tmp_path / run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        return {row["uid"]: row for row in map(json.loads, lines)}

    here, there = rows("local"), rows("served")
    assert set(here) == set(there) and len(here) == 12
    assert {u: r["extracted"] for u, r in here.items()} == {u: r["extracted"] for u, r in there.items()}
    assert {u: r["reply"] for u, r in here.items()} == {u: r["reply"] for u, r in there.items()}
    assert local["summary"]["read_back_rules"] == served["summary"]["read_back_rules"]
    # The repetition penalty reached the server: without it the same model writes other replies.
    plain = compose_config(
        "evaluate",
        [f"paths.run_dir={tmp_path / 'plain'}", "progress=false", f"model_path={model}", "eval.mode=generate"]
        + greedy
        + ["eval.generate.repetition_penalty=1.0"],
    )
    evaluate(plain)
    assert {u: r["reply"] for u, r in rows("plain").items()} != {u: r["reply"] for u, r in there.items()}


def test_a_reply_is_keyed_by_the_server_and_every_setting_sent():
    from huatuo.evaluation.serving import fingerprint

    messages = [{"role": "user", "content": "q"}]
    base = fingerprint("m", messages, {"temperature": 0.5}, "http://127.0.0.1:8000/v1")
    assert base != fingerprint("m", messages, {"temperature": 0.5}, "http://127.0.0.1:8001/v1")
    assert base != fingerprint("m", messages, {"temperature": 0.7}, "http://127.0.0.1:8000/v1")
    assert base == fingerprint("m", list(messages), {"temperature": 0.5}, "http://127.0.0.1:8000/v1")


def test_a_run_whose_every_request_failed_raises_instead_of_scoring_zero(tmp_path):
    with CannedServer(lambda body: (400, "prompt too long")) as server:
        with pytest.raises(DataError) as err:
            evaluate(config(tmp_path, server.base_url, "eval.limit=3", "eval.on_error=skip"))
    message = str(err.value)
    assert message.startswith("suite 'demo': no question was scored (all 3 skipped), so there is no accuracy")
    assert "endpoint: http 400" in message and str(tmp_path / "run" / "replies.jsonl") in message
    skipped = tmp_path / "run" / "skipped.jsonl"
    assert str(skipped) in message and len(skipped.read_text().splitlines()) == 3
    assert not (tmp_path / "run" / "results.json").exists()  # no accuracy of 0.0 for a sweeper to read


def test_a_mistyped_endpoint_or_judge_key_is_named_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError) as err:
        check_eval_config(config(tmp_path, "http://127.0.0.1:9/v1", "+eval.endpoint.max_concurency=4"))
    assert "eval.endpoint.max_concurency is not a setting (did you mean 'max_concurrency'?)" in str(err.value)
    judge = config(tmp_path, "http://127.0.0.1:9/v1", "+eval.judge.temprature=0", suite="judge_inst")
    with pytest.raises(ConfigError) as err:
        check_eval_config(judge)
    assert "eval.judge.temprature is not a setting" in str(err.value) and "known keys: api_key_env" in str(err.value)
