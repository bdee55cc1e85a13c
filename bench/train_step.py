"""Framework overhead of a training step: LightningModule + Trainer against a bare PyTorch loop, on CPU.

    python bench/train_step.py                  # 40 steps per run, 4 rounds, 2 rows x 256 tokens, 1 thread
    python bench/train_step.py --steps 60 --rounds 3 --override data.max_len=512 --override data.micro_batch_size=4

Both paths train the same random-init tiny model on the same packed rows (same collator, same order), with the
same AdamW groups, cosine schedule, gradient clipping at 1.0, loss (summed token loss over the step's supervised
tokens) and fp32 precision. The time of a step is the interval between the starts of consecutive steps, so data
loading, logging and every framework hook count. Prints the median step time of each path after the warm-up
steps, their ratio (the overhead), the CPU time of each phase (forward and loss / backward / the rest: clipping,
optimizer, logging, hooks, next batch), and the step time with packed-document isolation on and off.
Rounds run both paths in alternating order, so that load from other processes and warm caches favour neither.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from huatuo import conf_dir
from huatuo.core.template import IGNORE_INDEX
from huatuo.data.datamodule import PackedRowsDataset, RowCollator
from huatuo.data.prepare import prepare
from huatuo.data.sampler import RowSampler
from huatuo.data.settings import settings_from_config, sources_from_config
from huatuo.training.optim import cosine_with_warmup, parameter_groups
from huatuo.training.run import train


def compose(run_dir: Path, cache: Path, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return hydra_compose(
            "train",
            [
                f"paths.run_dir={run_dir}",
                f"paths.cache_dir={cache}",
                "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false",
                "checkpoint.every_n_train_steps=100000",  # the bare loop does not checkpoint either
                "checkpoint.save_last=false",
                "export.enabled=false",
                *overrides,
            ],
        )


def now() -> tuple[float, float]:
    """Wall-clock time and this process's CPU time (all threads): the second one barely moves when other
    processes compete for the cores, so it shows the framework's own work on a shared machine."""
    return time.perf_counter(), time.process_time()


PHASES = ("forward", "backward", "rest")  # start -> backward, the backward, after it -> next step's start


class Steps:
    """Time marks of every step: its start, and the start and end of its backward."""

    def __init__(self) -> None:
        self.marks: list[dict[str, tuple[float, float]]] = []

    def mark(self, name: str) -> None:
        if name == "start":
            self.marks.append({})
        self.marks[-1][name] = now()

    def totals(self, warmup: int) -> tuple[float, float]:
        """Median wall and CPU seconds from one step's start to the next, after the warm-up steps."""
        pairs = list(zip(self.marks[warmup:], self.marks[warmup + 1 :], strict=False))
        return tuple(statistics.median(b["start"][i] - a["start"][i] for a, b in pairs) for i in (0, 1))

    def phases(self, warmup: int) -> dict[str, float]:
        """Median CPU seconds of each phase of a step."""
        pairs = list(zip(self.marks[warmup:], self.marks[warmup + 1 :], strict=False))
        spans = {"forward": ("start", "backward"), "backward": ("backward", "backward_end")}
        out = {
            name: statistics.median(a[end][1] - a[begin][1] for a, _ in pairs) for name, (begin, end) in spans.items()
        }
        out["rest"] = statistics.median(b["start"][1] - a["backward_end"][1] for a, b in pairs)
        return out


class StepClock(Callback):
    """Marks the start of every training step and the span of its backward."""

    def __init__(self) -> None:
        self.steps = Steps()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.mark("start")

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.steps.mark("backward")

    def on_after_backward(self, trainer, pl_module) -> None:
        self.steps.mark("backward_end")


def lightning_steps(cfg) -> Steps:
    clock = StepClock()
    train(cfg, extra_callbacks=[clock])
    return clock.steps


