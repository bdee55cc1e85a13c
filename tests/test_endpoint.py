"""The endpoint client against real sockets: concurrency bound, retries per fault kind, Retry-After, key hygiene."""

from __future__ import annotations

import asyncio
import email.utils
import time
from types import SimpleNamespace

import pytest

from huatuo.unify.endpoint import ChatClient, EndpointError, EndpointSettings, classify, retry_after_seconds
from tests.fakeserver import CannedServer, echo_reply
from tests.faultproxy import FaultProxy

# The client kind each injected fault must be counted as.
FAULT_KINDS = {
    "429": "http 429",
    "429_retry_after": "http 429",
    "500": "http 500",
    "hang": "timeout",
    "malformed": "malformed reply",
    "no_choices": "malformed reply",
    "drop": "connection error",
}


def settings(base_url: str, **overrides) -> EndpointSettings:
    values = dict(base_url=base_url, model="canned", timeout=5.0, backoff_initial=0.01, backoff_max=0.05)
    return EndpointSettings(**{**values, **overrides})


def ask(client: ChatClient, texts: list[str]) -> list:
    async def go():
        try:
            return await asyncio.gather(*[client.chat([{"role": "user", "content": t}]) for t in texts])
        finally:
            await client.close()

    return asyncio.run(go())


def test_concurrency_never_exceeds_the_bound():
    with CannedServer(latency=0.05) as server:
        results = ask(ChatClient(settings(server.base_url, max_concurrency=3)), [f"q{i}" for i in range(24)])
    assert [r.text for r in results] == [f"q{i}"[::-1] for i in range(24)]
    assert 1 < server.max_in_flight <= 3
    assert all(r.attempts == 1 and r.finish_reason == "stop" for r in results)


def test_every_fault_kind_is_retried_and_counted_until_each_request_succeeds():
    with CannedServer() as upstream:
        shares = {"429": 0.08, "429_retry_after": 0.08, "500": 0.1, "hang": 0.06, "malformed": 0.1, "drop": 0.08}
        shares["no_choices"] = 0.08
        with FaultProxy(upstream.base_url, shares, seed=3, hang=2.0, retry_after=0) as proxy:
            client = ChatClient(settings(proxy.base_url, timeout=0.5, max_attempts=12, max_concurrency=8))
            results = ask(client, [f"request {i}" for i in range(40)])
    assert [r.text for r in results] == [f"request {i}"[::-1] for i in range(40)]
    injected = {fault: n for fault, n in proxy.counts.items() if fault != "forwarded"}
    assert set(injected) == set(shares), "the seed should exercise every fault kind"
    expected = {}
    for fault, n in injected.items():
        expected[FAULT_KINDS[fault]] = expected.get(FAULT_KINDS[fault], 0) + n
    assert dict(client.failures) == expected
    assert client.retries == sum(injected.values())
    assert sum(r.attempts for r in results) == len(proxy.log) == client.requests
    assert proxy.counts["forwarded"] == 40  # each request reached the server exactly once


def test_faults_are_a_function_of_the_seed_not_of_arrival_order():
    def run(concurrency: int) -> list[str | None]:
        with CannedServer() as upstream, FaultProxy(upstream.base_url, {"500": 0.3}, seed=11) as proxy:
            ask(ChatClient(settings(proxy.base_url, max_attempts=10, max_concurrency=concurrency)), list("abcdefgh"))
        return sorted((entry.body, entry.fault or "") for entry in proxy.log)

    assert run(1) == run(8)


def test_retry_after_is_waited_for_exactly():
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    with CannedServer() as upstream, FaultProxy(upstream.base_url, {"429_retry_after": 0.999}, retry_after=7) as proxy:
        client = ChatClient(settings(proxy.base_url, max_attempts=3, backoff_max=60), sleep=record)
        with pytest.raises(EndpointError) as err:
            ask(client, ["x"])
    assert err.value.kind == "http 429" and not err.value.fatal
    # Two retries, each waiting the server's 7 s (the shared pause re-checks the clock, so it may be a hair less).
    assert len(waits) >= 2 and all(6.9 < w <= 7.0 for w in waits)
    assert len(proxy.log) == 3


