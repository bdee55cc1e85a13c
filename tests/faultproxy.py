"""A fault-injecting HTTP proxy on 127.0.0.1 (real sockets) for OpenAI-compatible endpoints.

It forwards requests to an upstream server but answers a seeded share of them with a fault instead: 429 with or
without ``Retry-After``, 500, a hang longer than the client's timeout, malformed JSON, a reply without choices, or
a dropped connection. The fault for a request is drawn from ``(seed, request body, how many times that body was
seen)``, so a run sees the same faults whatever order concurrent requests arrive in. Every request is logged with
its headers, body and fault, so tests can check what reached the server (and that the key travelled only as the
``Authorization`` header).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakeserver import Server

FAULTS = ("429", "429_retry_after", "500", "hang", "malformed", "no_choices", "drop")


@dataclass
class Logged:
    """One request as the proxy saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    fault: str | None  # None: forwarded upstream


class FaultProxy:
    """``with FaultProxy(upstream, {"500": 0.1, "hang": 0.05}, seed=0) as proxy:`` serves ``proxy.base_url``."""

    def __init__(
        self, upstream: str, faults: dict[str, float], seed: int = 0, hang: float = 5.0, retry_after: int = 1
    ) -> None:
        unknown = set(faults) - set(FAULTS)
        assert not unknown, f"unknown faults {unknown}; known: {FAULTS}"
        assert sum(faults.values()) < 1, "fault shares must leave room for forwarded requests"
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:8000/v1
        self.faults = faults
        self.seed = seed
        self.hang = hang  # seconds a "hang" holds the connection before closing it without a reply
        self.retry_after = retry_after  # seconds in the Retry-After header of "429_retry_after"
        self.log: list[Logged] = []
        self.counts: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def choose(self, body: bytes) -> str | None:
        """The fault for this request (None: forward it), a function of the seed, the messages and their repeat count.

        Only the messages count, not the whole body: the model name is often a temporary folder's path, which would
        make the faults differ from run to run.
        """
        try:
            key = json.dumps(json.loads(body).get("messages"), ensure_ascii=False, sort_keys=True).encode()
        except (ValueError, AttributeError):
            key = body
        digest = hashlib.sha256(key).hexdigest()
        with self._lock:
            repeat = self._seen[digest]
            self._seen[digest] += 1
        draw = random.Random(f"{self.seed}|{digest}|{repeat}").random()
        edge = 0.0
        for fault, share in self.faults.items():
            edge += share
            if draw < edge:
                return fault
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                fault = proxy.choose(body)
                with proxy._lock:
                    proxy.log.append(Logged(self.path, {k.lower(): v for k, v in self.headers.items()}, body, fault))
                    proxy.counts[fault or "forwarded"] += 1
                if fault == "hang":
                    time.sleep(proxy.hang)
                    self.close_connection = True
                    return
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "429":
                    return self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}})
                if fault == "429_retry_after":
                    error = {"error": {"message": "rate limited", "type": "rate_limit"}}
                    return self._send(429, error, {"Retry-After": str(proxy.retry_after)})
                if fault == "500":
                    return self._send(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
                if fault == "malformed":
                    return self._send_raw(200, b'{"id": "chatcmpl-x", "choices": [{"message": {"content": "tru')
                if fault == "no_choices":
                    return self._send(200, {"id": "chatcmpl-x", "object": "chat.completion", "choices": []})
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                path = self.path[len("/v1") :] if self.path.startswith("/v1") else self.path
                headers = {"Content-Type": "application/json"}
                if "authorization" in {k.lower() for k in self.headers}:
                    headers["Authorization"] = self.headers["Authorization"]
                request = urllib.request.Request(proxy.upstream + path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=600) as response:
                        self._send_raw(response.status, response.read())
                except urllib.error.HTTPError as error:
                    self._send_raw(error.code, error.read())

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                self._send_raw(status, json.dumps(payload).encode(), headers)

            def _send_raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler
