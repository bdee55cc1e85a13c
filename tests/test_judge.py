"""Pairwise judging: verdict parsing and combination pinned; end to end against a verdict-injecting local server and a
real ``transformers serve`` of a tiny checkpoint (127.0.0.1 only); answers for open questions, single and multi-turn."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from huatuo.core.errors import ConfigError
from huatuo.core.template import build_prompt
from huatuo.evaluation.answers import OpenQuestion, generate_answers, read_answers, read_questions, write_answers
from huatuo.evaluation.judge import JudgeItem, combine, judge_prompt, parse_verdict
from huatuo.evaluation.rubric import Rubric
from huatuo.evaluation.run import evaluate
from huatuo.evaluation.validation import check_eval_config
from tests.fakeserver import CannedServer
from tests.helpers import compose_config
from tests.servers import make_tiny_checkpoint, transformers_serve

SECRET = "sk-planted-secret-0123456789abcdef"

# --------------------------------------------------------------------------------------------------------------
# Parsing and combining, pinned
# --------------------------------------------------------------------------------------------------------------

VERDICTS = [
    # our rubric's final line, and the paper's label
    ("Assistant 1 names the red flags.\n\nVERDICT: Assistant 1 is better than Assistant 2", "better"),
    ("Both are fine.\nVERDICT: Assistant 1 is equal to Assistant 2.", "equal"),
    ("Comparison...\nAssistant 1 is worse than Assistant 2", "worse"),
    ("**VERDICT: Assistant 1 is better than Assistant 2**", "better"),
    ("`Assistant 1 is worse than Assistant 2`", "worse"),
    ("VERDICT：Assistant 1 is equal to Assistant 2", "equal"),  # full-width colon
    # the relation may start with a capital and may be wrapped in backticks
    ("Assistant 1 is Better than Assistant 2", "better"),
    ("Assistant 1 is `worse than` Assistant 2", "worse"),
    ("Assistant 1 is `Equal to` Assistant 2", "equal"),
    ("Assistant 1 is `better than Assistant 2", None),  # one backtick is not a wrapping
    # anywhere in the reply, not only on the last line
    ("VERDICT: Assistant 1 is better than Assistant 2\nI hope this helps!", "better"),
    ("I think Assistant 1 is better than Assistant 2 because it names the red flags.", "better"),
    ("Assistant 1 is better than Assistant 2 but worse in tone", "better"),
    # several statements: the last one wins
    ("At first Assistant 1 is better than Assistant 2; on reflection Assistant 1 is worse than Assistant 2.", "worse"),
    # the mirrored sentence about Assistant 2, only when no sentence about Assistant 1 is there
    ("Analysis.\nVERDICT: Assistant 2 is better than Assistant 1", "worse"),
    ("Analysis.\nAssistant 2 is worse than Assistant 1", "better"),
    ("Assistant 2 is `Equal to` Assistant 1", "equal"),
    ("Assistant 1 is equal to Assistant 2. Later: Assistant 2 is better than Assistant 1.", "equal"),  # 1 first
    # "are equal in", only when neither sentence is there
    ("Both assistants are equal in accuracy and safety.", "equal"),
    ("The answers are equal in length, but Assistant 2 is better than Assistant 1.", "worse"),
    # no verdict: retried, then a parse failure, never guessed
    ("verdict: assistant 1 IS BETTER THAN assistant 2", None),  # "Assistant" and the relation as the paper wrote them
    ("VERDICT: Assistant 1 is much better than Assistant 2", None),
    ("VERDICT: Assistant 1 is better than Assistant 1", None),
    ("Assistant 1  is better than Assistant 2", None),  # two spaces
    ("Assistant 1 is better Assistant 2", None),
    ("VERDICT: tie", None),
    ("", None),
    ("fib痢des痤levove 作先", None),
]


@pytest.mark.parametrize(("reply", "verdict"), VERDICTS)
def test_verdicts_are_read_with_the_papers_forms_and_precedence(reply, verdict):
    assert parse_verdict(reply) == verdict


# (verdict in order ab, verdict in order ba) -> model A's outcome by the paper's rule and by FastChat's
COMBINATIONS = {
    ("better", "worse"): ("win", "win"),  # A preferred in both positions
    ("worse", "better"): ("loss", "loss"),
    ("better", "better"): ("tie", "tie"),  # the judge always prefers position 1: no information
    ("worse", "worse"): ("tie", "tie"),
    ("equal", "equal"): ("tie", "tie"),
    ("better", "equal"): ("win", "tie"),  # sum: 15 vs 5; agree: the orders disagree
    ("equal", "worse"): ("win", "tie"),
    ("worse", "equal"): ("loss", "tie"),
    ("equal", "better"): ("loss", "tie"),
}


@pytest.mark.parametrize(("verdicts", "outcomes"), list(COMBINATIONS.items()))
def test_both_orders_combine_by_either_rule(verdicts, outcomes):
    assert combine(*verdicts, rule="sum") == outcomes[0]
    assert combine(*verdicts, rule="agree") == outcomes[1]


# --------------------------------------------------------------------------------------------------------------
# Open questions and answer files
# --------------------------------------------------------------------------------------------------------------


class EchoModel:
    """Stands in for a LoadedModel: renders the HuatuoGPT-II prompt; generation is patched in the test."""

    uses_huatuo_format = True

    def render(self, messages):
        return build_prompt(messages)


def test_multi_turn_answers_use_the_models_own_replies_as_history(monkeypatch):
    seen = []

    def fake_generate(loaded, prompts, batch_size, generation, seed=0, progress=None):
        seen.append(list(prompts))
        return [f"回复{len(seen)}-{i}" for i in range(len(prompts))]

    monkeypatch.setattr("huatuo.evaluation.answers.generate_texts", fake_generate)
    questions = [OpenQuestion("c1", ["第一问", "第二问", "第三问"]), OpenQuestion("s1", ["单问"])]
    answers = generate_answers(EchoModel(), questions, batch_size=8, generation={}, model_name="m")
    assert answers.replies == {"c1": ["回复1-0", "回复2-0", "回复3-0"], "s1": ["回复1-1"]}
    assert [len(batch) for batch in seen] == [2, 1, 1]  # round k of every conversation in one call
    assert seen[2][0] == "<问>：第一问\n<答>：回复1-0\n<问>：第二问\n<答>：回复2-0\n<问>：第三问\n<答>："


def test_question_files_and_both_answer_layouts(tmp_path):
    import huatuo

    demo = huatuo.asset_path("demo/judge_questions.jsonl")
    single, multi = read_questions(demo, "single"), read_questions(demo, "multi")
    assert len(single) == 16 and len(multi) == 8 and all(len(q.turns) >= 2 for q in multi)

    ours = tmp_path / "ours.jsonl"
    write_answers(generate_answers_stub(), ours)
    loaded = read_answers(ours)
    assert loaded.model == "stub" and loaded.replies["c1"] == ["r1", "r2"] and loaded.turns["c1"] == ["q1", "q2"]

    paper = tmp_path / "GPT4.json"
    paper.write_text(
        json.dumps(
            [
                {"id": "s1", "query": "问题", "model_output": "回答"},
                {"id": 7, "model_output": [["问一", "答一"], ["问二", "答二"]]},
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    read = read_answers(paper)
    assert read.model == "GPT4" and read.replies == {"s1": ["回答"], "7": ["答一", "答二"]}
    assert read.turns["7"] == ["问一", "问二"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:1: no replies"):
        read_answers(bad)


def generate_answers_stub():
    from huatuo.evaluation.answers import Answers

    return Answers(model="stub", replies={"c1": ["r1", "r2"]}, turns={"c1": ["q1", "q2"]})


# --------------------------------------------------------------------------------------------------------------
# End to end against a local server that injects verdicts and faults
# --------------------------------------------------------------------------------------------------------------

_BLOCK = r"\[(?:Conversation with )?Assistant {n}\]\n(.*?)\n\[End of (?:Conversation with )?Assistant {n}\]"


class VerdictServer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 whose judge prefers answers containing "[good]".

    Markers in the question steer it: "bias" always prefers position 1, "flaky" first answers without a verdict
    line, "broken" never gives one, "http500" first fails with a server error.
    """

    def __init__(self) -> None:
        self.requests: Counter = Counter()
        self.keys: set[str] = set()
        self.seen_markers: Counter = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.keys.add(self.headers.get("Authorization", ""))
                content = body["messages"][0]["content"]
                marker = next((m for m in ("bias", "flaky", "broken", "http500") if m in content), "plain")
                server.seen_markers[marker] += 1
                first = re.search(_BLOCK.format(n=1), content, re.S).group(1)
                server.requests[(marker, first[:40])] += 1
                count = server.requests[(marker, first[:40])]
                if marker == "http500" and count == 1:
                    return self.reply(500, {"error": {"message": "overloaded"}})
                if marker == "broken" or (marker == "flaky" and count == 1):
                    text = "Both answers have merits and I cannot decide."
                elif marker == "bias":
                    text = "Position one reads better.\nVERDICT: Assistant 1 is better than Assistant 2"
                else:
                    second = re.search(_BLOCK.format(n=2), content, re.S).group(1)
                    one, two = "[good]" in first, "[good]" in second
                    relation = "better than" if one and not two else "worse than" if two and not one else "equal to"
                    text = f"Compared.\nVERDICT: Assistant 1 is {relation} Assistant 2"
                self.reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})

            def reply(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_answer_file(path: Path, name: str, replies: dict[str, str]) -> Path:
    lines = [
        json.dumps({"id": k, "turns": [f"question {k}"], "replies": [v], "model": name}) for k, v in replies.items()
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


QUESTIONS = ["a-wins", "b-wins", "even", "bias", "flaky", "broken", "http500"]


def judge_config(tmp_path, server_url, a, b, *overrides):
    return compose_config(
        "evaluate",
        [
            f"paths.run_dir={tmp_path / 'run'}",
            "progress=false",
            "eval=judge_inst",
            "eval.questions=null",
            f"eval.model_a.answers={a}",
            "eval.model_a.name=huatuo",
            f"eval.model_b.answers={b}",
            "eval.model_b.name=reference",
            f"eval.judge.base_url={server_url}",
            "eval.judge.model=fake-judge",
            "eval.judge.api_key_env=HUATUO_TEST_JUDGE_KEY",
            "eval.judge.backoff_initial=0.01",
            "eval.judge.max_concurrency=3",
            f"eval.judgments={tmp_path / 'judgments.jsonl'}",
            *overrides,
        ],
    )


def test_judge_end_to_end_with_injected_verdicts_retries_and_resume(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HUATUO_TEST_JUDGE_KEY", SECRET)
    a = write_answer_file(
        tmp_path / "a.jsonl",
        "huatuo",
        {q: (f"{q} answer [good]" if q == "a-wins" else f"{q} answer") for q in QUESTIONS},
    )
    b = write_answer_file(
        tmp_path / "b.jsonl", "ref", {q: (f"{q} reply [good]" if q == "b-wins" else f"{q} reply") for q in QUESTIONS}
    )
    with VerdictServer() as server:
        results = evaluate(judge_config(tmp_path, server.url, a, b))
        s = results["summary"]
        # a-wins: win; b-wins: loss; even: tie; bias: tie (position preference cancels); flaky: tie after a retry;
        # http500: tie after a transport retry; broken: no verdict after 1 + 2 requests per order -> incomplete.
        assert (s["win"], s["tie"], s["loss"], s["judged"]) == (1, 4, 1, 6)
        assert s["incomplete"] == ["broken"] and s["failures"] == {"no verdict": 2}
        assert server.seen_markers["broken"] == 6  # 1 + 2 parse retries, in each order
        assert server.seen_markers["flaky"] == 4  # one reply without a verdict line, then a verdict, per order
        assert server.seen_markers["http500"] == 4  # one 500 (retried by the client), then a verdict, per order
        assert server.keys == {f"Bearer {SECRET}"}  # the key reaches the endpoint, and only there

        lines = [json.loads(x) for x in (tmp_path / "judgments.jsonl").read_text().splitlines()]
        assert len(lines) == 14 and {x["order"] for x in lines} == {"ab", "ba"}
        flaky = [x for x in lines if x["id"] == "flaky"]
        assert all(x["attempts"] == 2 and x["verdict"] for x in flaky)

        # Re-run: every judged key is skipped; only the broken item (no verdict) is asked again.
        before = sum(server.seen_markers.values())
        again = evaluate(judge_config(tmp_path, server.url, a, b))
        assert sum(server.seen_markers.values()) - before == 6
        assert again["summary"]["win"] == 1 and again["summary"]["judged"] == 6

        # FastChat's rule on the same judgments, no new requests: disagreements are ties.
        before = sum(server.seen_markers.values())
        agree = evaluate(judge_config(tmp_path, server.url, a, b, "eval.rule=agree"))
        assert sum(server.seen_markers.values()) - before == 6  # only "broken" again
        assert (agree["summary"]["win"], agree["summary"]["tie"], agree["summary"]["loss"]) == (1, 4, 1)

        # A changed answer is judged again (its fingerprint changed); the others are not.
        write_answer_file(
            b,
            "ref",
            {q: (f"{q} reply [good]" if q in ("b-wins", "a-wins") else f"{q} reply") for q in QUESTIONS},
        )
        before = Counter(server.requests)
        changed = evaluate(judge_config(tmp_path, server.url, a, b))
        new = Counter(server.requests) - before
        assert sum(v for (marker, _), v in new.items() if marker == "plain") == 2  # a-wins, both orders
        assert changed["summary"]["win"] == 0 and changed["summary"]["tie"] == 5

    run = tmp_path / "run"
    assert "judged in both orders: 6" in (run / "results.md").read_text()
    outputs = [p.read_text(errors="ignore") for p in [*run.rglob("*"), tmp_path / "judgments.jsonl"] if p.is_file()]
    captured = capsys.readouterr()
    for text in [*outputs, captured.out, captured.err, caplog.text]:
        assert SECRET not in text


# A rubric in the layout of the paper's published judge script (worded for this test): the question and both answers
# in marked blocks, then the instructions; literal braces and a JSON-looking example stay text.
PAPER_STYLE_RUBRIC = """[Question]
{question}
[End of Question]

[Assistant 1]
{answer_1}
[End of Assistant 1]

[Assistant 2]
{answer_2}
[End of Assistant 2]

[System]
Judge which answer serves the patient better (format example: {"label": "..."}; {{braces}} are kept).
Say whether Assistant 1 is `better than`, `worse than`, or `equal to` Assistant 2, on the last line."""


def test_a_rubric_file_is_checked_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Compare {answer_1} with {answer_two} for {patient}.", encoding="utf-8")
    base = ["eval=judge_inst", "eval.model_b.answers=" + str(write_answer_file(tmp_path / "b.jsonl", "b", {"x": "y"}))]

    def config(*overrides):
        return compose_config("evaluate", [f"paths.run_dir={tmp_path / 'run'}", *base, *overrides])

    with pytest.raises(ConfigError) as err:
        check_eval_config(config(f"eval.judge.prompt_file={bad}"))
    message = str(err.value)
    assert "unknown placeholder(s) {answer_two}, {patient}" in message
    assert "missing placeholder(s) {question}, {answer_2}" in message
    # A conversation rubric needs only the two transcripts; a missing file is named.
    conversations = tmp_path / "conv.txt"
    conversations.write_text("[Assistant 1]\n{answer_1}\n[Assistant 2]\n{answer_2}\n", encoding="utf-8")
    check_eval_config(config("eval=judge_conv", f"eval.judge.prompt_file={conversations}"))
    with pytest.raises(ConfigError, match="no such file"):
        check_eval_config(config(f"eval.judge.prompt_file={tmp_path / 'missing.txt'}"))


def test_a_rubric_fills_only_its_placeholders():
    item = JudgeItem(id="q", turns=["头痛三天"], replies_a=["{answer_2} 是字面文字"], replies_b=["回答B"])
    rubric = Rubric(single=PAPER_STYLE_RUBRIC)
    prompt = judge_prompt(item, "ab", rubric)
    assert prompt.startswith("[Question]\n头痛三天\n[End of Question]\n\n[Assistant 1]\n{answer_2} 是字面文字\n")
    assert '{"label": "..."}; {braces} are kept' in prompt and "[Assistant 2]\n回答B\n" in prompt
    assert judge_prompt(item, "ba", rubric).count("[Assistant 1]\n回答B\n") == 1
    conversation = JudgeItem(id="c", turns=["问一", "问二"], replies_a=["答一", "答二"], replies_b=["甲", "乙"])
    both = judge_prompt(conversation, "ab", Rubric(multi="{question}|{answer_1}|{answer_2}"))
    assert both == "问一\n问二|Patient: 问一\nAssistant: 答一\n\nPatient: 问二\nAssistant: 答二|" + (
        "Patient: 问一\nAssistant: 甲\n\nPatient: 问二\nAssistant: 乙"
    )


def test_the_papers_rubric_runs_and_a_changed_rubric_is_judged_again(tmp_path, monkeypatch):
    monkeypatch.setenv("HUATUO_TEST_JUDGE_KEY", SECRET)
    a = write_answer_file(tmp_path / "a.jsonl", "huatuo", {"a-wins": "a-wins [good]", "even": "even"})
    b = write_answer_file(tmp_path / "b.jsonl", "ref", {"a-wins": "a-wins", "even": "even"})
    rubric = tmp_path / "paper_rubric.txt"
    rubric.write_text(PAPER_STYLE_RUBRIC, encoding="utf-8")
    with VerdictServer() as server:
        cfg = judge_config(tmp_path, server.url, a, b, f"eval.judge.prompt_file={rubric}")
        check_eval_config(cfg)
        results = evaluate(cfg)
        assert (results["summary"]["win"], results["summary"]["tie"]) == (1, 1)
        assert results["rubric"] == str(rubric)
        lines = [json.loads(x) for x in (tmp_path / "judgments.jsonl").read_text().splitlines()]
        assert len(lines) == 4
        asked = sum(server.seen_markers.values())
        evaluate(cfg)  # same rubric: nothing asked again
        assert sum(server.seen_markers.values()) == asked
        rubric.write_text(PAPER_STYLE_RUBRIC.replace("serves the patient better", "is safer"), encoding="utf-8")
        evaluate(cfg)  # a changed rubric: every (question, order) judged again
        assert sum(server.seen_markers.values()) == asked + 4


# --------------------------------------------------------------------------------------------------------------
# End to end against a real `transformers serve` of a tiny random checkpoint
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_judge_against_transformers_serve_reports_parse_failures(tmp_path, monkeypatch, capsys, caplog):
    """A tiny random model cannot write verdicts: every order is retried, then reported as a parse failure."""
    monkeypatch.setenv("HUATUO_TEST_JUDGE_KEY", SECRET)
    model = make_tiny_checkpoint(tmp_path / "tiny")
    reference = tmp_path / "reference.jsonl"
    conversations = read_questions(__import__("huatuo").asset_path("demo/judge_questions.jsonl"), "multi")[:2]
    reference.write_text(
        "\n".join(
            json.dumps({"id": q.id, "turns": q.turns, "replies": [f"参考回答{i}" for i in range(len(q.turns))]})
            for q in conversations
        ),
        encoding="utf-8",
    )
    with transformers_serve(model) as url:
        cfg = compose_config(
            "evaluate",
            [
                f"paths.run_dir={tmp_path / 'run'}",
                "progress=false",
                f"model_path={model}",
                "eval=judge_conv",
                "eval.limit=2",
                "eval.generation.max_new_tokens=6",
                f"eval.model_b.answers={reference}",
                f"eval.judge.base_url={url}",
                f"eval.judge.model={model}",
                "eval.judge.api_key_env=HUATUO_TEST_JUDGE_KEY",
                "eval.judge.params.max_tokens=8",
                "eval.judge.max_concurrency=2",
                "eval.parse_retries=1",
            ],
        )
        results = evaluate(cfg)
    s = results["summary"]
    assert (s["items"], s["judged"], s["win"] + s["tie"] + s["loss"]) == (2, 0, 0)
    assert sorted(s["incomplete"]) == sorted(q.id for q in conversations)
    assert s["failures"] == {"no verdict": 4}
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "judgments.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(x["attempts"] == 2 and x["verdict"] is None and x["reply"] for x in lines)
    generated = read_answers(run / "answers_model_a.jsonl")
    for q in conversations:  # the tiny model answered every user turn, its replies forming the history
        assert len(generated.replies[q.id]) == len(q.turns)
    assert "incomplete (a verdict missing after retries, not counted): 2" in (run / "results.md").read_text()
    captured = capsys.readouterr()
    for text in [*(p.read_text(errors="ignore") for p in run.rglob("*") if p.is_file()), captured.out, caplog.text]:
        assert SECRET not in text


def test_a_changed_judge_setting_means_a_new_judgment():
    from huatuo.evaluation.judge import fingerprint

    base = fingerprint("prompt", "gpt-4o", "rubric", {"temperature": 0.0, "max_tokens": 1024})
    assert base == fingerprint("prompt", "gpt-4o", "rubric", {"max_tokens": 1024, "temperature": 0.0})
    assert base != fingerprint("prompt", "gpt-4o", "rubric", {"temperature": 0.7, "max_tokens": 1024})
    assert base != fingerprint("prompt", "gpt-4o", "other rubric", {"temperature": 0.0, "max_tokens": 1024})


def test_a_judge_that_judged_nothing_raises_instead_of_a_win_rate_of_zero(tmp_path):
    a = write_answer_file(tmp_path / "a.jsonl", "huatuo", {q: f"{q} answer" for q in QUESTIONS[:3]})
    b = write_answer_file(tmp_path / "b.jsonl", "ref", {q: f"{q} reply" for q in QUESTIONS[:3]})
    with CannedServer(lambda body: (401, "invalid api key")) as server:
        with pytest.raises(ConfigError) as err:
            evaluate(judge_config(tmp_path, server.base_url, a, b))
    message = str(err.value)
    assert "the judge 'fake-judge' judged none of the 3 question(s) in both orders (endpoint: http 401 x6)" in message
    assert str(tmp_path / "judgments.jsonl") in message and "$HUATUO_TEST_JUDGE_KEY" in message
    assert not (tmp_path / "run" / "results.json").exists()
