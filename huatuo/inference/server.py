"""A local OpenAI-compatible server for a model folder: ``transformers serve`` on 127.0.0.1 (extra ``serving``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def transformers_serve(
    model_dir: Path,
    startup_timeout: float = 180.0,
    log_path: Path | None = None,
    device: str = "cpu",
    extra_args: Sequence[str] = (),
) -> Iterator[str]:
    """Run ``transformers serve`` for ``model_dir`` on a free port; yields the OpenAI base URL (``.../v1``).

    ``extra_args`` go to the command as they are (``["--continuous-batching"]``).

    The server's output goes to ``log_path`` (default: ``serve-<port>.log`` beside the model folder). Startup is
    polled with a deadline, and the server is terminated (then killed) on exit, so nothing outlives the block.
    """
    port = free_port()
    executable = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    log = Path(log_path or model_dir.parent / f"serve-{port}.log").open("w")
    # One intra-op thread: on a small shared machine the default thread pool makes tiny-model serving ~20x slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            executable,
            "serve",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            device,
            "--log-level",
            "warning",
            *extra_args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:  # bounded: gives up at the deadline or when the server process dies
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve exited early; see {log.name}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"transformers serve did not become healthy in {startup_timeout}s; see {log.name}")
            time.sleep(0.5)
        yield f"{base}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        log.close()