def test_retry_after_parsing():
    def error(headers):
        return SimpleNamespace(response=SimpleNamespace(headers=headers))

    assert retry_after_seconds(error({"retry-after": "3"})) == 3.0
    assert retry_after_seconds(error({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after_seconds(error({"retry-after": later})) <= 30
    assert retry_after_seconds(error({"retry-after": "soon"})) is None
    assert retry_after_seconds(error({})) is None
    client = ChatClient(EndpointSettings(base_url="http://127.0.0.1:9/v1", backoff_initial=1, backoff_max=8))
    assert client.backoff(1, error({"retry-after": "100"})) == 8  # capped at backoff_max
    assert all(0 <= client.backoff(4, error({})) <= 8 for _ in range(50))


def test_non_retryable_errors_fail_at_once_with_the_server_message():
    def reply(body):
        return (400, "maximum context length exceeded") if "long" in body["messages"][0]["content"] else "ok"

    with CannedServer(reply) as server:
        with pytest.raises(EndpointError) as err:
            ask(ChatClient(settings(server.base_url)), ["long prompt"])
    assert err.value.kind == "http 400" and not err.value.fatal
    assert "maximum context length exceeded" in str(err.value)
    assert len(server.bodies) == 1


def test_a_timeout_gives_up_after_max_attempts():
    with CannedServer(latency=1.5) as server:
        client = ChatClient(settings(server.base_url, timeout=0.3, max_attempts=2))
        with pytest.raises(EndpointError) as err:
            ask(client, ["slow"])
    assert err.value.kind == "timeout" and "2 attempts" in str(err.value)
    assert client.failures == {"timeout": 2}


def test_the_key_travels_only_as_the_authorization_header_and_is_redacted_from_errors(monkeypatch):
    key = "sk-planted-0123456789abcdef"
    monkeypatch.setenv("HUATUO_TEST_KEY", key)

    def reply(body):
        return (401, f"Incorrect API key provided: {key} (a similar key: sk-proj-****cdef)")

    with CannedServer(reply) as server:
        with pytest.raises(EndpointError) as err:
            ask(ChatClient(settings(server.base_url, api_key_env="HUATUO_TEST_KEY")), ["hello"])
    assert err.value.fatal and err.value.kind == "http 401"
    assert key not in str(err.value) and "sk-proj" not in str(err.value)
    assert "provided: *** (a similar key: sk-***)" in str(err.value)
    headers = server.headers[0]
    assert headers["authorization"] == f"Bearer {key}"
    assert not [name for name, value in headers.items() if key in value and name != "authorization"]
    assert key not in str(server.bodies)


def test_one_client_serves_two_event_loops():
    with CannedServer() as server:
        client = ChatClient(settings(server.base_url, max_concurrency=2))

        async def one(text: str) -> str:
            return (await client.chat([{"role": "user", "content": text}])).text

        assert asyncio.run(one("first")) == "tsrif"
        assert asyncio.run(one("second")) == "dnoces"
        asyncio.run(client.close())


def test_settings_problems_name_every_bad_key():
    bad = EndpointSettings(base_url="127.0.0.1:8000", model="", timeout=0, max_concurrency=0, api_key_env="MY KEY")
    problems = "\n".join(bad.problems())
    for key in ("endpoint.base_url", "endpoint.model", "endpoint.timeout", "endpoint.max_concurrency", "api_key_env"):
        assert key in problems
    assert EndpointSettings(base_url="http://127.0.0.1:8000/v1").problems() == []


def test_params_the_client_sets_itself_are_refused_for_every_endpoint_block():
    judge = EndpointSettings(base_url="http://127.0.0.1:8000/v1", params={"model": "x", "temperature": 0.0})
    assert judge.problems("eval.judge") == [
        "eval.judge.params sets ['model']: the client sets these itself; remove them"
    ]
    assert "must be a mapping" in EndpointSettings(params=[1]).problems("eval.endpoint")[-1]


def test_classify_tells_retryable_from_fatal():
    assert classify(ValueError("bad json")) == ("malformed reply", True)
    assert classify(asyncio.TimeoutError()) == ("timeout", True)
    assert classify(RuntimeError("bug")) == ("RuntimeError", False)
    assert echo_reply({"messages": [{"content": "ab"}]}) == "ba"
