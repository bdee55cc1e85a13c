"""The LightningModule around a Hugging Face causal LM: the loss of the method and its metrics."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from huatuo.core.logs import get_logger
from huatuo.core.template import IGNORE_INDEX
from huatuo.training.optim import cpu_adam, parameter_groups
from huatuo.training.strategies import gradient_copies, offloads_optimizer, shards_parameters, uses_deepspeed

log = get_logger(__name__)


def token_statistics(
    logits: torch.Tensor, labels: torch.Tensor, source_ids: torch.Tensor, n_sources: int
) -> dict[str, torch.Tensor]:
    """Summed next-token loss, correct predictions and counts, overall and per source.

    Position ``t`` predicts token ``t + 1``: the labels and sources shift left by one (padded with ignored
    positions) instead of slicing the logits, which would copy the largest tensor of the step.
    """
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    sources = F.pad(source_ids[:, 1:], (0, 1), value=-1)
    supervised = targets != IGNORE_INDEX
    flat = logits.reshape(-1, logits.size(-1)).float()  # no copy in fp32; bf16 logits get an fp32 copy for the loss
    losses = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none").view_as(targets)
    # A target scored as high as the best logit is a hit; amax is ~10x cheaper than argmax on CPU.
    target_logits = logits.detach().gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    correct = (target_logits >= logits.detach().amax(-1)) & supervised
    index = torch.where(supervised, sources, n_sources).reshape(-1)  # unsupervised tokens go to a spill bin
    # explicit fp32: under trainer.precision=bf16-true Lightning makes bf16 the default dtype inside the step
    bins = dict(device=logits.device, dtype=torch.float32)
    per_source_loss = torch.zeros(n_sources + 1, **bins).index_add_(0, index, losses.detach().reshape(-1))
    per_source_tokens = torch.zeros(n_sources + 1, **bins).index_add_(0, index, supervised.reshape(-1).float())
    return {
        "loss_sum": losses.sum(),
        "correct": correct.sum().float(),
        "supervised": supervised.sum().float(),
        "source_loss": per_source_loss[:n_sources],
        "source_tokens": per_source_tokens[:n_sources],
    }


def loss_multiplier(world_size: int, accumulate: int, deepspeed: bool) -> int:
    """What the framework divides the returned loss by, so that ``training_step`` can undo it.

    Lightning divides the loss of each micro-batch by the accumulation steps; DDP, FSDP and DeepSpeed average
    gradients over ranks; DeepSpeed's engine divides by its ``gradient_accumulation_steps`` once more on top of
    Lightning's division. Multiplying by this factor leaves gradients equal to
    ``sum(token losses) / supervised tokens of the global batch``.
    """
    return world_size * accumulate * (accumulate if deepspeed else 1)


def local_gradients(parameters: Iterable[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Each parameter's gradient as a local tensor (the shard this rank holds under FSDP2)."""
    grads = []
    for p in parameters:
        if p.grad is not None:
            g = p.grad
            grads.append(g.to_local() if hasattr(g, "to_local") else g)
    return grads


def squared_norm(grads: list[torch.Tensor]) -> torch.Tensor | None:
    """Sum of squares of the gradients, in fp32 (one fused pass)."""
    if not grads:
        return None
    norms = torch._foreach_norm(grads)
    return torch.stack([n.float() for n in norms]).square().sum()


