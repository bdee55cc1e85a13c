"""``python -m huatuo.plan``: the GPU memory a training run needs, before you rent the GPUs.

    python -m huatuo.plan backbone=baichuan2_13b strategy=deepspeed_zero3 trainer.devices=8 trainer.precision=bf16-mixed

Composes the same backbone/strategy/trainer/data groups as ``train.py``, builds the model on the meta device (no
weights are read; a hub name needs only its ``config.json``, and the paper's backbones need nothing at all) and prints,
per GPU: weights, gradients, optimizer state and activations at the planned micro-batch and sequence length, after
the strategy's sharding, the precision and gradient checkpointing; then the largest micro-batch that fits.

Activations are counted tensor by tensor from what autograd keeps for backward in these models (Llama-style decoders
and huatuo's Baichuan2), plus the loss peak at the end of the forward: ``logits``, their float32 copy and the
log-softmax, ``12 x tokens x vocab`` bytes, which dominates for large vocabularies. The count is checked against the
measured peak of the tiny model on CPU (``measure_cpu_peak``; tests/test_plan.py). Other architectures are estimated
as Llama-style decoders; the report says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from huatuo.logs import get_logger

log = get_logger(__name__)

GIB = 2**30

# Published dimensions of the paper's backbones (DESIGN.md "Backbones"), so planning them needs no download.
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


@dataclass(frozen=True)
class Architecture:
    """What the memory model needs to know about a decoder-only transformer."""

    family: str  # "llama" (separate q/k/v, SwiGLU), "baichuan-rope" or "baichuan-alibi" (fused W_pack)
    exact: bool  # False: an architecture this module does not model tensor by tensor (estimated as "llama")
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    params: int
    layer_params: int
    layer_class: str | None


@dataclass(frozen=True)
class Setup:
    """The run being planned: parallelism, precision and batch shape."""

    world: int  # data-parallel ranks (devices x nodes)
    per_node: int  # devices per node (the group HYBRID_SHARD shards over)
    strategy: str  # "single", "ddp", "fsdp", "fsdp2" or "deepspeed"
    shard: str = "none"  # fsdp: FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD
    stage: int = 0  # deepspeed ZeRO stage
    offload_optimizer: bool = False
    offload_parameters: bool = False
    bucket_bytes: float = 0.0  # deepspeed communication buffers
    precision: str = "32-true"
    weight_dtype_bytes: int = 4  # dtype the weights are loaded in (backbone.model.dtype)
    checkpointing: bool = False
    packed: bool = True  # data.isolate: packed documents get a block-diagonal mask (or per-document ALiBi)
    attention: str = "sdpa"
    micro_batch: int = 1
    seq_len: int = 4096
    gpu_gib: float = 80.0
    overhead_gib: float = 2.0


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
    import huatuo.baichuan  # noqa: F401  (model_type baichuan)
    from huatuo import checkpoints

    path = model.get("path")
    if path is None:
        settings = dict(model.get("config") or {})
        if "model_type" not in settings:
            raise ValueError("backbone.model needs a path or a config with a model_type to plan")
        return _config_from_dict(settings)
    if str(path) in PUBLISHED:
        return _config_from_dict(dict(PUBLISHED[str(path)]))
    settings = checkpoints.read_json(str(path), "config.json", model.get("revision"))
    if settings is None:
        raise FileNotFoundError(
            f"backbone.path={path}: no config.json (offline, or not a model folder); point backbone.path at a local "
            "copy of the model"
        )
    if checkpoints.is_yi(settings):
        return checkpoints.llama_config_from_yi(settings)
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


# ------------------------------------------------------------------------------------------------- activations


def _precision(setup: Setup) -> tuple[int, bool, int]:
    """(compute bytes, autocast on, residual-stream bytes) for the trainer precision and strategy."""
    mixed = setup.precision.endswith("-mixed")
    half = setup.precision.startswith(("bf16", "16"))
    if setup.strategy == "deepspeed" and half:
        return 2, False, 2  # DeepSpeed runs the module itself in half precision (fp32 master copy in the optimizer)
    if mixed:
        return 2, True, setup.weight_dtype_bytes
    if half:
        return 2, False, 2
    return setup.weight_dtype_bytes, False, setup.weight_dtype_bytes


def activation_parts(arch: Architecture, setup: Setup, micro_batch: int) -> dict[str, float]:
    """Peak activation bytes of one training step on one GPU, by part (see the module docstring)."""
    c, autocast, r = _precision(setup)
    h, i, s = arch.hidden, arch.intermediate, setup.seq_len
    tokens = micro_batch * s
    baichuan = arch.family.startswith("baichuan")
    kv = arch.kv_heads * arch.head_dim
    if setup.packed and kv < h and arch.family == "llama":
        kv = h  # with a mask, transformers' SDPA repeats k and v to every head before the kernel

    # RMSNorm keeps its float32 input and its normalised output; Llama's keeps the input in the stream's dtype.
    norm = 8 if baichuan else 4 + r
    # Linear layers keep their input: one shared tensor, or under autocast one half-precision copy per layer.
    attn_inputs, mlp_inputs = (1 if baichuan else 3), 2
    inputs = (attn_inputs + mlp_inputs) * c * h if autocast else 2 * r * h
    if arch.family == "baichuan-rope":
        attention = (3 * h + 2 * h + h) * c  # W_pack output (q, k, v views), rotated q and k, attention output
    elif arch.family == "baichuan-alibi":
        attention = (3 * h + h) * c  # W_pack output, attention output
    else:
        attention = (h + 2 * kv + h) * c  # rotated q, k, v, attention output (also o_proj's input)
    attention += arch.heads * 4  # the kernel's log-sum-exp
    if setup.attention == "eager":
        attention += arch.heads * s * (4 + c)  # softmax in float32 and its cast
    masks = 0.0
    if setup.packed and arch.family == "llama":
        masks = s * c  # SDPA turns transformers' boolean block-diagonal mask into a float mask, in every layer
    per_layer_token = 2 * norm * h + inputs + attention + 4 * i * c + masks  # + SwiGLU: gate, act, up, product
    per_layer = per_layer_token * tokens

    shared = 0.0
    if arch.family == "baichuan-alibi":
        shared += micro_batch * arch.heads * s * s * c  # the per-document ALiBi bias, built once per step
    elif arch.family == "baichuan-rope":
        shared += 2 * tokens * arch.head_dim * 4  # float32 cos/sin
        if setup.packed:
            shared += micro_batch * s * s * c  # the block-diagonal mask, made additive once per step
    else:
        shared += 2 * tokens * arch.head_dim * c
    head_input = c * h if autocast else r * h
    final = (norm * h + head_input) * tokens
    if baichuan:
        final += arch.vocab * h * (c if autocast else setup.weight_dtype_bytes)  # NormHead's normalised weight
    loss = 12 * tokens * arch.vocab  # logits, their float32 copy and the log-softmax; its gradients in backward

    if setup.checkpointing:
        layers = arch.layers * r * h * tokens  # only each layer's input survives the forward
        recompute = 2 * per_layer  # backward rebuilds one layer and its gradients at a time
        peak = max(final + loss, recompute)
        return {"layers (checkpointed inputs)": layers, "recomputed layer / loss peak": peak, "masks and bias": shared}
    return {"layers": arch.layers * per_layer, "final norm, head and loss": final + loss, "masks and bias": shared}


# ----------------------------------------------------------------------------------------- weights and states


def state_bytes(arch: Architecture, setup: Setup) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """(per-GPU bytes, CPU bytes, notes) for weights, gradients, optimizer state and framework buffers."""
    p, c = arch.params, _precision(setup)[0]
    half = setup.precision.startswith(("bf16", "16"))
    notes: list[str] = []
    if setup.strategy == "deepspeed" and half:
        weight, grad, optim = 2, 2, 12  # bf16 weights and gradients; float32 master weights, momentum, variance
    elif setup.precision.endswith("-true") and half:
        weight, grad, optim = 2, 2, 4  # AdamW keeps its two states in the parameters' dtype
    else:
        w = setup.weight_dtype_bytes
        weight, grad, optim = w, w, 2 * w
        if w == 2 and setup.precision.endswith("-mixed"):
            notes.append("weights loaded in half precision: the optimizer updates half-precision parameters")

    world = setup.world
    if setup.strategy == "fsdp" and setup.shard == "HYBRID_SHARD":
        world = setup.per_node
    shard_weights = shard_grads = shard_optim = 1
    gathered = 0.0
    if setup.strategy in ("fsdp", "fsdp2") and setup.shard != "NO_SHARD":
        shard_grads = shard_optim = world
        if setup.shard == "SHARD_GRAD_OP":
            gathered = p * c  # parameters stay gathered between forward and backward
            shard_weights = world
        else:
            shard_weights = world
            gathered = arch.layer_params * (2 * c + grad)  # the unit in use and the prefetched one, plus its grads
    elif setup.strategy == "deepspeed":
        shard_optim = world
        shard_grads = world if setup.stage >= 2 else 1
        shard_weights = world if setup.stage >= 3 else 1
        if setup.stage >= 3:
            gathered = arch.layer_params * 2 * c
    per_gpu = {
        "weights": p * weight / shard_weights,
        "gradients": p * grad / shard_grads,
        "optimizer state": p * optim / shard_optim,
    }
    cpu: dict[str, float] = {}
    if setup.strategy == "fsdp" and setup.offload_parameters:
        cpu = {k: per_gpu.pop(k) for k in ("weights", "gradients", "optimizer state")}
    if setup.strategy == "deepspeed" and setup.offload_optimizer:
        cpu["optimizer state"] = per_gpu.pop("optimizer state")
        if setup.stage >= 2:
            cpu["gradients"] = per_gpu.pop("gradients")
    if setup.strategy == "deepspeed" and setup.offload_parameters:
        cpu["weights"] = per_gpu.pop("weights")
    per_gpu["gathered layers and buffers"] = gathered + setup.bucket_bytes
    return per_gpu, cpu, notes


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
    raise ValueError(
        f"strategy._target_={target!r}: huatuo.plan does not model this strategy; pick one of conf/strategy"
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
        raise ValueError(f"backbone.model.dtype={dtype!r}: plan knows {sorted(_DTYPE_BYTES)}")
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


# ----------------------------------------------------------------------------------------- measuring on CPU


def measure_cpu_peak(step: Callable[[], Any]) -> int:
    """Peak bytes held by PyTorch's CPU allocator while ``step`` runs, above what it held before.

    The profiler records every CPU allocation and free with its timestamp (``profile_memory=True``); replaying them
    in order gives the exact high-water mark of live tensor memory, the CPU analogue of
    ``torch.cuda.max_memory_allocated`` (process RSS would add malloc caching and fragmentation).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and str(event.device_type()).endswith("CPU")
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def main() -> None:
    """``python -m huatuo.plan``: print the memory plan of a backbone/strategy/trainer/data combination."""
    import hydra

    from huatuo import conf_dir

    @hydra.main(version_base="1.3", config_path=conf_dir(), config_name="plan")
    def _main(cfg) -> float:
        plan = plan_from_config(cfg)
        render(plan, name=str(cfg.backbone.get("name", "")))
        return plan.total / GIB

    _main()


if __name__ == "__main__":
    main()
