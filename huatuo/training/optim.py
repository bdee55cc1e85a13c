"""The optimizer's parts: AdamW parameter groups (no decay on biases and norms), the cosine schedule, and
DeepSpeed's CPU Adam for ZeRO-Offload."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from huatuo.core.errors import ConfigError


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


_NORM_TYPES = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm, torch.nn.modules.batchnorm._NormBase)


def is_norm(module: torch.nn.Module) -> bool:
    """A normalisation layer: torch's own, or a model's class named ``...Norm`` (LlamaRMSNorm, BaichuanRMSNorm)."""
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith("Norm")


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices, none on biases, normalisation weights or other 1-D parameters.

    Decided per module and parameter name, not by the tensor's shape alone: under DeepSpeed ZeRO-3 every parameter is
    an empty 1-D partition (its real shape is ``ds_shape``) and under FSDP1 a 1-D view of a flat shard, so a shape
    test would put every parameter in the no-decay group and switch weight decay off unnoticed. Under FSDP1 the
    real rank is unknown, so there only biases and normalisation layers are exempt. Shared parameters (tied
    embeddings) count once.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    flat_views = any(isinstance(m, FullyShardedDataParallel) for m in model.modules())
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        norm = is_norm(module)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            shape = getattr(param, "ds_shape", None)
            rank = len(shape) if shape is not None else (None if flat_views else param.ndim)
            exempt = norm or name == "bias" or (rank is not None and rank < 2)
            (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cpu_adam(factory: Callable[..., torch.optim.Optimizer], params: list[dict]) -> torch.optim.Optimizer:
    """DeepSpeed's vectorised CPU AdamW with the hyperparameters of the configured AdamW partial.

    ZeRO-Offload runs the optimizer step on the CPU; DeepSpeed refuses torch's AdamW there by default because its
    own CPU Adam is several times faster. Per-group weight decay is kept (``params`` are the AdamW groups).
    """
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    settings = dict(getattr(factory, "keywords", {}))
    target = getattr(factory, "func", None)
    if target not in (torch.optim.AdamW, torch.optim.Adam):
        raise ConfigError(
            f"optimizer._target_={getattr(target, '__name__', target)} with strategy=deepspeed_zero3_offload: "
            "ZeRO-Offload needs torch.optim.AdamW (replaced by DeepSpeed's CPU Adam); use AdamW or a strategy "
            "without offload_optimizer"
        )
    return DeepSpeedCPUAdam(
        params,
        lr=settings.get("lr", 1e-3),
        betas=tuple(settings.get("betas", (0.9, 0.999))),
        eps=settings.get("eps", 1e-8),
        adamw_mode=target is torch.optim.AdamW,
    )
