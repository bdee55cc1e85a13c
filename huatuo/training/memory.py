"""The memory model behind ``huatuo.training.plan``: bytes per GPU of weights, gradients, optimizer state and
activations for a decoder-only transformer under a strategy, a precision and a batch shape.

Activations are counted tensor by tensor from what autograd keeps for backward in these models (Llama-style decoders
and huatuo's Baichuan2), plus the loss peak at the end of the forward: ``logits``, their float32 copy and the
log-softmax, ``12 x tokens x vocab`` bytes, which dominates for large vocabularies. ``measure_cpu_peak`` measures the
real peak on CPU, which the tests compare with the count on the tiny model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GIB = 2**30


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
