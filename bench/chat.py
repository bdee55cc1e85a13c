"""Overhead of chat.py's path (HuatuoChat streaming) over a bare ``model.generate``: first text and tokens/s.

    python bench/chat.py                          # the tiny random models on CPU (built in a temp folder)
    python bench/chat.py --model DIR --repeats 5  # any export or Hugging Face folder, on the GPU if there is one

Both sides get the same prompt (a three-round conversation in the HuatuoGPT-II format), the paper's sampling
settings with the same seed, and exactly ``--new-tokens`` tokens (min_new_tokens = max_new_tokens). The chat side
also renders and fits the history, runs generate on its worker thread, decodes incrementally and queues text
pieces. Time to first token, like for like: a one-token ``generate`` on pre-encoded ids against a one-token chat
reply, call to return. Also shown: the time from the call to the first text of a long chat reply (its CPU time
includes the worker already computing the next tokens). Runs alternate; medians; the target is <= 10 % overhead.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from huatuo.chat import HuatuoChat
from huatuo.inference import LoadedModel, load_for_inference

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
    from huatuo.backbone import load_tokenizer
    from huatuo.export import export_model

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


def time_bare(loaded: LoadedModel, chat: HuatuoChat, new_tokens: int) -> tuple[float, float, float, float]:
    """Plain generate on pre-encoded ids: wall and CPU seconds to the first token, then for all tokens."""
    ids = loaded.encode(loaded.render(MESSAGES))
    kwargs = chat.settings.updated(max_new_tokens=new_tokens, min_new_tokens=new_tokens).generate_kwargs()
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


def time_chat(chat: HuatuoChat, new_tokens: int) -> tuple[float, ...]:
    """HuatuoChat.chat(stream=True), wall and CPU s: a one-token reply; a long reply (all, then its first text)."""
    torch.manual_seed(0)
    start = clocks()
    for _ in chat.chat(MESSAGES, stream=True, max_new_tokens=1, min_new_tokens=1):
        pass
    one = since(start)
    torch.manual_seed(0)
    start = clocks()
    first = None
    for _ in chat.chat(MESSAGES, stream=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens):
        if first is None:
            first = since(start)
    total = since(start)
    assert chat.last.new_tokens == new_tokens, chat.last
    return one[0], one[1], total[0], total[1], first[0], first[1]


def bench(name: str, loaded: LoadedModel, new_tokens: int, repeats: int) -> dict[str, object]:
    """Alternate bare and chat runs (after one warm-up each); medians of wall and CPU time."""
    chat = HuatuoChat(loaded)  # the paper's sampling settings
    time_bare(loaded, chat, new_tokens), time_chat(chat, new_tokens)  # warm-up: allocator, kernels, caches
    bare, ours = [], []
    for _ in range(repeats):
        bare.append(time_bare(loaded, chat, new_tokens))
        ours.append(time_chat(chat, new_tokens))
    return {
        "model": name,
        "bare": [statistics.median(x) for x in zip(*bare, strict=True)],
        "chat": [statistics.median(x) for x in zip(*ours, strict=True)],
    }


def table(rows: list[dict[str, object]], new_tokens: int, clock: int) -> None:
    """Print one Markdown table: clock 0 is wall time, 1 is CPU time."""
    unit = "tokens/s" if clock == 0 else "tokens/CPU-s"
    print(
        "| model | first token, bare | one-token reply, chat | overhead | first text of a long reply, chat "
        f"| {unit}, bare | {unit}, chat | overhead |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ms = lambda seconds: f"{1000 * seconds:.1f} ms"  # noqa: E731
    for r in rows:
        bare_first, bare_total = r["bare"][clock], r["bare"][2 + clock]
        chat_one, chat_total, chat_first = r["chat"][clock], r["chat"][2 + clock], r["chat"][4 + clock]
        first = f"{ms(bare_first)} | {ms(chat_one)} | {100 * (chat_one / bare_first - 1):+.1f} % | {ms(chat_first)}"
        rate = f"{new_tokens / bare_total:.0f} | {new_tokens / chat_total:.0f}"
        print(f"| {r['model']} | {first} | {rate} | {100 * (chat_total / bare_total - 1):+.1f} % |")


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
        "OpenMP spin-waiting makes multi-threaded runs in the main thread many times slower, which would flatter "
        "the chat side, whose generate runs in a worker thread); 0 keeps torch's default",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = [(args.model, args.model)] if args.model else []
        for name, hidden, layers in [] if args.model else TINY_MODELS:
            models.append((name, str(build_tiny(Path(tmp) / name.split()[0], hidden, layers))))
        for name, path in models:
            loaded = load_for_inference(path, device=args.device)
            rows.append(bench(name, loaded, args.new_tokens, args.repeats))
    device = (
        "cuda" if torch.cuda.is_available() and args.device != "cpu" else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(f"\n{args.new_tokens} new tokens, median of {args.repeats}, {device}, torch {torch.__version__}")
    print("\nWall clock:\n")
    table(rows, args.new_tokens, 0)
    print("\nCPU time of the process, all threads (other load on the machine does not inflate it):\n")
    table(rows, args.new_tokens, 1)


if __name__ == "__main__":
    main()
