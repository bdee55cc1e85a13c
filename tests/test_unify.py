"""The unify stage against a scripted server on 127.0.0.1: filters, accounting, resume, faults, bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import huatuo
from huatuo.core.errors import HuatuoError
from huatuo.data.sources import LoadReport, SourceSpec, iter_conversations
from huatuo.unify.filters import (
    AnswerSettings,
    QuestionSettings,
    check_answer,
    check_question,
    chinese_share,
    clean_reply,
    ngram_jaccard,
)
from huatuo.unify.passages import ReaderSettings, derived_id, iter_passages, split_passage
from huatuo.unify.run import UnifyError, unify
from tests.fakeserver import CannedServer
from tests.faultproxy import FaultProxy
from tests.helpers import compose_config

DEMO = Path(huatuo.asset_path("demo/corpus_passages.jsonl"))
DEMO_IDS = {json.loads(line)["id"] for line in DEMO.read_text().splitlines()}
REASONS = {
    "empty_passage",
    "question_empty",
    "question_too_long",
    "question_not_chinese",
    "question_mentions_passage",
    "answer_empty",
    "answer_mentions_reference",
    "answer_low_overlap",
    "endpoint_error",
}


def is_answer_call(body: dict) -> bool:
    return "<问题>" in body["messages"][-1]["content"]  # only the default answer prompt has this tag


def simple_reply(body: dict) -> str:
    """A good question or a good answer, whatever the passage."""
    return "建议规律监测血压，低盐饮食。" if is_answer_call(body) else "我最近总头晕，是不是高血压？"


class Script:
    """Replies chosen by markers in the passage, so each passage meets one scripted behaviour."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, body: dict) -> str | tuple[int, str]:
        prompt = body["messages"][-1]["content"]
        if "[http400]" in prompt:
            return 400, "this passage breaks the server"
        if is_answer_call(body):
            if "[ref]" in prompt:
                return "参考上面的资料，应当低盐饮食。"
            if "[think]" in prompt:
                return "<think>先想一想。</think>多喝水，注意休息。"
            return "建议规律监测血压，低盐饮食。"
        if "[long-q]" in prompt:
            return "请问" + "很" * 200 + "严重吗？"
        if "[flaky-q]" in prompt:
            self.calls["flaky"] += 1
            return "太长" * 100 if self.calls["flaky"] == 1 else "孩子发烧抽搐了怎么办？"
        if "[english-q]" in prompt:
            return "What should I do about my headache?"
        if "[mention]" in prompt:
            return "根据上文，高血压应该怎么治疗？"
        return "问题：我最近总头晕，是不是高血压？"  # the echoed label is stripped


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def config(tmp_path: Path, base_url: str, input_path: Path, *overrides: str):
    return compose_config(
        "unify",
        [
            f"input={input_path}",
            f"output={tmp_path / 'out' / 'unified.jsonl'}",
            f"endpoint.base_url={base_url}",
            "endpoint.model=canned",
            "endpoint.backoff_initial=0.01",
            "endpoint.backoff_max=0.05",
            f"paths.run_dir={tmp_path / 'run'}",
            "progress=false",
            *overrides,
        ],
    )


def outputs(tmp_path: Path) -> tuple[list[dict], list[dict]]:
    out = tmp_path / "out"
    return read_jsonl(out / "unified.jsonl"), read_jsonl(out / "unified.rejected.jsonl")


def assert_each_id_once(tmp_path: Path, expected_ids: set) -> tuple[list[dict], list[dict]]:
    accepted, rejected = outputs(tmp_path)
    ids = [r["id"] for r in accepted + rejected]
    assert Counter(ids).most_common(1)[0][1] == 1, "an id was recorded twice"
    assert set(ids) == expected_ids
    for raw in (tmp_path / "out").glob("*.jsonl"):
        data = raw.read_bytes()
        assert not data or data.endswith(b"\n"), f"{raw} ends in a torn line"
    return accepted, rejected


