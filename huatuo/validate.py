"""Config validation before anything heavy loads: every problem at once, each with its key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A composed config that cannot run; the message lists every problem found."""


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _device_count(trainer: dict[str, Any], on_gpu: bool) -> int | None:
    devices = trainer.get("devices", "auto")
    if isinstance(devices, int):
        return devices if devices > 0 else (torch.cuda.device_count() if on_gpu else 1)
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    if devices == "auto":
        return torch.cuda.device_count() if on_gpu else 1
    return None


def train_config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of a composed ``train.yaml`` config that can be found without loading weights."""
    problems: list[str] = []
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    strategy_target = str(cfg.strategy.get("_target_", ""))
    accelerator = trainer.get("accelerator", "auto")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and _cuda_available())
    if accelerator in ("gpu", "cuda") and not _cuda_available():
        problems.append("trainer.accelerator=gpu but no CUDA device is visible; use trainer.accelerator=cpu")
    if not on_gpu:
        if "deepspeed" in strategy_target:
            problems.append(
                "strategy=deepspeed_* needs CUDA GPUs (DeepSpeed refuses CPU); "
                "on CPU use strategy=ddp or strategy=fsdp2"
            )
        if "fsdp_strategy" in strategy_target:
            problems.append("strategy=fsdp (FSDP1) needs CUDA GPUs in Lightning; on CPU use strategy=fsdp2")
        precision = str(trainer.get("precision"))
        if precision in ("16-mixed", "16", "16-true"):
            problems.append(f"trainer.precision={precision} needs a GPU; on CPU use 32-true or bf16-mixed")
    elif str(trainer.get("precision")).startswith("bf16") and not torch.cuda.is_bf16_supported():
        problems.append(
            f"trainer.precision={trainer.get('precision')} but this GPU has no bf16; use 16-mixed or 32-true"
        )
    mbs = cfg.data.get("micro_batch_size")
    if not isinstance(mbs, int) or mbs < 1:
        problems.append(f"data.micro_batch_size={mbs!r} must be an integer >= 1")
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if not isinstance(accumulate, int) or accumulate < 1:
        problems.append(f"trainer.accumulate_grad_batches={accumulate!r} must be an integer >= 1")
    global_batch = cfg.get("global_batch_size")
    devices = _device_count(trainer, on_gpu)
    if global_batch is not None and devices and isinstance(mbs, int) and isinstance(accumulate, int):
        per_step = mbs * devices * int(trainer.get("num_nodes", 1))
        if global_batch % per_step or global_batch // per_step != accumulate:
            problems.append(
                f"global_batch_size={global_batch} is not micro_batch_size x devices x nodes x accumulate "
                f"= {mbs} x {devices} x {trainer.get('num_nodes', 1)} x {accumulate}; change one of them"
            )
    max_len, backbone_max = cfg.data.get("max_len"), cfg.backbone.get("max_len")
    if isinstance(max_len, int) and isinstance(backbone_max, int) and max_len > backbone_max:
        problems.append(
            f"data.max_len={max_len} exceeds backbone.max_len={backbone_max} (the model's context); lower data.max_len"
        )
    resume = cfg.get("resume")
    if resume not in (None, "auto") and not Path(str(resume)).exists():
        problems.append(f"resume={resume!r}: no such checkpoint; use null, auto or the path of a .ckpt")
    return problems


def check_train_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem of the config, or return quietly."""
    problems = train_config_problems(cfg)
    if problems:
        raise ConfigError("the config cannot run:\n  - " + "\n  - ".join(problems))
