"""Exam throughput: loglik vs generate mode, batched vs unbatched loglik, and generation in process vs on a server.

    python bench/eval.py                          # the demo exam, the demo backbone's shape, random init
    python bench/eval.py --hidden 64 --layers 2   # a smaller model: per-call overhead dominates, as on a big GPU
    python bench/eval.py --max-new-tokens 768     # the paper's reply budget
    python bench/eval.py --threads 2              # all cores (erratic when other jobs share them)
    python bench/eval.py --endpoint               # also: the same model behind `transformers serve`, 16 in flight
    python bench/eval.py --endpoint --continuous-batching   # the server batching requests as they come

Prints the cost of each mode in CPU seconds and wall seconds (medians of the repeats, after a warm-up; on a machine
shared with other jobs CPU time is the stable measure), the ratios, and whether batched and unbatched loglik
predict the same letters. "Unbatched" means one sequence per forward pass: batch_size=1 and
candidate_batch=1 (every multi-answer candidate scored alone); "batch 1, shared candidates" keeps one question
per pass but scores its candidates together. A random model never stops early, so generate mode always writes
--max-new-tokens tokens per reply (real models stop when done; the paper allows 768).

``--endpoint`` exports the same model, serves it with ``transformers serve`` on 127.0.0.1 (one intra-op thread, as
in process) and answers the exam through ``eval.backend=endpoint``'s client with ``--in-flight`` requests at a time,
against in-process generation at batch ``--batch-size``; both greedy with the paper's repetition penalty, so the
replies can be compared one for one. The server is another process: wall time is the measure there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import huatuo  # noqa: E402
from huatuo.evaluation.exam_files import load_exam
from huatuo.evaluation.generation import generate_texts
from huatuo.evaluation.loglik import LoglikSettings, score_loglik  # noqa: E402
from huatuo.evaluation.prompt import mcq_prompt
from huatuo.inference.loading import LoadedModel  # noqa: E402
from huatuo.models.loading import load_tokenizer  # noqa: E402


def tiny_model(hidden: int, layers: int, seed: int) -> LoadedModel:
    """A random-init Llama with the demo tokenizer (the demo backbone's shape by default)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(huatuo.asset_path("tiny_tokenizer"))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 688 // 256,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, device=torch.device("cpu"))


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median CPU seconds and median wall seconds of ``repeats`` calls after a warm-up call, and the last result.

    CPU time (this process's, all its threads) is what a job costs whatever else runs on the machine; wall time
    on a shared machine also counts the waits for a core.
    """
    result = fn()
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        result = fn()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return statistics.median(cpu), statistics.median(wall), result


def main() -> None:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exam", default=huatuo.asset_path("demo/exam_demo.json"))
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--generate-repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads; 1 keeps numbers stable on a shared machine"
    )
    parser.add_argument("--endpoint", action="store_true", help="also time generation on a transformers serve")
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent requests to the server")
    parser.add_argument("--continuous-batching", action="store_true", help="start the server with it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = tiny_model(args.hidden, args.layers, args.seed)
    questions = load_exam(args.exam).questions
    n = len(questions)
    prompts = [loaded.render([{"role": "user", "content": mcq_prompt(q)}]) for q in questions]
    contexts = [p + LoglikSettings().answer_prefix for p in prompts]
    params = sum(p.numel() for p in loaded.model.parameters())
    print(
        f"exam: {n} questions ({sum(q.multi for q in questions)} multi-answer); model: hidden {args.hidden}, "
        f"{args.layers} layers, {params / 1e6:.1f}M parameters, random init; torch threads: {torch.get_num_threads()}"
    )

    def loglik(batch: int, candidates: int):
        return lambda: score_loglik(loaded, questions, contexts, batch, LoglikSettings(candidate_batch=candidates))

    batched = timed(loglik(args.batch_size, 64), args.repeats)
    shared = timed(loglik(1, 64), args.repeats)
    single = timed(loglik(1, 1), args.repeats)
    sampling = {"do_sample": True, "temperature": 0.5, "top_p": 0.7, "repetition_penalty": 1.1}
    sampling["max_new_tokens"] = args.max_new_tokens
    generate = timed(
        lambda: generate_texts(loaded, prompts, args.batch_size, sampling, seed=args.seed), args.generate_repeats
    )

    same = sum(a.letters == b.letters == c.letters for a, b, c in zip(batched[2], shared[2], single[2], strict=True))
    worst = max(abs(a.scores[k] - b.scores[k]) for a, b in zip(batched[2], single[2], strict=True) for k in a.scores)
    rows = [
        (f"loglik, batch {args.batch_size}", batched),
        ("loglik, batch 1, shared candidates", shared),
        ("loglik, unbatched (batch 1, candidate_batch 1)", single),
        (f"generate, batch {args.batch_size}, {args.max_new_tokens} new tokens", generate),
    ]
    print("\n| mode | CPU s | questions per CPU-second | wall s |\n| --- | ---: | ---: | ---: |")
    for name, (cpu, wall, _) in rows:
        print(f"| {name} | {cpu:.2f} | {n / cpu:.1f} | {wall:.2f} |")
    print(
        f"\nloglik (batched) vs generate: {generate[0] / batched[0]:.1f}x (CPU), {generate[1] / batched[1]:.1f}x (wall)"
        f"\nbatched vs unbatched loglik: {single[0] / batched[0]:.1f}x (CPU), {single[1] / batched[1]:.1f}x (wall); "
        f"vs batch 1 with shared candidates: {shared[0] / batched[0]:.1f}x (CPU)"
        f"\nidentical predictions: {same}/{n}; largest score difference batched vs unbatched: {worst:.1e}"
    )
    if args.endpoint:
        endpoint(loaded, questions, prompts, args)


def endpoint(loaded: LoadedModel, questions, prompts: list[str], args: argparse.Namespace) -> None:
    """Greedy replies in process (batched) and from a ``transformers serve`` of the same weights (concurrent)."""
    import tempfile

    from huatuo.evaluation.generation import cut_at_next_turn
    from huatuo.evaluation.serving import ServedRequest, request_params, serve_replies
    from huatuo.inference.server import transformers_serve
    from huatuo.training.export import export_model
    from huatuo.unify.endpoint import EndpointSettings

    greedy = {"do_sample": False, "repetition_penalty": 1.1, "max_new_tokens": args.max_new_tokens}
    messages = [[{"role": "user", "content": mcq_prompt(q)}] for q in questions]
    n = len(questions)
    _, local_wall, local = timed(
        lambda: generate_texts(loaded, prompts, args.batch_size, greedy, seed=args.seed), args.generate_repeats
    )
    with tempfile.TemporaryDirectory() as folder:
        export = export_model(loaded.model, loaded.tokenizer, Path(folder) / "export", generation=greedy)
        extra = ["--continuous-batching"] if args.continuous_batching else []
        with transformers_serve(export, log_path=Path(folder) / "serve.log", extra_args=extra) as url:
            settings = EndpointSettings(base_url=url, model=str(export), max_concurrency=args.in_flight, timeout=600)
            params = request_params(greedy, "generation_config", seed=args.seed)
            requests = [ServedRequest(q.uid, m) for q, m in zip(questions, messages, strict=True)]
            runs = iter(range(10**6))

            def ask():  # a fresh replies file each time: nothing is reused
                return serve_replies(settings, requests, params, Path(folder) / f"replies-{next(runs)}.jsonl")

            _, served_wall, served = timed(ask, args.generate_repeats)  # the warm-up call loads the model
    same = sum(cut_at_next_turn(served.texts.get(q.uid, "")) == r for q, r in zip(questions, local, strict=True))
    server = "transformers serve" + (" --continuous-batching" if args.continuous_batching else "")
    print(
        f"\n| generation ({args.max_new_tokens} new tokens, greedy) | wall s | questions per second |"
        "\n| --- | ---: | ---: |"
        f"\n| in process, batch {args.batch_size} | {local_wall:.2f} | {n / local_wall:.2f} |"
        f"\n| endpoint ({server}), {args.in_flight} in flight | {served_wall:.2f} | {n / served_wall:.2f} |"
        f"\n\nendpoint vs in process: {local_wall / served_wall:.2f}x questions per second; "
        f"failed requests: {len(served.errors)}; identical replies: {same}/{n}"
    )


if __name__ == "__main__":
    main()
