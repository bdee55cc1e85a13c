"""``python -m huatuo.plan``: the GPU memory a training run needs, before you rent the GPUs.

    python -m huatuo.plan backbone=baichuan2_13b strategy=deepspeed_zero3 trainer.devices=8 trainer.precision=bf16-mixed

Composes the same backbone/strategy/trainer/data groups as ``train.py``, builds the model on the meta device (no
weights are read; a hub name needs only its ``config.json``, and the paper's backbones need nothing at all) and prints,
per GPU: weights, gradients, optimizer state and activations at the planned micro-batch and sequence length, after
the strategy's sharding, the precision and gradient checkpointing; then the largest micro-batch that fits.

The memory model itself is ``huatuo.training.memory``. Other architectures than Llama-style decoders and Baichuan2
are estimated as Llama-style decoders; the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from huatuo.core.errors import ConfigError
from huatuo.models.loading import model_folder_problem
from huatuo.training.memory import GIB, Architecture, Setup, activation_parts, state_bytes

# Published dimensions of the paper's backbones, so planning them needs no download.
_BAICHUAN2_7B = {
    "model_type": "baichuan",
    "vocab_size": 125696,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "max_position_embeddings": 4096,
    "position_embedding": "rope",
}
_BAICHUAN2_13B = {
    "model_type": "baichuan",
    "vocab_size": 125696,
    "hidden_size": 5120,
    "intermediate_size": 13696,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "position_embedding": "alibi",
}
_YI_34B = {
    "model_type": "llama",
    "vocab_size": 64000,
    "hidden_size": 7168,
    "intermediate_size": 20480,
    "num_hidden_layers": 60,
    "num_attention_heads": 56,
    "num_key_value_heads": 8,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 5e6},
    "tie_word_embeddings": False,
}
PUBLISHED = {
    "baichuan-inc/Baichuan2-7B-Base": _BAICHUAN2_7B,
    "FreedomIntelligence/HuatuoGPT2-7B": _BAICHUAN2_7B,
    "baichuan-inc/Baichuan2-13B-Base": _BAICHUAN2_13B,
    "FreedomIntelligence/HuatuoGPT2-13B": _BAICHUAN2_13B,
    "01-ai/Yi-34B": _YI_34B,
    "FreedomIntelligence/HuatuoGPT2-34B": _YI_34B,
}

_DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


@dataclass
class Plan:
    """Per-GPU memory of a run, in bytes, and the largest micro-batch that fits."""

    architecture: Architecture
    setup: Setup
    per_gpu: dict[str, float]
    activation_parts: dict[str, float]
    cpu: dict[str, float]
    max_micro_batch: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        """Everything on one GPU, in bytes."""
        return sum(self.per_gpu.values())


# ----------------------------------------------------------------------------------------------------- the model


def model_config(model: dict[str, Any]):
    """The transformers config of a ``backbone.model`` node (a path or a random-init config), without weights."""
    import huatuo.models.baichuan  # noqa: F401  (model_type baichuan)
    from huatuo.models import released

    path = model.get("path")
    if problem := model_folder_problem(path, "backbone.model.path"):
        raise ConfigError(problem)
    if path is None:
        settings = dict(model.get("config") or {})
        if "model_type" not in settings:
            raise ConfigError("backbone.model needs a path or a config with a model_type to plan")
        return _config_from_dict(settings)
    if str(path) in PUBLISHED:
        return _config_from_dict(dict(PUBLISHED[str(path)]))
    settings = released.read_json(str(path), "config.json", model.get("revision"))
    if settings is None:
        raise ConfigError(
            f"backbone.path={path}: no config.json (offline, or not a model folder); point backbone.path at a local "
            "copy of the model"
        )
    if released.is_yi(settings):
        return released.llama_config_from_yi(settings)
    return _config_from_dict(settings)


def _config_from_dict(settings: dict[str, Any]):
    from transformers import AutoConfig

    settings = dict(settings)
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


def architecture(config) -> Architecture:
    """Parameter counts and shapes of a model, built on the meta device from its config."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    split = set(getattr(model, "_no_split_modules", None) or [])
    layer = next((m for m in model.modules() if type(m).__name__ in split), None)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if config.model_type == "baichuan":
        family, exact = f"baichuan-{config.position_embedding}", True
    else:
        family = "llama"
        exact = config.model_type in ("llama", "mistral", "qwen2", "qwen3") and hasattr(model.model, "layers")
    return Architecture(
        family=family,
        exact=exact,
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        intermediate=getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
        vocab=config.vocab_size,
        params=sum(p.numel() for p in model.parameters()),
        layer_params=sum(p.numel() for p in layer.parameters()) if layer is not None else 0,
        layer_class=f"{type(layer).__module__}.{type(layer).__name__}" if layer is not None else None,
    )


