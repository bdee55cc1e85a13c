"""Builders for the Lightning strategies that YAML alone cannot express (wrap classes, DeepSpeed config dicts)."""

from __future__ import annotations

from typing import Any

from huatuo.backbone import import_class


def named_strategy(name: str = "auto") -> str:
    """A strategy Lightning knows by name (``auto``, ``ddp``, ``single_device``...)."""
    return name


def fsdp_strategy(
    layer_class: str,
    sharding_strategy: str = "FULL_SHARD",
    activation_checkpointing: bool = False,
    cpu_offload: bool = False,
    state_dict_type: str = "sharded",
    limit_all_gathers: bool = True,
):
    """Lightning's FSDPStrategy wrapping (and optionally checkpointing) every ``layer_class`` module."""
    from lightning.pytorch.strategies import FSDPStrategy

    layer = import_class(layer_class)
    return FSDPStrategy(
        auto_wrap_policy={layer},
        activation_checkpointing_policy={layer} if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        cpu_offload=cpu_offload,
        state_dict_type=state_dict_type,
        limit_all_gathers=limit_all_gathers,
        use_orig_params=True,  # lets the optimizer see unflattened parameters (needed for per-parameter decay)
    )


def deepspeed_config(
    stage: int,
    offload_optimizer: bool = False,
    offload_parameters: bool = False,
    overlap_comm: bool = True,
    contiguous_gradients: bool = True,
    reduce_bucket_size: int = 500_000_000,
    allgather_bucket_size: int = 500_000_000,
) -> dict[str, Any]:
    """A DeepSpeed config with one consistent ZeRO stage (the paper's mixed ZeRO-1/ZeRO-3 keys fixed).

    Batch sizes, accumulation, clipping and precision are left out: Lightning fills them from the Trainer.
    """
    if stage not in (1, 2, 3):
        raise ValueError(f"strategy.stage={stage!r}: DeepSpeed ZeRO stages are 1, 2 and 3")
    if offload_parameters and stage != 3:
        raise ValueError("strategy.offload_parameters=true needs stage 3 (ZeRO-1/2 do not partition parameters)")
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": overlap_comm,
        "contiguous_gradients": contiguous_gradients,
        "reduce_bucket_size": reduce_bucket_size,
    }
    if stage < 3:
        zero["allgather_bucket_size"] = allgather_bucket_size
        zero["allgather_partitions"] = True
        zero["reduce_scatter"] = True
    else:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # export consolidates full weights
        zero["stage3_prefetch_bucket_size"] = allgather_bucket_size
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {"zero_optimization": zero, "zero_allow_untested_optimizer": True}


def deepspeed_strategy(stage: int, **settings: Any):
    """Lightning's DeepSpeedStrategy with the config of ``deepspeed_config``."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(config=deepspeed_config(stage, **settings))