def test_scripted_passages_end_accepted_or_rejected_with_the_right_reason(tmp_path):
    long_text = "高血压需要长期管理。" * 70 + "这里已在第六百字之后。"
    records = [
        {"pid": "ok", "content": long_text},
        {"pid": 7, "content": "糖尿病患者要控制饮食。"},
        {"content": "没有编号的段落，讲的是感冒。"},
        {"pid": "long-q", "content": "[long-q] 头痛的原因很多。"},
        {"pid": "flaky-q", "content": "[flaky-q] 小儿热性惊厥多见于6个月到5岁。"},
        {"pid": "english-q", "content": "[english-q] 偏头痛是一种常见的头痛。"},
        {"pid": "mention", "content": "[mention] 高血压的治疗包括药物和生活方式。"},
        {"pid": "ref", "content": "[ref] 痛风患者应限制高嘌呤食物。"},
        {"pid": "think", "content": "[think] 感冒多为病毒感染。"},
        {"pid": "http400", "content": "[http400] 这一段让服务器出错。"},
        {"pid": "empty", "content": "  "},
    ]
    source = write_jsonl(tmp_path / "corpus.jsonl", records)
    with CannedServer(Script()) as server:
        stats = unify(config(tmp_path, server.base_url, source, "reader.text_field=content", "reader.id_field=pid"))
    derived = derived_id(2, records[2]["content"])
    accepted, rejected = assert_each_id_once(tmp_path, {r.get("pid", derived) for r in records})

    by_id = {r["id"]: r for r in accepted + rejected}
    assert {r["id"] for r in accepted} == {"ok", 7, derived, "flaky-q", "think"}
    assert {r["id"]: r["reason"] for r in rejected} == {
        "long-q": "question_too_long",
        "english-q": "question_not_chinese",
        "mention": "question_mentions_passage",
        "ref": "answer_mentions_reference",
        "http400": "endpoint_error",
        "empty": "empty_passage",
    }
    assert by_id["ok"]["question"] == "我最近总头晕，是不是高血压？"  # label stripped
    assert by_id["think"]["answer"] == "多喝水，注意休息。"  # inline reasoning stripped
    assert by_id["flaky-q"]["attempts"] == {"question": 2, "answer": 1}
    assert by_id["long-q"]["attempts"] == {"question": 2, "answer": 0}
    assert by_id["ref"]["attempts"] == {"question": 1, "answer": 2} and by_id["ref"]["question"]
    assert "this passage breaks the server" in by_id["http400"]["detail"]
    assert all(r["text"] == next(x["content"] for x in records if x.get("pid", derived) == r["id"]) for r in accepted)
    assert all(r["model"] == "canned" and r["finish_reason"] == "stop" for r in accepted)

    # Every request is accounted for: 2 per accepted passage, plus the content retries, one for the 400.
    assert len(server.bodies) == stats["requests"] == 2 * 5 + 1 + (2 + 2 + 2 + 3 + 1)
    assert sum(r["requests"] for r in accepted + rejected) == len(server.bodies) - 1  # the 400 was never answered
    assert stats["accepted"] == 5 and stats["rejected"] == 6 and stats["remaining"] == 0
    assert stats["reasons"]["endpoint_error"] == 1 and set(stats["reasons"]) <= REASONS
    assert json.loads((tmp_path / "run" / "stats.json").read_text())["accepted_total"] == 5

    # The paper's cuts: 400 characters in the question prompt, 600 in the answer prompt; per-call params apply.
    ok_calls = [b for b in server.bodies if long_text[:30] in b["messages"][-1]["content"]]
    question_call, answer_call = sorted(ok_calls, key=is_answer_call)
    assert long_text[:400] in question_call["messages"][-1]["content"]
    assert long_text[:401] not in question_call["messages"][-1]["content"]
    assert long_text[:600] in answer_call["messages"][-1]["content"] and long_text[:601] not in str(answer_call)
    assert question_call["max_tokens"] == 256 and answer_call["max_tokens"] == 1024
    assert question_call["model"] == "canned"

    # The prepare stage reads the output as a data source, auto-detected and as format unify.
    for fmt in ("auto", "unify"):
        spec = SourceSpec(name="unified", paths=[str(tmp_path / "out" / "unified.jsonl")], format=fmt)
        pairs = [turns for _, turns in iter_conversations(spec, "raise", LoadReport())]
        assert sorted(pairs) == sorted([r["question"], r["answer"]] for r in accepted)


def test_a_rerun_skips_finished_ids_and_redoes_a_torn_last_line(tmp_path):
    with CannedServer(simple_reply) as server:
        first = unify(config(tmp_path, server.base_url, DEMO, "limit=10"))
        assert first["accepted"] == 10 and len(server.bodies) == 20
        output = tmp_path / "out" / "unified.jsonl"
        done = {r["id"] for r in read_jsonl(output)}
        torn_id = sorted(DEMO_IDS - done)[0]
        with output.open("ab") as handle:  # what a kill in the middle of a write leaves
            handle.write(json.dumps({"id": torn_id, "question": "半截"}, ensure_ascii=False).encode()[:25])
        second = unify(config(tmp_path, server.base_url, DEMO))
        assert second["finished_before"] == 10 and second["accepted"] == 26 and second["accepted_total"] == 36
        assert len(server.bodies) == 20 + 2 * 26  # finished passages were not asked again
        third = unify(config(tmp_path, server.base_url, DEMO))
        assert third["processed"] == 0 and len(server.bodies) == 72
    accepted, _ = assert_each_id_once(tmp_path, DEMO_IDS)
    assert next(r for r in accepted if r["id"] == torn_id)["question"] == "我最近总头晕，是不是高血压？"


