"""A client for any OpenAI-compatible chat endpoint (OpenAI, vLLM, SGLang, ``transformers serve``...).

Shared by the unify stage and the LLM judge: bounded concurrency, exponential backoff with full jitter on
429 / 5xx / timeouts / connection errors / malformed replies, ``Retry-After`` respected, a per-request timeout,
and the API key read from an environment variable only (never logged, never written anywhere).
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import openai

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class EndpointError(RuntimeError):
    """A request that failed for good (after its retries, or with a non-retryable error)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind  # short reason, e.g. "http 500", "timeout", "malformed reply"


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


@dataclass
class ChatResult:
    """One completed request: the text and how many attempts it took."""

    text: str
    attempts: int
    seconds: float


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
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def classify(error: BaseException) -> tuple[str, bool]:
    """A short kind for a failed request and whether retrying can help."""
    if isinstance(error, openai.APITimeoutError | asyncio.TimeoutError):
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
        self._client = openai.AsyncOpenAI(
            base_url=settings.base_url, api_key=settings.api_key(), timeout=settings.timeout, max_retries=0
        )
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        self._sleep = sleep
        self.retries = 0  # total retries made (for progress reports)

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
        last_kind = "unknown"
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                async with self._semaphore:
                    response = await self._client.chat.completions.create(
                        model=self.settings.model, messages=messages, **merged
                    )
                text = response.choices[0].message.content
                if not isinstance(text, str):
                    raise ValueError("reply has no message content")
                return ChatResult(text=text, attempts=attempt, seconds=time.perf_counter() - started)
            except Exception as error:  # noqa: BLE001 - classified below; programming errors re-raise
                last_kind, retryable = classify(error)
                if not retryable:
                    raise EndpointError(f"request failed ({last_kind}): {_describe(error)}", last_kind) from None
                if attempt == self.settings.max_attempts:
                    break
                self.retries += 1
                await self._sleep(self.backoff(attempt, error))
        raise EndpointError(f"gave up after {self.settings.max_attempts} attempts (last: {last_kind})", last_kind)

    async def close(self) -> None:
        """Release the HTTP connection pool."""
        await self._client.close()


def _describe(error: BaseException) -> str:
    # Status and message only: never the request headers, which carry the key.
    message = getattr(error, "message", None) or str(error)
    return message[:300]