def bare_steps(cfg) -> Steps:
    """The same training in a plain loop: model, data order, collator, optimizer, schedule, clipping, loss."""
    L.seed_everything(cfg.seed, verbose=False)
    tokenizer = instantiate(cfg.backbone.tokenizer)
    data = dict(cfg.data)
    specs = sources_from_config({k: dict(v) for k, v in cfg.data.sources.items()})
    prepared = prepare(specs, tokenizer, settings_from_config(data), cfg.data.cache_dir)
    dataset = PackedRowsDataset(str(prepared.dataset_dir))
    sampler = RowSampler(len(dataset), cfg.data.micro_batch_size)
    usable = len(dataset) - sampler.dropped_rows
    supervised = np.asarray(dataset.rows["n_supervised"][:usable], dtype=np.float64)
    normalizer = np.add.reduceat(supervised, np.arange(0, usable, sampler.global_batch_rows))
    collate = RowCollator(
        tokenizer.pad_token_id,
        cfg.data.max_len,
        cfg.data.isolate,
        cfg.data.pad_to,
        normalizer,
        sampler.global_batch_rows,
        len(specs),
    )
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    model = instantiate(cfg.backbone.model)()
    model.train()
    optimizer = instantiate(cfg.optimizer)(parameter_groups(model, cfg.weight_decay))
    scheduler = cosine_with_warmup(optimizer, total_steps=cfg.trainer.max_steps, warmup_ratio=0.05)
    steps = Steps()
    for step, batch in enumerate(loader):
        if step == cfg.trainer.max_steps:
            break
        steps.mark("start")
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)
        loss_sum = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        steps.mark("backward")
        (loss_sum / batch["loss_normalizer"]).backward()
        steps.mark("backward_end")
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (>= warmup + 30)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of one run per path, in alternating order")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared machine, threads that wait for a busy core make the "
        "step several times slower and the timing noise hides any overhead)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=None,
        help="Hydra overrides (repeatable); default: data.max_len=256 data.micro_batch_size=2, a short step that "
        "makes the fixed per-step framework cost as visible as it gets",
    )
    args = parser.parse_args()
    args.override = args.override if args.override is not None else ["data.max_len=256", "data.micro_batch_size=2"]
    if args.steps - 1 - args.warmup < 30:
        parser.error("--steps must leave at least 30 measured steps after --warmup")

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        base = [f"trainer.max_steps={args.steps}", "trainer.max_epochs=100", "logger=csv", *args.override]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; overrides: {' '.join(base)}")
        cfg = compose(tmp_path / "run", tmp_path / "cache", base)
        print(
            f"batch: {cfg.data.micro_batch_size} rows x {cfg.data.max_len} tokens, precision {cfg.trainer.precision}, "
            f"isolate={cfg.data.isolate}; medians over {args.steps - 1 - args.warmup} steps after {args.warmup} warm-up"
        )
        wall_ratios, cpu_ratios = [], []
        phases: dict[str, list[dict[str, float]]] = {"lightning": [], "bare": []}
        for round_ in range(args.rounds):
            runs = {
                "lightning": lambda r=round_: lightning_steps(compose(tmp_path / f"l{r}", tmp_path / "cache", base)),
                "bare": lambda r=round_: bare_steps(compose(tmp_path / f"b{r}", tmp_path / "cache", base)),
            }
            order = ["lightning", "bare"] if round_ % 2 == 0 else ["bare", "lightning"]  # neither always goes first
            measured = {name: runs[name]() for name in order}
            light, bare = (measured[name].totals(args.warmup) for name in ("lightning", "bare"))
            for name in phases:
                phases[name].append(measured[name].phases(args.warmup))
            wall_ratios.append(light[0] / bare[0])
            cpu_ratios.append(light[1] / bare[1])
            print(
                f"round {round_ + 1}: wall {1000 * light[0]:.1f} vs {1000 * bare[0]:.1f} ms/step "
                f"({100 * (wall_ratios[-1] - 1):+.1f}%), CPU {1000 * light[1]:.1f} vs {1000 * bare[1]:.1f} ms/step "
                f"({100 * (cpu_ratios[-1] - 1):+.1f}%)  [Lightning vs bare loop]"
            )
        wall, cpu = statistics.median(wall_ratios), statistics.median(cpu_ratios)
        print(
            f"framework overhead, median of rounds: wall {100 * (wall - 1):+.1f}%, "
            f"CPU {100 * (cpu - 1):+.1f}% (target <= 5%)"
        )
        for name, per_round in phases.items():
            parts = ", ".join(
                f"{phase} {1000 * statistics.median(r[phase] for r in per_round):.1f}" for phase in PHASES
            )
            print(f"CPU ms per phase, {name:>9}: {parts}  (median of rounds)")

        isolated = lightning_steps(compose(tmp_path / "iso", tmp_path / "cache", [*base, "data.isolate=true"]))
        plain = lightning_steps(compose(tmp_path / "noiso", tmp_path / "cache", [*base, "data.isolate=false"]))
        isolated, plain = isolated.totals(args.warmup), plain.totals(args.warmup)
        print(
            f"packing: isolated {1000 * isolated[0]:.1f} ms/step (CPU {1000 * isolated[1]:.1f}), not isolated "
            f"{1000 * plain[0]:.1f} ms/step (CPU {1000 * plain[1]:.1f}); isolated/not: "
            f"wall {isolated[0] / plain[0]:.2f}, CPU {isolated[1] / plain[1]:.2f}"
        )


if __name__ == "__main__":
    main()
