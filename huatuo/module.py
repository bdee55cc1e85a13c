"""The LightningModule around a Hugging Face causal LM: the loss of the method and its metrics."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import lightning as L
import torch
import torch.nn.functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from huatuo.template import IGNORE_INDEX


def cosine_with_warmup(
    optimizer: Optimizer,
    total_steps: int,
    warmup_ratio: float = 0.05,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warmup to the peak learning rate, then cosine decay to ``min_lr_ratio`` of it at ``total_steps``."""
    warmup = warmup_steps if warmup_steps is not None else int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def parameter_groups(named: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices, none on biases and normalisation weights (all 1-D parameters)."""
    decay, no_decay = [], []
    for name, param in named:
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def token_statistics(
    logits: torch.Tensor, labels: torch.Tensor, source_ids: torch.Tensor, n_sources: int
) -> dict[str, torch.Tensor]:
    """Summed next-token loss, correct predictions and counts, overall and per source (labels shift by one)."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    sources = source_ids[:, 1:]
    supervised = targets != IGNORE_INDEX
    losses = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(targets)
    correct = (logits.argmax(-1) == targets) & supervised
    index = torch.where(supervised, sources, n_sources).reshape(-1)  # unsupervised tokens go to a spill bin
    per_source_loss = torch.zeros(n_sources + 1, device=logits.device).index_add_(0, index, losses.reshape(-1))
    per_source_tokens = torch.zeros(n_sources + 1, device=logits.device).index_add_(
        0, index, supervised.reshape(-1).float()
    )
    return {
        "loss_sum": losses.sum(),
        "correct": correct.sum().float(),
        "supervised": supervised.sum().float(),
        "source_loss": per_source_loss[:n_sources].detach(),
        "source_tokens": per_source_tokens[:n_sources],
    }


def gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """L2 norm of all gradients; handles sharded (DTensor) gradients of FSDP2."""
    norms = []
    for p in parameters:
        if p.grad is None:
            continue
        g = p.grad.detach()
        n = torch.linalg.vector_norm(g.float())
        norms.append(n.full_tensor() if hasattr(n, "full_tensor") else n)
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else None


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
    ) -> None:
        super().__init__()
        self.model_factory = model_factory
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.weight_decay = weight_decay
        self.source_names = list(source_names or [])
        self.layer_class = layer_class
        self.model: torch.nn.Module | None = None
        self._step_sums: torch.Tensor | None = None
        self._step_started = time.perf_counter()
        self._tokens_seen = 0
        self._docs_seen: torch.Tensor | None = None

    def configure_model(self) -> None:
        if self.model is not None:
            return  # idempotent: strategies may call this more than once
        self.model = self.model_factory()
        if self._device_mesh is not None:  # ModelParallelStrategy: FSDP2, one shard unit per decoder layer
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            if self.layer_class is not None:
                for module in self.model.modules():
                    if isinstance(module, self.layer_class):
                        fully_shard(module, mesh=mesh)
            fully_shard(self.model, mesh=mesh)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["position_ids"])
        stats = token_statistics(logits, batch["labels"], batch["source_ids"], len(self.source_names))
        self._accumulate(stats, batch)
        # Lightning divides by the accumulation steps and DDP/FSDP/DeepSpeed average over ranks: undo both so the
        # summed gradient is exactly sum(token losses) / supervised tokens of the global batch.
        scale = self.trainer.world_size * self.trainer.accumulate_grad_batches
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
        if self._step_sums is None:
            return
        sums = self.trainer.strategy.reduce(self._step_sums, reduce_op="sum")
        self._step_sums = None
        n = len(self.source_names)
        loss_sum, correct, supervised, tokens = sums[:4].tolist()
        source_loss, source_tokens, docs = sums[4 : 4 + n], sums[4 + n : 4 + 2 * n], sums[4 + 2 * n :]
        now = time.perf_counter()
        elapsed, self._step_started = now - self._step_started, now
        self._tokens_seen += int(tokens)
        self._docs_seen = docs if self._docs_seen is None else self._docs_seen + docs
        metrics = {
            "train/loss": loss_sum / max(supervised, 1.0),
            "train/token_acc": correct / max(supervised, 1.0),
            "train/supervised_tokens": supervised,
            "train/tokens_seen": float(self._tokens_seen),
            "train/tokens_per_s": tokens / max(elapsed, 1e-9),
            "train/lr": optimizer.param_groups[0]["lr"],
        }
        norm = gradient_norm(self.trainer.model.parameters())
        if norm is not None:
            metrics["train/grad_norm"] = float(norm)
        for i, name in enumerate(self.source_names):
            metrics[f"source/{name}/docs_seen"] = float(self._docs_seen[i])
            if source_tokens[i] > 0:
                metrics[f"source/{name}/loss"] = float(source_loss[i] / source_tokens[i])
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, sync_dist=False)
        self.log("loss", metrics["train/loss"], prog_bar=True, logger=False)

    def configure_optimizers(self):
        params = parameter_groups(self.trainer.model.named_parameters(), self.weight_decay)
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