def test_faults_on_the_wire_lose_and_duplicate_no_passage(tmp_path):
    faults = {"429": 0.08, "429_retry_after": 0.06, "500": 0.1, "hang": 0.04, "malformed": 0.08, "drop": 0.06}
    with (
        CannedServer(Script()) as upstream,
        FaultProxy(upstream.base_url, faults, seed=5, hang=1.5, retry_after=0) as proxy,
    ):
        stats = unify(
            config(tmp_path, proxy.base_url, DEMO, "endpoint.timeout=0.5", "endpoint.max_attempts=3", "limit=30")
        )
    accepted, rejected = outputs(tmp_path)
    ids = [r["id"] for r in accepted + rejected]
    assert len(ids) == len(set(ids)) == 30 and set(ids) <= DEMO_IDS
    assert all(r["reason"] == "endpoint_error" for r in rejected)  # every other passage of the demo is fine
    assert stats["retries"] > 0 and set(stats["failures"]) >= {"http 429", "http 500", "timeout", "malformed reply"}
    # With 3 tries per request some passages are given up on; each says which failure ended it.
    assert all(r["detail"].startswith("endpoint_error: ") for r in rejected)
    assert stats["accepted"] + stats["rejected"] == 30 and stats["rejected"] == len(rejected)
    assert proxy.counts["forwarded"] == len(upstream.bodies)


def test_retry_endpoint_failures_moves_them_and_nothing_else(tmp_path):
    source = write_jsonl(
        tmp_path / "corpus.jsonl",
        [{"id": f"a{i}", "text": f"段落{i}：头痛的原因很多。"} for i in range(6)]
        + [{"id": "down", "text": "[http400] 服务器出错。"}, {"id": "bad", "text": "[long-q] 头痛。"}],
    )
    with CannedServer(Script()) as server:
        unify(config(tmp_path, server.base_url, source))
    assert {r["id"]: r["reason"] for r in outputs(tmp_path)[1]} == {
        "down": "endpoint_error",
        "bad": "question_too_long",
    }
    with CannedServer(simple_reply) as healed:
        plain = unify(config(tmp_path, healed.base_url, source))
        assert plain["processed"] == 0  # by default a rerun leaves them be
        with (tmp_path / "out" / "unified.rejected.jsonl").open("ab") as handle:
            handle.write(b'{"id": "a3", "reason": "endpoint_er')  # a torn line (a3 is accepted already)
        redo = unify(config(tmp_path, healed.base_url, source, "retry_endpoint_failures=true"))
    assert redo["processed"] == 1 and redo["accepted"] == 1 and len(healed.bodies) == 2
    accepted, rejected = assert_each_id_once(tmp_path, {f"a{i}" for i in range(6)} | {"down", "bad"})
    assert [r["id"] for r in rejected] == ["bad"] and "down" in {r["id"] for r in accepted}


def test_a_refused_key_stops_the_run_and_records_nothing(tmp_path):
    with CannedServer(lambda body: (401, "invalid api key")) as server:
        with pytest.raises(UnifyError, match="stopped: the endpoint"):
            unify(config(tmp_path, server.base_url, DEMO))
    assert outputs(tmp_path) == ([], [])  # nothing is marked done: a rerun with a good key does everything


def test_an_endpoint_that_keeps_failing_stops_the_run(tmp_path):
    def reply(body: dict) -> str | tuple[int, str]:
        return simple_reply(body) if len(server.bodies) <= 4 else (503, "overloaded")  # up for 2 passages, then down

    with CannedServer(reply) as server:
        with pytest.raises(UnifyError, match="3 passages in a row"):
            unify(
                config(
                    tmp_path,
                    server.base_url,
                    DEMO,
                    "endpoint.max_attempts=2",
                    "max_consecutive_endpoint_errors=3",
                    "passages_in_flight=1",
                )
            )
    accepted, rejected = outputs(tmp_path)
    assert len(accepted) == 2 and len(rejected) == 3 and {r["reason"] for r in rejected} == {"endpoint_error"}
    assert all(
        "gave up after 2 attempts (last: http 503: " in r["detail"] and "overloaded" in r["detail"] for r in rejected
    )
    assert len(server.bodies) == 4 + 3 * 2


