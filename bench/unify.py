"""Unify throughput when endpoint latency dominates: sequential vs concurrent, and the client's CPU per request.

    python bench/unify.py [--latency 0.2] [--passages 48] [--concurrency 16]

A tiny OpenAI-compatible server (a subprocess, so its CPU is not counted as the client's) sleeps ``--latency``
seconds per request and returns a canned question or answer. The whole unify stage (reading, prompts, filters,
fsynced appends) runs against it twice, with one request in flight and with ``--concurrency``; then the bare
endpoint client alone. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

QUESTION = "我最近总是头晕，量血压是150/95，这算高血压吗？需要马上吃药吗？"
ANSWER = "血压150/95毫米汞柱已达到高血压的诊断标准，但需要非同日测量三次确认。" * 4


def serve(latency: float) -> None:
    """Serve canned chat completions on a free 127.0.0.1 port (printed on stdout) until killed."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body leave in two writes; with Nagle's algorithm and the client's delayed ACK, the body
            # would wait ~40 ms: a server artifact, not client cost.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            time.sleep(latency)
            text = ANSWER if "<问题>" in body["messages"][-1]["content"] else QUESTION
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            data = json.dumps({"id": "b", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data.encode())))
            self.end_headers()
            self.wfile.write(data.encode())

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_unify(base_url: str, corpus: Path, folder: Path, concurrency: int) -> dict:
    """One unify run; returns its stats plus the client process's CPU seconds."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from huatuo import conf_dir
    from huatuo.unify.run import unify

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose(
            "unify",
            [
                f"input={corpus}",
                f"output={folder / 'unified.jsonl'}",
                f"endpoint.base_url={base_url}",
                "endpoint.model=bench",
                f"endpoint.max_concurrency={concurrency}",
                f"paths.run_dir={folder / 'run'}",
                "progress=false",
            ],
        )
    cpu = cpu_seconds()
    stats = unify(cfg)
    stats["cpu"] = cpu_seconds() - cpu
    assert stats["accepted"] == stats["input_units"], stats
    return stats


def run_client(base_url: str, requests: int, concurrency: int) -> tuple[float, float]:
    """Wall and CPU seconds for ``requests`` bare chat requests with ``concurrency`` in flight."""
    from huatuo.unify.endpoint import ChatClient, EndpointSettings

    client = ChatClient(EndpointSettings(base_url=base_url, model="bench", max_concurrency=concurrency))

    async def go() -> None:
        try:
            await asyncio.gather(*[client.chat([{"role": "user", "content": f"q{i}"}]) for i in range(requests)])
        finally:
            await client.close()

    wall, cpu = time.perf_counter(), cpu_seconds()
    asyncio.run(go())
    return time.perf_counter() - wall, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server sleeps per request")
    parser.add_argument("--passages", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.latency)

    import huatuo

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--latency", str(args.latency)], stdout=subprocess.PIPE, text=True
    )
    try:
        base_url = f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
        demo = [json.loads(line) for line in Path(huatuo.asset_path("demo/corpus_passages.jsonl")).open()]
        with tempfile.TemporaryDirectory() as tmp:
            corpus = Path(tmp) / "corpus.jsonl"
            records = [{"id": f"{i}", "text": demo[i % len(demo)]["text"]} for i in range(args.passages)]
            corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
            run_client(base_url, 8, 8)  # warm-up: imports, first connections
            rows = []
            for concurrency in (1, args.concurrency):
                stats = run_unify(base_url, corpus, Path(tmp) / f"c{concurrency}", concurrency)
                rows.append((concurrency, stats))
            client_runs = [
                (n, *run_client(base_url, count, n))
                for n, count in ((1, 20), (args.concurrency, 20 * args.concurrency))
            ]
    finally:
        server.kill()
        server.wait()

    (c1, slow), (cn, fast) = rows
    print(
        f"latency {args.latency * 1000:.0f} ms per request, {args.passages} passages (2 requests each), "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| run | in flight | wall s | passages/s | requests/s | client CPU ms/request | speedup |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, concurrency, stats in (("unify", c1, slow), ("unify", cn, fast)):
        print(
            f"| {label} | {concurrency} | {stats['seconds']:.2f} | {stats['processed'] / stats['seconds']:.1f} | "
            f"{stats['requests'] / stats['seconds']:.1f} | {1000 * stats['cpu'] / stats['requests']:.2f} | "
            f"{slow['seconds'] / stats['seconds']:.1f}x |"
        )
    for (concurrency, wall, cpu), requests in zip(client_runs, (20, 20 * args.concurrency), strict=True):
        print(
            f"| client only | {concurrency} | {wall:.2f} | - | {requests / wall:.1f} | {1000 * cpu / requests:.2f} | "
            f"{args.latency * requests / concurrency / wall:.0%} of ideal |"
        )
    print(
        f"\nideal speedup {cn}x; latency-bound floor for {cn} in flight: {2 * args.passages * args.latency / cn:.2f} s"
    )


if __name__ == "__main__":
    main()