class CausalLMModule(L.LightningModule):
    """Trains a causal LM on packed rows with the global-batch token-mean loss.

    The loss of one optimizer step is the mean over every supervised token of the global batch (all
    accumulated micro-batches, all ranks): each micro-batch contributes its summed token loss divided by the
    step's total, which the data module computes in advance. Packing, accumulation and the number of ranks
    therefore leave the objective unchanged.
    """

    def __init__(
        self,
        model_factory: Callable[[], torch.nn.Module],
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., LambdaLR] | None = None,
        weight_decay: float = 0.1,
        source_names: list[str] | None = None,
        layer_class: type[torch.nn.Module] | None = None,
        finetune: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
        source_metrics_every_n_steps: int = 10,
    ) -> None:
        super().__init__()
        self.model_factory = model_factory
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.weight_decay = weight_decay
        self.source_names = list(source_names or [])
        self.layer_class = layer_class
        self.finetune = finetune
        self.source_every = max(1, source_metrics_every_n_steps)
        self.model: torch.nn.Module | None = None
        self._step_sums: torch.Tensor | None = None
        self._step_started = time.perf_counter()
        self._tokens_seen = 0
        self._docs_seen = [0.0] * len(self.source_names)
        self._source_window = [0.0] * (2 * len(self.source_names))  # loss sums, then token counts, since last log
        self._grad_norm: torch.Tensor | None = None
        self._rng_to_restore: dict[str, Any] | None = None

    # ---- model -------------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.model is not None:
            return  # idempotent: strategies may call this more than once
        model = self.model_factory()
        if self.finetune is not None:
            model = self.finetune(model)
        if any(not p.requires_grad for p in model.parameters()):
            self.strict_loading = False  # checkpoints hold the trainable weights only (see on_save_checkpoint)
        self.model = model
        if self._device_mesh is not None:  # FSDP2 (ModelParallelStrategy): one shard unit per decoder layer
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            reshard = getattr(self.trainer.strategy, "reshard_after_forward", True)
            if self.layer_class is not None:
                for module in self.model.modules():
                    if isinstance(module, self.layer_class):
                        fully_shard(module, mesh=mesh, reshard_after_forward=reshard)
            fully_shard(self.model, mesh=mesh, reshard_after_forward=reshard)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits

    # ---- step --------------------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["position_ids"])
        stats = token_statistics(logits, batch["labels"], batch["source_ids"], len(self.source_names))
        self._accumulate(stats, batch)
        trainer = self.trainer
        scale = loss_multiplier(trainer.world_size, trainer.accumulate_grad_batches, uses_deepspeed(trainer.strategy))
        return stats["loss_sum"] * scale / batch["loss_normalizer"]

    def _accumulate(self, stats: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        vector = torch.cat(
            [
                torch.stack(
                    [
                        stats["loss_sum"].detach(),
                        stats["correct"],
                        stats["supervised"],
                        (batch["source_ids"] >= 0).sum().float(),
                    ]
                ),
                stats["source_loss"],
                stats["source_tokens"],
                batch["source_docs"].float(),
            ]
        )
        self._step_sums = vector if self._step_sums is None else self._step_sums + vector

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        self._grad_norm = self._global_grad_norm()
        if self._step_sums is None:
            return
        sums = self.trainer.strategy.reduce(self._step_sums, reduce_op="sum").tolist()  # one device sync
        self._step_sums = None
        n = len(self.source_names)
        loss_sum, correct, supervised, tokens = sums[:4]
        self._source_window = [a + b for a, b in zip(self._source_window, sums[4 : 4 + 2 * n], strict=True)]
        self._docs_seen = [a + b for a, b in zip(self._docs_seen, sums[4 + 2 * n :], strict=True)]
        now = time.perf_counter()
        elapsed, self._step_started = now - self._step_started, now
        self._tokens_seen += int(tokens)
        metrics = {
            "train/token_acc": correct / max(supervised, 1.0),
            "train/supervised_tokens": supervised,
            "train/tokens_seen": float(self._tokens_seen),
            "train/tokens_per_s": tokens / max(elapsed, 1e-9),
            "train/lr": optimizer.param_groups[0]["lr"],
        }
        if self._grad_norm is not None:
            metrics["train/grad_norm"] = float(self._grad_norm)
        if self.trainer.global_step % self.source_every == 0:  # the loss is the token-mean over the window
            window_loss, window_tokens = self._source_window[:n], self._source_window[n:]
            for i, name in enumerate(self.source_names):
                metrics[f"source/{name}/docs_seen"] = self._docs_seen[i]
                if window_tokens[i] > 0:
                    metrics[f"source/{name}/loss"] = window_loss[i] / window_tokens[i]
            self._source_window = [0.0] * (2 * n)
        metrics["train/loss"] = loss_sum / max(supervised, 1.0)
        # The progress bar, callback_metrics (monitors, the sweeper's return value) get the loss through self.log;
        # the loggers get one row per step directly: Lightning's self.log costs ~1 ms per key and step on CPU,
        # which alone was ~6% of a small training step with these ~10 keys.
        self.log("train/loss", metrics["train/loss"], on_step=True, on_epoch=False, prog_bar=True, logger=False)
        self._log_row(metrics)

    def _log_row(self, metrics: dict[str, float]) -> None:
        """One row per optimizer step to every logger, on rank zero, every ``trainer.log_every_n_steps`` steps."""
        trainer = self.trainer
        step = trainer.global_step
        if not trainer.loggers or not trainer.is_global_zero or (step + 1) % trainer.log_every_n_steps:
            return
        row = {**metrics, "epoch": float(trainer.current_epoch)}
        for logger in trainer.loggers:
            logger.log_metrics(row, step=step)

    def _global_grad_norm(self) -> torch.Tensor | None:
        """L2 norm of the whole gradient before clipping, on every rank (sharded strategies sum their shards)."""
        strategy = self.trainer.strategy
        if uses_deepspeed(strategy):
            norm = getattr(self.trainer.model, "get_global_grad_norm", lambda: None)()  # the previous step's
            return None if norm is None else torch.as_tensor(float(norm))
        squared = squared_norm(local_gradients(self.trainer.model.parameters()))
        if squared is None:
            return None
        if shards_parameters(strategy):  # sum the shards' squares; hybrid/no sharding hold some elements twice
            squared = strategy.reduce(squared, reduce_op="sum") / gradient_copies(strategy)
        return squared.sqrt()

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by the global norm measured in ``on_before_optimizer_step`` (one pass over the gradients, and
        correct for sharded gradients, which Lightning's FSDP1 clipping refuses)."""
        if not gradient_clip_val or uses_deepspeed(self.trainer.strategy):
            return  # DeepSpeed clips inside its engine (gradient_clipping in its config)
        if gradient_clip_algorithm not in (None, "norm"):
            return self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if self._grad_norm is None:
            return
        coefficient = torch.clamp(gradient_clip_val / (self._grad_norm + 1e-6), max=1.0)
        grads = local_gradients(self.trainer.model.parameters())
        by_type: dict[tuple, list[torch.Tensor]] = {}
        for g in grads:
            by_type.setdefault((g.device, g.dtype), []).append(g)
        for (device, dtype), group in by_type.items():
            torch._foreach_mul_(group, coefficient.to(device=device, dtype=dtype))

    def configure_optimizers(self):
        params = parameter_groups(self.trainer.model, self.weight_decay)
        if offloads_optimizer(self.trainer.strategy):
            optimizer = cpu_adam(self.optimizer_factory, params)  # ZeRO-Offload steps on the CPU
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints -------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["huatuo"] = {
            "rng": _rng_state(),
            "tokens_seen": self._tokens_seen,
            "docs_seen": list(self._docs_seen),
            "source_window": list(self._source_window),
        }
        if not self.strict_loading and isinstance(checkpoint.get("state_dict"), dict):
            # LoRA/QLoRA: the frozen backbone is rebuilt from its source at resume; keep the adapters only.
            trainable = {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("huatuo") or {}
        self._tokens_seen = int(saved.get("tokens_seen", 0))
        self._docs_seen = list(saved.get("docs_seen", self._docs_seen))
        self._source_window = list(saved.get("source_window", self._source_window))
        self._rng_to_restore = saved.get("rng")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restored here, not at load: Lightning draws from the generator when it restarts the data loader, which
        # the uninterrupted run did at the start of the epoch, long before the checkpoint.
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None


def _rng_state() -> dict[str, Any]:
    """Every generator's state in types that ``torch.load(weights_only=True)`` accepts (no NumPy arrays)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
