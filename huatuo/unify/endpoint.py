"""A client for any OpenAI-compatible chat endpoint (OpenAI, vLLM, SGLang, ``transformers serve``...).

Shared by the unify stage and the LLM judge: bounded concurrency, exponential backoff with full jitter on
429 / 5xx / timeouts / connection errors / malformed replies, ``Retry-After`` respected (and shared: one 429 pauses
every request of the client, so a rate-limited endpoint is not hammered by the other slots), a per-request
deadline, and the API key read from an environment variable only (never logged, never written anywhere, redacted
from error messages).
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from huatuo.core.errors import HuatuoError

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# Failures that no retry or other passage can fix: a wrong key, a forbidden model, a wrong URL or model name.
FATAL_KINDS = {"http 401", "http 403", "http 404"}
_KEY_LIKE = re.compile(r"\b(sk|key|token)-[A-Za-z0-9_\-*.]{6,}", re.IGNORECASE)


class EndpointError(HuatuoError, RuntimeError):
    """A request that failed for good (after its retries, or with a non-retryable error)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind  # short reason, e.g. "http 500", "timeout", "malformed reply"

    @property
    def fatal(self) -> bool:
        """True when every later request would fail the same way (bad key, wrong URL or model)."""
        return self.kind in FATAL_KINDS