def test_nothing_listening_stops_the_run_before_recording_anything(tmp_path):
    with CannedServer() as server:
        dead = server.base_url  # the port is closed once the block ends
    with pytest.raises(UnifyError, match="connection error"):
        unify(config(tmp_path, dead, DEMO, "endpoint.max_attempts=2"))
    assert outputs(tmp_path) == ([], [])


def test_split_runs_account_for_every_chunk(tmp_path):
    with CannedServer(simple_reply) as server:
        stats = unify(config(tmp_path, server.base_url, DEMO, "split.max_chars=300"))
    accepted, rejected = outputs(tmp_path)
    assert not rejected and stats["accepted"] == len(accepted) > 36
    chunked = [r for r in accepted if "#" in str(r["id"])]
    assert chunked and all(r["id"] == f"{r['source_id']}#{r['chunk']}" and len(r["text"]) <= 300 for r in chunked)
    assert {r.get("source_id", r["id"]) for r in accepted} == DEMO_IDS
    for source_id in {r["source_id"] for r in chunked}:
        parts = sorted((r for r in chunked if r["source_id"] == source_id), key=lambda r: r["chunk"])
        assert [r["chunk"] for r in parts] == list(range(1, parts[0]["chunks"] + 1))


def test_input_formats(tmp_path):
    reader = ReaderSettings()
    strings = tmp_path / "list.json"
    strings.write_text(json.dumps(["第一段。", "第二段。"], ensure_ascii=False), encoding="utf-8")
    lines = tmp_path / "lines.txt"
    lines.write_text("第一行\n\n第二行\r\n", encoding="utf-8")
    paragraphs = tmp_path / "paragraphs.txt"
    paragraphs.write_text("甲一\n甲二\n\n\n乙\n", encoding="utf-8")
    table = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": ["r1", "r2"], "text": ["行一", "行二"]}), table)

    def texts(path: Path, **kw) -> list[tuple]:
        return [(u.id, u.text) for _, u in iter_passages([path], ReaderSettings(**kw))]

    assert texts(strings) == [(derived_id(0, "第一段。"), "第一段。"), (derived_id(1, "第二段。"), "第二段。")]
    assert texts(lines) == [(derived_id(0, "第一行"), "第一行"), (derived_id(1, "第二行"), "第二行")]
    assert [t for _, t in texts(paragraphs, text_unit="paragraph")] == ["甲一\n甲二", "乙"]
    assert texts(table) == [("r1", "行一"), ("r2", "行二")]
    assert [loc for loc, _ in iter_passages([lines], reader)] == [f"{lines}:1", f"{lines}:3"]
    # Several files read as one input: positions (and so derived ids) run on across files.
    both = [u.id for _, u in iter_passages([strings, lines], reader)]
    assert both == [
        derived_id(0, "第一段。"),
        derived_id(1, "第二段。"),
        derived_id(2, "第一行"),
        derived_id(3, "第二行"),
    ]
    # Derived ids change with the text, so an edited file never passes a new passage off as finished.
    assert derived_id(0, "a") != derived_id(0, "b") and derived_id(0, "a") == derived_id(0, "a")


def test_bad_input_is_one_error_naming_each_line_the_value_and_the_fix(tmp_path):
    source = tmp_path / "corpus.jsonl"
    source.write_text(
        '{"id": "a", "text": "好"}\n{"id": "b", "text": 5}\n{"id": "c", "body": "x"}\nnot json\n'
        '{"id": "a", "text": "重复"}\n{"id": [1], "text": "y"}\n',
        encoding="utf-8",
    )
    with CannedServer(simple_reply) as server:
        with pytest.raises(HuatuoError) as err:
            unify(config(tmp_path, server.base_url, source))
    message = str(err.value)
    assert "6 bad input record(s)" not in message and "5 bad input record(s)" in message
    for expected in (
        f"{source}:2: field 'text' is int",
        f"{source}:3: no field 'text' (keys: ['body', 'id']); set reader.text_field",
        f"{source}:4: malformed JSON",
        f"{source}:5: id 'a' is already used at {source}:1",
        f"{source}:6: id field 'id' is [1]",
    ):
        assert expected in message
    assert not server.bodies and outputs(tmp_path) == ([], [])