# ----------------------------------------------------------------------------------------------------- the plan


def make_plan(arch: Architecture, setup: Setup, search_limit: int = 4096) -> Plan:
    """Memory per GPU at ``setup.micro_batch``, and the largest micro-batch within ``setup.gpu_gib``."""
    per_gpu, cpu, notes = state_bytes(arch, setup)
    fixed = sum(per_gpu.values()) + setup.overhead_gib * GIB
    parts = activation_parts(arch, setup, setup.micro_batch)
    per_gpu["activations"] = sum(parts.values())
    per_gpu["CUDA context, allocator slack"] = setup.overhead_gib * GIB
    budget = setup.gpu_gib * GIB
    largest = 0
    for batch in range(1, search_limit + 1):
        if fixed + sum(activation_parts(arch, setup, batch).values()) > budget:
            break
        largest = batch
    if not arch.exact:
        notes.append(f"{arch.family}-style estimate: this architecture is not modelled tensor by tensor")
    if largest == 0:
        notes.append(
            "even micro-batch 1 does not fit: shard more (strategy=deepspeed_zero3 or fsdp), enable "
            "backbone.model.gradient_checkpointing, offload (strategy=deepspeed_zero3_offload) or shorten data.max_len"
        )
    return Plan(arch, setup, per_gpu, parts, cpu, largest, notes)


def _strategy(strategy: dict[str, Any], world: int) -> dict[str, Any]:
    target = str(strategy.get("_target_", ""))
    if target.endswith("named_strategy"):
        return {"strategy": "ddp" if world > 1 else "single"}
    if target.endswith("DDPStrategy"):
        return {"strategy": "ddp"}
    if target.endswith("fsdp_strategy"):
        return {
            "strategy": "fsdp",
            "shard": str(strategy.get("sharding_strategy", "FULL_SHARD")),
            "offload_parameters": bool(strategy.get("cpu_offload", False)),
        }
    if target.endswith("ModelParallelStrategy"):
        return {"strategy": "fsdp2", "shard": "FULL_SHARD"}
    if target.endswith("deepspeed_strategy"):
        stage = int(strategy.get("stage", 0))
        reduce_bucket = float(strategy.get("reduce_bucket_size", 5e8))
        gather_bucket = float(strategy.get("allgather_bucket_size", 5e8))
        overlap = 2 if strategy.get("overlap_comm", True) else 1
        buckets = 2 * (reduce_bucket * overlap + (gather_bucket if stage != 1 else 0))  # half-precision elements
        return {
            "strategy": "deepspeed",
            "stage": stage,
            "offload_optimizer": bool(strategy.get("offload_optimizer", False)),
            "offload_parameters": bool(strategy.get("offload_parameters", False)),
            "bucket_bytes": buckets if stage >= 2 else 0.0,
        }
    raise ConfigError(
        f"strategy._target_={target!r}: huatuo.training.plan does not model this strategy; pick one of conf/strategy"
    )