@dataclass
class EndpointSettings:
    """Where and how to call the endpoint; every field can be set from YAML."""

    base_url: str | None = None  # None: https://api.openai.com/v1
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never from config
    timeout: float = 120.0  # seconds per request
    max_concurrency: int = 16  # requests in flight at once
    max_attempts: int = 6  # per request, for transport failures (429, 5xx, timeouts, malformed replies)
    backoff_initial: float = 1.0  # seconds before the first retry; doubles each time, with full jitter
    backoff_max: float = 60.0
    params: dict[str, Any] = field(default_factory=dict)  # default sampling params: temperature, max_tokens...

    def api_key(self) -> str:
        """The key from the environment; local servers accept any placeholder."""
        return os.environ.get(self.api_key_env) or "no-key"

    def has_api_key(self) -> bool:
        """Whether the environment variable named by ``api_key_env`` holds a key."""
        return bool(os.environ.get(self.api_key_env))

    def problems(self, prefix: str = "endpoint") -> list[str]:
        """Every problem of these settings, each naming the key, the value and the fix."""
        out = []
        if not self.model or not isinstance(self.model, str):
            out.append(f"{prefix}.model={self.model!r}: name the model the endpoint serves, e.g. gpt-4o-mini")
        if self.base_url is not None and not str(self.base_url).startswith(("http://", "https://")):
            out.append(f"{prefix}.base_url={self.base_url!r}: use an http(s) URL such as http://127.0.0.1:8000/v1")
        if not self.api_key_env or not str(self.api_key_env).isidentifier():
            out.append(f"{prefix}.api_key_env={self.api_key_env!r}: name an environment variable, e.g. OPENAI_API_KEY")
        if not _positive(self.timeout):
            out.append(f"{prefix}.timeout={self.timeout!r} must be a number of seconds > 0")
        for name in ("max_concurrency", "max_attempts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                out.append(f"{prefix}.{name}={value!r} must be an integer >= 1")
        if not _positive(self.backoff_initial) or not _positive(self.backoff_max):
            out.append(
                f"{prefix}.backoff_initial={self.backoff_initial!r} and backoff_max={self.backoff_max!r} "
                "must be numbers of seconds > 0"
            )
        out += params_problems(self.params, f"{prefix}.params")
        return out


RESERVED_PARAMS = frozenset({"model", "messages", "stream", "n"})  # request fields the client sets itself


def params_problems(params: Any, key: str) -> list[str]:
    """Problems of a mapping of request fields (``endpoint.params``, a call's own ``params``)."""
    if not isinstance(params, Mapping):
        return [f"{key}={params!r} must be a mapping of request fields, e.g. {{temperature: 0.7}}"]
    if reserved := RESERVED_PARAMS & set(params):
        return [f"{key} sets {sorted(reserved)}: the client sets these itself; remove them"]
    return []


@dataclass
class ChatResult:
    """One completed request: the text and how many attempts it took."""

    text: str
    attempts: int
    seconds: float
    finish_reason: str | None = None  # "stop", "length" (cut at max_tokens), ... when the server says


def retry_after_seconds(error: BaseException) -> float | None:
    """The server's requested wait from ``Retry-After`` (seconds or HTTP date) or ``retry-after-ms``."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):  # neither seconds nor a date: fall back to our own backoff
            return None
        return max(0.0, parsed.timestamp() - time.time())


def classify(error: BaseException) -> tuple[str, bool]:
    """A short kind for a failed request and whether retrying can help."""
    import openai

    if isinstance(error, openai.APITimeoutError | asyncio.TimeoutError | TimeoutError):
        return "timeout", True
    if isinstance(error, openai.APIConnectionError):
        return "connection error", True
    if isinstance(error, openai.APIStatusError):
        return f"http {error.status_code}", error.status_code in RETRYABLE_STATUS
    if isinstance(error, openai.APIResponseValidationError | ValueError | KeyError | IndexError | TypeError):
        return "malformed reply", True
    if isinstance(error, openai.APIError):
        return "api error", True
    return type(error).__name__, False


class ChatClient:
    """Async chat completions with bounded concurrency and retries; one instance per run."""

    def __init__(self, settings: EndpointSettings, sleep=asyncio.sleep) -> None:
        self.settings = settings
        self._client = self._new_client()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the pool and semaphore belong to
        self._slots: asyncio.Semaphore | None = None
        self._sleep = sleep
        self._not_before = 0.0  # monotonic time before which no request starts (set by a 429's Retry-After)
        self.retries = 0  # total retries made (for progress reports)
        self.requests = 0  # total attempts sent
        self.successes = 0  # requests answered with a usable reply
        self.failures: Counter[str] = Counter()  # failed attempts by kind, retried or not

    def _new_client(self):
        import openai  # here, not at the top: config checks import this module and should not wait for the SDK

        s = self.settings
        return openai.AsyncOpenAI(base_url=s.base_url, api_key=s.api_key(), timeout=s.timeout, max_retries=0)

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            if self._loop is not None:  # a second asyncio.run: the old pool's connections died with their loop
                self._client = self._new_client()
            self._loop, self._slots = loop, asyncio.Semaphore(self.settings.max_concurrency)
        return self._slots

    def backoff(self, attempt: int, error: BaseException) -> float:
        """Seconds to wait before retry ``attempt`` (1-based): Retry-After if given, else jittered doubling."""
        requested = retry_after_seconds(error)
        if requested is not None:
            return min(requested, self.settings.backoff_max)
        ceiling = min(self.settings.backoff_max, self.settings.backoff_initial * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)

    async def chat(self, messages: list[dict[str, str]], **params: Any) -> ChatResult:
        """One chat completion; retries transport failures, raises EndpointError when it gives up."""
        started = time.perf_counter()
        merged = {**self.settings.params, **params}
        last_kind, last_error = "unknown", ""
        for attempt in range(1, self.settings.max_attempts + 1):
            if (pause := self._not_before - time.monotonic()) > 0:
                await self._sleep(pause)
            try:
                async with self._semaphore():
                    self.requests += 1
                    # The SDK's timeout is per socket operation: a server that trickles bytes never trips it.
                    # This deadline bounds the whole request, queueing at the semaphore excluded.
                    response = await asyncio.wait_for(
                        self._client.chat.completions.create(model=self.settings.model, messages=messages, **merged),
                        timeout=self.settings.timeout,
                    )
                choice = response.choices[0]
                text = choice.message.content
                if not isinstance(text, str):
                    raise ValueError("reply has no message content")
                self.successes += 1
                return ChatResult(
                    text=text,
                    attempts=attempt,
                    seconds=time.perf_counter() - started,
                    finish_reason=getattr(choice, "finish_reason", None),
                )
            except Exception as error:  # noqa: BLE001 - classified below; programming errors re-raise
                last_kind, retryable = classify(error)
                last_error = _describe(error)
                self.failures[last_kind] += 1
                if not retryable:
                    message = self.redact(f"request failed ({last_kind}): {last_error}")
                    raise EndpointError(message, last_kind) from None
                if attempt == self.settings.max_attempts:
                    break
                self.retries += 1
                wait = self.backoff(attempt, error)
                if last_kind == "http 429" and retry_after_seconds(error) is not None:
                    self._not_before = max(self._not_before, time.monotonic() + wait)
                await self._sleep(wait)
        message = f"gave up after {self.settings.max_attempts} attempts (last: {last_kind}: {last_error[:200]})"
        raise EndpointError(self.redact(message), last_kind)

    def redact(self, text: str) -> str:
        """``text`` with the API key, and anything shaped like a key, replaced by ``***``."""
        key = os.environ.get(self.settings.api_key_env)
        if key:
            text = text.replace(key, "***")
        return _KEY_LIKE.sub(r"\1-***", text)

    async def close(self) -> None:
        """Release the HTTP connection pool."""
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            self._client, self._loop = self._new_client(), None  # its connections died with their loop
            return
        await self._client.close()


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _describe(error: BaseException) -> str:
    # Status, message and the server's error body only: never the request headers, which carry the key.
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    body = getattr(error, "body", None)
    if body is not None and str(body) not in message:
        message = f"{message} {body}"
    return message[:300]
