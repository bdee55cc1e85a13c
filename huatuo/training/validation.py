"""Config validation before anything heavy loads: every problem at once, each with its key and the fix.

Runs in a fraction of a second: torch is imported only when a setting needs to know about the GPUs (a GPU
accelerator, DeepSpeed or FSDP, half precision, a global batch over ``devices: auto``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from huatuo.core.errors import ConfigError, raise_problems
from huatuo.data.settings import parse_sources, reading_problems, settings_from_config
from huatuo.models.loading import DTYPES, import_class, model_folder_problem

__all__ = ["ConfigError", "check_train_config", "derived_accumulation", "train_config_problems"]

KNOWN_PRECISIONS = {"32-true", "32", "bf16-mixed", "bf16-true", "bf16", "16-mixed", "16-true", "16", "64-true", "64"}
CPU_PRECISIONS = {"32-true", "32", "bf16-mixed", "bf16-true", "bf16", "64-true", "64"}
FSDP2_PRECISIONS = {"32-true", "bf16-mixed", "bf16-true", "16-true"}  # what Lightning's ModelParallelStrategy takes


@cache
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _bf16_supported() -> bool:
    import torch

    return torch.cuda.is_bf16_supported()


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _device_count(trainer: dict[str, Any], on_gpu: bool) -> int | None:
    devices = trainer.get("devices", "auto")
    if isinstance(devices, int):
        return devices if devices > 0 else (_gpu_count() if on_gpu else 1)
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    if devices == "auto":
        return _gpu_count() if on_gpu else 1
    return None


def _strategy_kind(target: str) -> str:
    """``auto``, ``ddp``, ``fsdp`` (FSDP1), ``fsdp2``, ``deepspeed`` or ``other`` from a strategy ``_target_``."""
    if "deepspeed" in target.lower():
        return "deepspeed"
    if target.endswith("fsdp2_strategy") or "ModelParallelStrategy" in target:
        return "fsdp2"
    if "fsdp" in target.lower():
        return "fsdp"
    if "DDP" in target:
        return "ddp"
    if target.endswith("named_strategy"):
        return "auto"
    return "other"


def _finetune_mode(cfg: DictConfig) -> str:
    target = str((cfg.get("finetune") or {}).get("_target_", ""))
    return target.rpartition(".")[2] if target else "full_finetune"


def derived_accumulation(cfg: DictConfig) -> int:
    """``trainer.accumulate_grad_batches``, or the value that makes ``global_batch_size`` when that is set."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    accumulate = trainer.get("accumulate_grad_batches", 1)
    global_batch = cfg.get("global_batch_size")
    if global_batch is None:
        return accumulate
    on_gpu = trainer.get("accelerator", "auto") in ("gpu", "cuda") or (
        trainer.get("accelerator", "auto") == "auto" and _cuda_available()
    )
    per_step = cfg.data.micro_batch_size * (_device_count(trainer, on_gpu) or 1) * int(trainer.get("num_nodes", 1))
    return global_batch // per_step