def test_bad_config_is_one_error_naming_every_key(tmp_path):
    with CannedServer(simple_reply) as server:
        cfg = config(
            tmp_path,
            server.base_url,
            DEMO,
            "question.prompt=no placeholder",
            "answer.cut=0",
            "reader.format=xml",
            "answer.jaccard_threshold=2",
            "split.max_chars=10",
            "endpoint.max_concurrency=0",
            "+answer.params.stream=true",
            f"output={DEMO}",
        )
        with pytest.raises(HuatuoError) as err:
            unify(cfg)
    message = str(err.value)
    for key in (
        "question.prompt",
        "answer.cut=0",
        "reader.format='xml'",
        "answer.jaccard_threshold=2",
        "split.max_chars=10",
        "endpoint.max_concurrency=0",
        "would overwrite an input",
        "answer.params sets ['stream']",
    ):
        assert key in message


def test_a_key_pasted_into_the_config_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-planted-in-config-123456")
    cfg = config(tmp_path, "http://127.0.0.1:9/v1", DEMO, "+endpoint.params.api_key=sk-planted-in-config-123456")
    with pytest.raises(HuatuoError) as err:
        unify(cfg)
    assert "endpoint.params.api_key holds the API key" in str(err.value)
    assert "sk-planted-in-config-123456" not in str(err.value)


def test_openai_without_a_key_is_refused_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = compose_config(
        "unify",
        [f"input={DEMO}", f"output={tmp_path / 'o.jsonl'}", "endpoint.model=gpt-4o-mini", f"paths.run_dir={tmp_path}"],
    )
    with pytest.raises(HuatuoError, match=r"\$OPENAI_API_KEY is empty"):
        unify(cfg)


def test_filters():
    question = QuestionSettings(max_chars=10, min_chinese_share=0.5, forbidden=["文中"])
    assert check_question("头痛怎么办？", question) is None
    assert check_question("", question)[0] == "question_empty"
    assert check_question("头" * 11, question)[0] == "question_too_long"
    assert check_question("Why ACEI?", question)[0] == "question_not_chinese"
    assert check_question("文中说什么？", question)[0] == "question_mentions_passage"
    answer = AnswerSettings(jaccard_threshold=0.5, jaccard_ngram=1, cut=4)
    assert check_answer("高血压要吃药", "高血压药", answer) is None  # 4 shared of 6 characters: 0.67
    assert check_answer("多喝热水吧", "高血压药物治疗", answer)[0] == "answer_low_overlap"
    assert check_answer("参考资料说要吃药", "参考资料", answer)[0] == "answer_mentions_reference"
    assert ngram_jaccard("abcd", "abce", 2) == pytest.approx(2 / 4)
    assert ngram_jaccard("a", "abc", 2) == 0.0
    assert chinese_share("服用ACEI类药物") == pytest.approx(5 / 9)
    assert clean_reply("<think>嗯</think>\n问题：“头痛怎么办？”") == "头痛怎么办？"
    assert clean_reply("<question>: Why?") == "Why?"


def test_split_passage_keeps_every_character_in_paragraph_sized_chunks():
    text = next(json.loads(line)["text"] for line in DEMO.read_text().splitlines() if '"p01"' in line)
    chunks = split_passage(text, max_chars=200, min_chars=50)
    assert len(chunks) > 1 and all(len(c) <= 200 for c in chunks)
    assert "".join("".join(c.split()) for c in chunks) == "".join(text.split())
    english = "First sentence here. " * 30
    parts = split_passage(english, max_chars=100, min_chars=10)
    assert all(len(p) <= 100 and p.endswith(".") for p in parts)
    # Tiny paragraphs (a heading) join their neighbours while the result fits.
    assert split_passage("短。\n\n也短。\n\n" + "长" * 90, 100, 20) == ["短。\n\n也短。\n\n" + "长" * 90]
    assert split_passage("短。\n\n也短。\n\n" + "长" * 95, 100, 20) == ["短。\n\n也短。", "长" * 95]
    assert split_passage("没" * 250, max_chars=100, min_chars=10) == ["没" * 100, "没" * 100, "没" * 50]


def test_several_input_files_and_a_text_corpus(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"id": "a1", "text": "头痛。"}, {"id": "a2", "text": "发热。"}])
    second = tmp_path / "b.txt"
    second.write_text("第一段第一行\n第一段第二行\n\n第二段\n", encoding="utf-8")
    with CannedServer(simple_reply) as server:
        stats = unify(
            config(tmp_path, server.base_url, first, f"input=[{first},{second}]", "reader.text_unit=paragraph")
        )
    accepted, _ = assert_each_id_once(
        tmp_path, {"a1", "a2", derived_id(2, "第一段第一行\n第一段第二行"), derived_id(3, "第二段")}
    )
    assert stats["accepted"] == 4 and {r["text"] for r in accepted} >= {"第一段第一行\n第一段第二行", "第二段"}
