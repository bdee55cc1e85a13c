"""Every strategy on the GPUs of this machine, on a random-init ~1B Llama-shape model: tokens/s, peak memory, MFU.

    python bench/gpu_check.py                                  # all strategies, all visible GPUs, 30 steps each
    python bench/gpu_check.py --strategies ddp fsdp2 --steps 50 --precision bf16-true
    python bench/gpu_check.py --peak-tflops 312                # a card the table below does not know

Each strategy runs in its own process (a process group starts once per process) through the same ``train()``
as ``train.py``, on the bundled demo mixture packed to 2,048 tokens. Without a CUDA device the script prints the
model size and the configs it would run, then exits. Results go to docs/benchmarks.md with the card's name.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

STRATEGIES = ["auto", "ddp", "fsdp", "fsdp2", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3",
              "deepspeed_zero3_offload"]  # fmt: skip
# Dense bf16 tensor-core peak per GPU, TFLOP/s (vendor data sheets, without sparsity).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}
# TinyLlama-1.1B's shape: 22 layers, hidden 2048, grouped-query attention with 4 KV heads.
MODEL = {
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
SEQ = 2048


def overrides(strategy: str, args: argparse.Namespace, run_dir: Path) -> list[str]:
    """Hydra overrides of one measured run."""
    model = [f"backbone.model.config.{k}={v}" for k, v in MODEL.items()]  # every key exists in backbone=tiny
    return [
        f"paths.run_dir={run_dir}",
        f"paths.cache_dir={run_dir.parent / 'cache'}",
        f"strategy={strategy}",
        "trainer.accelerator=gpu",
        f"trainer.devices={args.devices}",
        f"trainer.precision={args.precision}",
        f"trainer.max_steps={args.steps}",
        "trainer.max_epochs=1000",
        "trainer.enable_progress_bar=false",
        f"backbone.max_len={SEQ}",
        f"data.max_len={SEQ}",
        f"data.micro_batch_size={args.micro_batch_size}",
        "data.pad_to=max_len",
        f"backbone.model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        "backbone.model.dtype=float32",
        "optimizer.lr=1e-4",
        "optimizer.fused=null",  # torch's foreach AdamW everywhere: the same optimizer for every strategy
        "checkpoint.every_n_train_steps=100000",
        "checkpoint.save_last=false",
        "export.enabled=false",
        "logger=csv",
        "logger.csv.flush_logs_every_n_steps=1",
        *model,
    ]


def flops_per_token(n_params: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward + backward) plus causal attention scores and values."""
    layers, hidden = MODEL["num_hidden_layers"], MODEL["hidden_size"]
    return 6 * n_params + 6 * layers * hidden * SEQ  # 12 * L * h * T halved for the causal mask


def count_parameters() -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(MODEL)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    return sum(p.numel() for p in model.parameters())


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


def worker(strategy: str, args: argparse.Namespace) -> None:
    """One measured run (inside the process that Lightning may fork into one per GPU)."""
    from hydra import compose, initialize_config_dir
    from lightning.pytorch.callbacks import Callback

    from huatuo import conf_dir
    from huatuo.training.run import train

    class PeakMemory(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            torch.cuda.reset_peak_memory_stats()

        def on_train_end(self, trainer, pl_module) -> None:
            peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=pl_module.device)
            peak = trainer.strategy.reduce(peak, reduce_op="max")
            if trainer.is_global_zero:
                (Path(args.out) / "peak.json").write_text(json.dumps({"peak_gib": float(peak)}))

    run_dir = Path(args.out)
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides(strategy, args, run_dir))
    train(cfg, extra_callbacks=[PeakMemory()])


def measure(strategy: str, args: argparse.Namespace, tmp: Path) -> dict | None:
    run_dir = tmp / strategy
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--worker", strategy, "--out", str(run_dir)] + forwarded(args)
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode:
        print(f"{strategy}: FAILED\n{result.stderr[-3000:]}")
        return None
    import csv

    rows = [r for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get("train/tokens_per_s")]
    speeds = [float(r["train/tokens_per_s"]) for r in rows][args.warmup :]
    peak = json.loads((run_dir / "peak.json").read_text())["peak_gib"]
    return {"tokens_per_s": statistics.median(speeds), "peak_gib": peak}


def forwarded(args: argparse.Namespace) -> list[str]:
    return [
        f"--devices={args.devices}",
        f"--precision={args.precision}",
        f"--steps={args.steps}",
        f"--micro-batch-size={args.micro_batch_size}",
        *(["--gradient-checkpointing"] if args.gradient_checkpointing else []),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--devices", type=int, default=max(torch.cuda.device_count(), 1))
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "bf16-true", "32-true"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak per GPU, for MFU")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args)

    n_params = count_parameters()
    print(f"model: Llama shape, {n_params / 1e9:.2f}B parameters, sequence {SEQ}, micro-batch {args.micro_batch_size}")
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure. The runs would be:")
        for strategy in args.strategies:
            print(f"  python train.py {' '.join(overrides(strategy, args, Path('<tmp>') / strategy))}")
        return
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name, args.peak_tflops)
    print(f"GPU: {args.devices} x {name}, torch {torch.__version__}, precision {args.precision}")
    print(f"{'strategy':<26}{'tokens/s':>12}{'peak GiB':>10}{'MFU':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies:
            result = measure(strategy, args, Path(tmp))
            if result is None:
                continue
            mfu = (
                f"{100 * result['tokens_per_s'] * flops_per_token(n_params) / (peak * 1e12 * args.devices):.1f}%"
                if peak
                else "n/a"
            )
            print(f"{strategy:<26}{result['tokens_per_s']:>12.0f}{result['peak_gib']:>10.1f}{mfu:>8}")


if __name__ == "__main__":
    main()