def train_config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of a composed ``train.yaml`` config that can be found without loading weights."""
    problems: list[str] = []
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    strategy = OmegaConf.to_container(cfg.strategy, resolve=True) if isinstance(cfg.strategy, DictConfig) else {}
    kind = _strategy_kind(str(strategy.get("_target_", "")))
    mode = _finetune_mode(cfg)
    accelerator = trainer.get("accelerator", "auto")
    precision = str(trainer.get("precision"))
    # Asking torch about GPUs costs a second or two: only settings that depend on the answer ask.
    gpu_matters = (
        accelerator in ("gpu", "cuda")
        or kind in ("deepspeed", "fsdp")
        or precision not in CPU_PRECISIONS
        or precision.startswith("bf16")
        or (cfg.get("global_batch_size") is not None and trainer.get("devices", "auto") in ("auto", -1))
    )
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpu_matters and _cuda_available())

    # -- device, strategy, precision
    if accelerator in ("gpu", "cuda") and not _cuda_available():
        problems.append("trainer.accelerator=gpu but no CUDA device is visible; use trainer.accelerator=cpu")
    if not on_gpu and kind == "deepspeed":
        problems.append(
            "strategy=deepspeed_* needs CUDA GPUs (DeepSpeed refuses CPU); on CPU use strategy=ddp or strategy=fsdp2"
        )
    if not on_gpu and kind == "fsdp":
        problems.append("strategy=fsdp (FSDP1) needs CUDA GPUs in Lightning; on CPU use strategy=fsdp2")
    if precision not in KNOWN_PRECISIONS:
        problems.append(f"trainer.precision={precision} is unknown; use 32-true, bf16-mixed or bf16-true")
    elif not on_gpu and precision not in CPU_PRECISIONS:
        problems.append(f"trainer.precision={precision} needs a GPU; on CPU use 32-true, bf16-mixed or bf16-true")
    elif on_gpu and precision.startswith("bf16") and _cuda_available() and not _bf16_supported():
        problems.append(f"trainer.precision={precision} but this GPU has no bf16; use 16-mixed or 32-true")
    if kind == "fsdp2" and precision in KNOWN_PRECISIONS and precision not in FSDP2_PRECISIONS:
        problems.append(
            f"trainer.precision={precision} is not supported by strategy=fsdp2; use one of {sorted(FSDP2_PRECISIONS)}"
        )
    if kind == "deepspeed" and trainer.get("gradient_clip_algorithm") not in (None, "norm"):
        problems.append("trainer.gradient_clip_algorithm=value: DeepSpeed clips by norm only; use norm or null")
    if kind == "deepspeed":
        stage = strategy.get("stage")
        if stage not in (1, 2, 3):
            problems.append(f"strategy.stage={stage!r}: DeepSpeed ZeRO stages are 1, 2 and 3")
        elif strategy.get("offload_parameters") and stage != 3:
            problems.append("strategy.offload_parameters=true needs strategy.stage=3 (ZeRO-1/2 keep whole parameters)")
    loggers = cfg.get("logger") or {}
    for name, node in loggers.items() if isinstance(loggers, DictConfig) else []:
        if isinstance(node, DictConfig) and str(node.get("_target_", "")).endswith(".wandb_logger"):
            if (wandb_mode := node.get("mode", "auto")) not in ("auto", "online", "offline"):
                problems.append(f"logger.{name}.mode={wandb_mode!r}: use auto, online or offline")

    # -- layer classes for sharding and checkpointing
    layer_class = cfg.backbone.get("layer_class")
    if kind in ("fsdp", "fsdp2"):
        if not layer_class:
            problems.append(f"strategy={kind} needs backbone.layer_class (the decoder layer class to shard per layer)")
        else:
            try:
                import_class(str(layer_class))
            except ConfigError as err:
                problems.append(f"backbone.layer_class={layer_class}: {err}")
    gradient_checkpointing = bool((cfg.backbone.get("model") or {}).get("gradient_checkpointing"))
    if kind == "fsdp" and strategy.get("activation_checkpointing") and gradient_checkpointing:
        problems.append(
            "strategy.activation_checkpointing=true and backbone.model.gradient_checkpointing=true recompute every "
            "layer twice; keep one (set backbone.model.gradient_checkpointing=false)"
        )

    # -- finetuning mode
    if mode == "qlora":
        if kind in ("fsdp", "fsdp2") or (kind == "deepspeed" and strategy.get("stage") == 3):
            name = "deepspeed_zero3" if kind == "deepspeed" else kind
            problems.append(
                f"finetune=qlora with strategy={name}: 4-bit bitsandbytes weights cannot be sharded; use strategy=ddp, "
                "deepspeed_zero2 or auto, or finetune=lora"
            )
    if mode in ("lora", "qlora"):
        settings = cfg.finetune
        if not isinstance(settings.get("r"), int) or settings.get("r") < 1:
            problems.append(f"finetune.r={settings.get('r')!r} must be an integer >= 1 (8-64 is common)")
        if not isinstance(settings.get("alpha"), int | float) or settings.get("alpha") <= 0:
            problems.append(f"finetune.alpha={settings.get('alpha')!r} must be > 0 (usually 2 x r)")
        if not isinstance(settings.get("dropout"), int | float) or not 0 <= settings.get("dropout") < 1:
            problems.append(f"finetune.dropout={settings.get('dropout')!r} must be in [0, 1)")

    # -- batch layout
    mbs = cfg.data.get("micro_batch_size")
    if not isinstance(mbs, int) or mbs < 1:
        problems.append(f"data.micro_batch_size={mbs!r} must be an integer >= 1")
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if isinstance(accumulate, dict):
        problems.append(
            "trainer.accumulate_grad_batches is a schedule; the global-batch loss needs one constant value (an int)"
        )
    elif not isinstance(accumulate, int) or accumulate < 1:
        problems.append(f"trainer.accumulate_grad_batches={accumulate!r} must be an integer >= 1")
    global_batch = cfg.get("global_batch_size")
    devices = _device_count(trainer, on_gpu)
    nodes = int(trainer.get("num_nodes", 1))
    if global_batch is not None and devices and isinstance(mbs, int) and mbs >= 1 and isinstance(accumulate, int):
        per_step = mbs * devices * nodes
        if not isinstance(global_batch, int) or global_batch < 1 or global_batch % per_step:
            problems.append(
                f"global_batch_size={global_batch} is not a multiple of data.micro_batch_size x trainer.devices x "
                f"trainer.num_nodes = {mbs} x {devices} x {nodes} = {per_step}; use a multiple of {per_step} or "
                "change the micro-batch or device count"
            )
        elif accumulate not in (1, global_batch // per_step):
            problems.append(
                f"global_batch_size={global_batch} needs trainer.accumulate_grad_batches={global_batch // per_step} "
                f"but it is {accumulate}; drop one of the two settings"
            )
    if trainer.get("max_steps", -1) in (-1, None) and trainer.get("max_epochs") in (-1, None):
        problems.append("trainer.max_steps=-1 and trainer.max_epochs=null never stop; set one of them")

    # -- data, checkpoints, export
    max_len, backbone_max = cfg.data.get("max_len"), cfg.backbone.get("max_len")
    if isinstance(max_len, int) and isinstance(backbone_max, int) and max_len > backbone_max:
        problems.append(
            f"data.max_len={max_len} exceeds backbone.max_len={backbone_max} (the model's context); lower data.max_len"
        )
    every = cfg.checkpoint.get("every_n_train_steps")
    if every is not None and (not isinstance(every, int) or every < 1):
        problems.append(f"checkpoint.every_n_train_steps={every!r} must be an integer >= 1, or null for last.ckpt only")
    export_dtype = cfg.export.get("dtype")
    if export_dtype is not None and export_dtype not in DTYPES:
        problems.append(f"export.dtype={export_dtype!r} is unknown; use null or one of {sorted(DTYPES)}")
    resume = cfg.get("resume")
    if resume not in (None, "auto") and not Path(str(resume)).exists():
        problems.append(f"resume={resume!r}: no such checkpoint; use null, auto or the path of a .ckpt")
    model = cfg.backbone.get("model") or {}
    for key in ("path",):
        if problem := model_folder_problem(model.get(key), f"backbone.model.{key}"):
            problems.append(problem)
    tokenizer_path = (cfg.backbone.get("tokenizer") or {}).get("path")
    local = Path(str(tokenizer_path)).expanduser() if tokenizer_path else None
    if local is not None and str(tokenizer_path).startswith(("/", ".", "~")) and not local.exists():
        problems.append(f"backbone.tokenizer.path={tokenizer_path}: no such folder; check the path")
    return problems + data_config_problems(cfg)


def data_config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of the ``data`` group: its sources (files, formats, priorities) and packing settings."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    _, problems = parse_sources(data.get("sources"))
    return problems + reading_problems(data) + settings_from_config(data).problems()


def check_train_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem of the config, or return quietly."""
    raise_problems("the config cannot run", train_config_problems(cfg))
