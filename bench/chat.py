"""Overhead of chat.py's path over a bare ``model.generate``: time to first token and tokens/s.

    python bench/chat.py                          # the tiny random models on CPU (built in a temp folder)
    python bench/chat.py --model DIR --repeats 5  # any export or Hugging Face folder, on the GPU if there is one

Both sides get the same prompt (a three-round conversation in the HuatuoGPT-II format), the paper's sampling
settings with the same seed, and exactly ``--new-tokens`` tokens (min_new_tokens = max_new_tokens). The chat side
also renders and fits the history (tokenizing it; the bare side gets the ids), decodes incrementally and hands out
text pieces. Two chat paths are measured:

- ``chat.py``: ``HuatuoChat.chat(messages, on_text=...)``, what the terminal and the script mode run: generate in
  the calling thread, each settled piece passed to the callback at once. This is the one the <= 10 % target is for.
- ``stream=True``: the Python iterator, with generate on the chat's worker thread and pieces handed over a queue.

Time to first token, like for like: a one-token ``generate`` on pre-encoded ids against a one-token chat reply,
call to return. Also shown: the time from the call to the first text of a long chat reply. Runs alternate (bare,
then each chat path); medians. By default the process is pinned to one CPU core (``--cpu``): otherwise the
scheduler may put the bare side and the chat's worker thread on different cores and the result measures the cores
(on this VM that moved the same bare call between 4.3 and 6.3 ms from run to run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from huatuo.inference.chat import HuatuoChat
from huatuo.inference.generation import GenerationSettings
from huatuo.inference.loading import LoadedModel, load_for_inference

# (name, hidden size, layers): make_tiny_checkpoint's test model, and the demo backbone (conf/backbone/tiny.yaml).
TINY_MODELS = [("tiny-test 64x2", 64, 2), ("tiny-demo 256x4", 256, 4)]
MESSAGES = [
    {"role": "user", "content": "医生您好，我最近总是头痛，尤其是下午，需要注意什么？"},
    {
        "role": "assistant",
        "content": "头痛的原因很多，常见的有睡眠不足、用眼过度、颈椎问题和血压升高。建议先规律作息，测量血压。",
    },
    {"role": "user", "content": "我测了血压，是145/95，这算高吗？"},
    {"role": "assistant", "content": "这个数值已经达到高血压的诊断标准，建议非同日复测三次，并到心内科就诊。"},
    {"role": "user", "content": "平时饮食上要注意什么？"},
]


def build_tiny(out_dir: Path, hidden: int, layers: int) -> Path:
    """A random-init Llama export with the demo tokenizer and our chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import huatuo
    from huatuo.models.loading import load_tokenizer
    from huatuo.training.export import export_model

    tokenizer = load_tokenizer(huatuo.asset_path("tiny_tokenizer"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=int(2.6875 * hidden),
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return export_model(LlamaForCausalLM(config), tokenizer, out_dir)


def clocks() -> tuple[float, float]:
    """(wall seconds, CPU seconds of every thread of this process)."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """Wall and CPU seconds elapsed since ``start``."""
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


def time_bare(loaded: LoadedModel, settings: GenerationSettings, new_tokens: int) -> tuple[float, float, float, float]:
    """Plain generate on pre-encoded ids with ``settings`` (exactly ``new_tokens``): wall and CPU seconds to the
    first token, then for all tokens."""
    ids = loaded.encode(loaded.render(MESSAGES))
    kwargs = settings.generate_kwargs()
    common = {"attention_mask": torch.ones_like(ids), "pad_token_id": loaded.tokenizer.pad_token_id}
    torch.manual_seed(0)
    start = clocks()
    loaded.model.generate(ids, **common, **{**kwargs, "max_new_tokens": 1, "min_new_tokens": 1})
    first = since(start)
    torch.manual_seed(0)
    start = clocks()
    out = loaded.model.generate(ids, **common, **kwargs)
    total = since(start)
    assert out.shape[1] - ids.shape[1] == new_tokens
    return first[0], first[1], total[0], total[1]


def time_chat(chats: dict[int, HuatuoChat], new_tokens: int, path: str) -> tuple[float, ...]:
    """One chat path, wall and CPU s: a one-token reply; a long reply (all, then its first text).

    ``chats`` maps a reply length to a chat whose settings produce exactly that many tokens: chat.py takes its
    settings from the config and passes no per-call overrides, so neither does this.
    """
    first: list[tuple[float, float]] = []

    def reply(chat: HuatuoChat) -> None:
        if path == "chat.py":
            chat.chat(MESSAGES, on_text=lambda piece: first or first.append(since(start)))
        else:
            for _ in chat.chat(MESSAGES, stream=True):
                if not first:
                    first.append(since(start))

    torch.manual_seed(0)
    start = clocks()
    reply(chats[1])
    one = since(start)
    first.clear()
    torch.manual_seed(0)
    start = clocks()
    reply(chats[new_tokens])
    total = since(start)
    assert chats[new_tokens].last.new_tokens == new_tokens, chats[new_tokens].last
    return one[0], one[1], total[0], total[1], first[0][0], first[0][1]


PATHS = ("chat.py", "stream=True")


def bench(name: str, loaded: LoadedModel, new_tokens: int, repeats: int) -> list[dict[str, object]]:
    """Alternate the bare run and each chat path (after one warm-up each); medians of wall and CPU time."""
    paper = GenerationSettings()  # the paper's sampling settings, exactly `tokens` new tokens
    chats = {
        tokens: HuatuoChat(loaded, paper.updated(max_new_tokens=tokens, min_new_tokens=tokens))
        for tokens in {1, new_tokens}
    }
    time_bare(loaded, chats[new_tokens].settings, new_tokens)  # warm-up: allocator, kernels, caches
    for path in PATHS:
        time_chat(chats, new_tokens, path)
    bare, ours = [], {path: [] for path in PATHS}
    for _ in range(repeats):
        bare.append(time_bare(loaded, chats[new_tokens].settings, new_tokens))
        for path in PATHS:
            ours[path].append(time_chat(chats, new_tokens, path))
    medians = [statistics.median(x) for x in zip(*bare, strict=True)]
    return [
        {"model": name, "path": path, "bare": medians, "chat": [statistics.median(x) for x in zip(*runs, strict=True)]}
        for path, runs in ours.items()
    ]


def table(rows: list[dict[str, object]], new_tokens: int, clock: int) -> None:
    """Print one Markdown table: clock 0 is wall time, 1 is CPU time."""
    unit = "tokens/s" if clock == 0 else "tokens/CPU-s"
    print(
        "| model | chat path | first token, bare | one-token reply, chat | overhead | first text of a long reply, chat "
        f"| {unit}, bare | {unit}, chat | overhead |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ms = lambda seconds: f"{1000 * seconds:.2f} ms"  # noqa: E731
    for r in rows:
        bare_first, bare_total = r["bare"][clock], r["bare"][2 + clock]
        chat_one, chat_total, chat_first = r["chat"][clock], r["chat"][2 + clock], r["chat"][4 + clock]
        first = f"{ms(bare_first)} | {ms(chat_one)} | {100 * (chat_one / bare_first - 1):+.1f} % | {ms(chat_first)}"
        rate = f"{new_tokens / bare_total:.0f} | {new_tokens / chat_total:.0f}"
        overhead = f"{100 * (chat_total / bare_total - 1):+.1f} %"
        print(f"| {r['model']} | {r['path']} | {first} | {rate} | {overhead} |")


def pin(cpu: int | None) -> int | None:
    """Pin this process (every thread it starts) to one core; the core, or None if not pinned."""
    if cpu == -1 or not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0)) if cpu is None else cpu
    os.sched_setaffinity(0, {cpu})
    return cpu


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="an export or HF folder; default: the tiny random models")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads on CPU (default 1: tiny models gain nothing from more, and on a busy machine "
        "OpenMP spin-waiting made multi-threaded runs in the main thread many times slower than in a worker "
        "thread, which would flatter the stream=True path); 0 keeps torch's default",
    )
    parser.add_argument(
        "--cpu",
        type=int,
        default=None,
        help="pin the process to this CPU core (default with --threads 1: the first core it may run on; -1: do "
        "not pin)",
    )
    args = parser.parse_args()
    pinned = pin(-1 if args.cpu is None and args.threads != 1 else args.cpu)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = [(args.model, args.model)] if args.model else []
        for name, hidden, layers in [] if args.model else TINY_MODELS:
            models.append((name, str(build_tiny(Path(tmp) / name.split()[0], hidden, layers))))
        for name, path in models:
            loaded = load_for_inference(path, device=args.device)
            rows.extend(bench(name, loaded, args.new_tokens, args.repeats))
    device = (
        "cuda" if torch.cuda.is_available() and args.device != "cpu" else f"cpu ({torch.get_num_threads()} threads)"
    )
    where = f"pinned to CPU {pinned}" if pinned is not None else "not pinned"
    print(f"\n{args.new_tokens} new tokens, median of {args.repeats}, {device}, {where}, torch {torch.__version__}")
    print("\nWall clock:\n")
    table(rows, args.new_tokens, 0)
    print("\nCPU time of the process, all threads (other load on the machine does not inflate it):\n")
    table(rows, args.new_tokens, 1)


if __name__ == "__main__":
    main()
