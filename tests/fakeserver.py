"""A scripted OpenAI-compatible chat server on 127.0.0.1 (real sockets, a thread per connection).

Its replies come from a function of the request body, so tests can script exact behaviour (a question that is too
long, an answer that mentions a reference, an HTTP 400) and check the client and the unify stage end to end.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# A reply function gets the request body and returns the reply text, or (status, error message) for an error.
Reply = Callable[[dict[str, Any]], "str | tuple[int, str]"]


def echo_reply(body: dict[str, Any]) -> str:
    """The last user message, reversed: enough to tell requests apart."""
    return body["messages"][-1]["content"][::-1]


class Server(ThreadingHTTPServer):
    """A threading HTTP server whose listen backlog takes a burst of concurrent connections."""

    daemon_threads = True
    request_queue_size = 128  # the default 5 resets connections when 16 clients connect at once

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        # http.server writes headers and body separately: without this, Nagle + delayed ACK add ~40 ms per reply.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address


class CannedServer:
    """``with CannedServer(reply, latency) as server:`` serves ``server.base_url`` until the block ends."""

    def __init__(self, reply: Reply = echo_reply, latency: float = 0.0) -> None:
        self.reply = reply
        self.latency = latency  # seconds each request sleeps before answering (stands in for generation)
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> CannedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real server

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with server._lock:
                    server.bodies.append(body)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.latency:
                        time.sleep(server.latency)
                    reply = server.reply(body)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                if isinstance(reply, tuple):
                    status, message = reply
                    payload = {"error": {"message": message, "type": "invalid_request_error"}}
                else:
                    status, payload = 200, completion(body.get("model", "canned"), reply)
                data = json.dumps(payload, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def completion(model: str, text: str, finish_reason: str = "stop") -> dict[str, Any]:
    """A chat.completion object as OpenAI sends it."""
    return {
        "id": "chatcmpl-canned",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
