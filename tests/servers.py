"""Real local servers for tests: a tiny checkpoint served by ``transformers serve`` on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import torch


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_tiny_checkpoint(out_dir: Path, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """A random-init Llama checkpoint with the demo tokenizer and the HuatuoGPT-II chat template (an export)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import huatuo
    from huatuo.backbone import load_tokenizer
    from huatuo.export import export_model

    tokenizer = load_tokenizer(huatuo.asset_path("tiny_tokenizer"))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    export_model(model, tokenizer, out_dir, generation={"do_sample": False, "max_new_tokens": 16})
    return out_dir


@contextlib.contextmanager
def transformers_serve(model_dir: Path, startup_timeout: float = 180.0) -> Iterator[str]:
    """Run ``transformers serve`` for ``model_dir`` on a free port; yields the OpenAI base URL (``.../v1``)."""
    port = free_port()
    executable = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    log = (model_dir.parent / f"serve-{port}.log").open("w")
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
            "cpu",
            "--log-level",
            "warning",
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