def setup_from_config(cfg) -> tuple[Setup, list[str]]:
    """The Setup of a composed ``plan.yaml`` config, with notes on assumptions it had to make."""
    from omegaconf import OmegaConf

    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    model = OmegaConf.to_container(cfg.backbone.model, resolve=True)
    strategy = OmegaConf.to_container(cfg.strategy, resolve=True)
    settings = OmegaConf.to_container(cfg.plan, resolve=True)
    notes = []
    devices = trainer.get("devices", "auto")
    if isinstance(devices, list | tuple):
        devices = len(devices)
    if not str(devices).isdigit():
        notes.append(f"trainer.devices={devices}: planned for 1 device per node; pass trainer.devices=N")
        devices = 1
    devices, nodes = int(devices), int(trainer.get("num_nodes", 1))
    kind = _strategy(strategy, devices * nodes)
    dtype = str(model.get("dtype") or "float32")
    if dtype not in _DTYPE_BYTES:
        raise ConfigError(f"backbone.model.dtype={dtype!r}: plan knows {sorted(_DTYPE_BYTES)}")
    checkpointing = bool(model.get("gradient_checkpointing")) or bool(strategy.get("activation_checkpointing"))
    setup = Setup(
        world=devices * nodes,
        per_node=devices,
        precision=str(trainer.get("precision", "32-true")),
        weight_dtype_bytes=_DTYPE_BYTES[dtype],
        checkpointing=checkpointing,
        packed=bool(cfg.data.get("isolate", True)),
        attention=str(model.get("attn_implementation") or "sdpa"),
        micro_batch=int(settings["micro_batch_size"]),
        seq_len=int(settings["seq_len"]),
        gpu_gib=float(settings["gpu_memory_gb"]),
        overhead_gib=float(settings["overhead_gb"]),
        **kind,
    )
    return setup, notes


def plan_from_config(cfg) -> Plan:
    """Plan the run a composed ``plan.yaml`` config describes."""
    from omegaconf import OmegaConf

    setup, notes = setup_from_config(cfg)
    arch = architecture(model_config(OmegaConf.to_container(cfg.backbone.model, resolve=True)))
    plan = make_plan(arch, setup)
    plan.notes = notes + plan.notes
    configured = cfg.backbone.get("layer_class")
    if arch.layer_class and configured != arch.layer_class:
        plan.notes.append(f"this model's decoder layer class: backbone.layer_class={arch.layer_class}")
    return plan


# -------------------------------------------------------------------------------------------------- reporting


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _gib(value: float) -> str:
    return f"{value / GIB:,.2f}"


def render(plan: Plan, name: str = "") -> None:
    """Print the plan as tables (rich)."""
    from rich.console import Console
    from rich.table import Table

    arch, setup = plan.architecture, plan.setup
    console = Console()
    sharding = {
        "fsdp": f"FSDP {setup.shard}",
        "fsdp2": "FSDP2 (full shard)",
        "deepspeed": f"DeepSpeed ZeRO-{setup.stage}"
        + (" + optimizer offload" if setup.offload_optimizer else "")
        + (" + parameter offload" if setup.offload_parameters else ""),
    }.get(setup.strategy, setup.strategy.upper())
    console.print(
        f"[bold]{name or arch.family}[/bold]: {_count(arch.params)} parameters "
        f"({arch.layers} layers x {arch.layer_params / 1e6:.1f}M, hidden {arch.hidden}, heads {arch.heads}/"
        f"{arch.kv_heads} kv, vocab {arch.vocab}, {arch.family})\n"
        f"{sharding} over {setup.world} GPU(s), precision {setup.precision}, micro-batch {setup.micro_batch} x "
        f"{setup.seq_len} tokens, gradient checkpointing {'on' if setup.checkpointing else 'off'}, "
        f"packed isolation {'on' if setup.packed else 'off'}"
    )
    table = Table(title="memory per GPU (GiB)")
    table.add_column("what")
    table.add_column("GiB", justify="right")
    for key, value in plan.per_gpu.items():
        table.add_row(key, _gib(value))
        if key == "activations":
            for part, part_value in plan.activation_parts.items():
                table.add_row(f"  {part}", _gib(part_value), style="dim")
    fits = plan.total <= setup.gpu_gib * GIB
    table.add_row("total", _gib(plan.total), style="bold green" if fits else "bold red")
    console.print(table)
    if plan.cpu:
        console.print("in CPU memory per rank: " + ", ".join(f"{k} {_gib(v)} GiB" for k, v in plan.cpu.items()))
    verdict = "fits" if fits else "does NOT fit"
    console.print(
        f"micro-batch {setup.micro_batch} {verdict} in {setup.gpu_gib:g} GiB; the largest that fits: "
        f"[bold]{plan.max_micro_batch}[/bold]"
    )
    for note in plan.notes:
        console.print(f"note: {note}")
