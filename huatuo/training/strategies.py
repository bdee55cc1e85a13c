"""Builders for the Lightning strategies that YAML alone cannot express, and what the training code asks of them.

Every strategy here writes its checkpoint folders atomically (``huatuo.training.checkpointing``).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

from huatuo.core.errors import ConfigError
from huatuo.models.loading import import_class
from huatuo.training.checkpointing import save_folder_atomically


def named_strategy(name: str = "auto") -> str:
    """A strategy Lightning knows by name (``auto``, ``ddp``, ``single_device``...)."""
    return name


class ShardedFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP (FSDP1) whose sharded checkpoint folders are written atomically."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)  # one file, via AtomicCheckpointIO
        save_folder_atomically(
            self, lambda path: super(ShardedFSDPStrategy, self).save_checkpoint(checkpoint, path), filepath
        )


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy used as pure FSDP2: every device in one data-parallel dimension.

    (Lightning's ``data_parallel_size="auto"`` means one data-parallel group per node, for 2D parallelism.)
    ``CausalLMModule.configure_model`` applies ``fully_shard`` with ``reshard_after_forward``.
    """

    def __init__(self, reshard_after_forward: bool = True, **kwargs: Any) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)  # one file, via AtomicCheckpointIO
        save_folder_atomically(
            self, lambda path: super(FSDP2Strategy, self).save_checkpoint(checkpoint, path), filepath
        )


class ZeroStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy whose checkpoint folders are written atomically."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        save_folder_atomically(self, lambda path: super(ZeroStrategy, self).save_checkpoint(checkpoint, path), filepath)


def fsdp_strategy(
    layer_class: str,
    sharding_strategy: str = "FULL_SHARD",
    activation_checkpointing: bool = False,
    cpu_offload: bool = False,
    state_dict_type: str = "sharded",
    limit_all_gathers: bool = True,
) -> ShardedFSDPStrategy:
    """Lightning's FSDPStrategy wrapping (and optionally checkpointing) every ``layer_class`` module."""
    layer = import_class(layer_class)
    return ShardedFSDPStrategy(
        auto_wrap_policy={layer},
        activation_checkpointing_policy={layer} if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        cpu_offload=cpu_offload,
        state_dict_type=state_dict_type,
        limit_all_gathers=limit_all_gathers,
        use_orig_params=True,  # lets the optimizer see unflattened parameters (needed for per-parameter decay)
    )


def fsdp2_strategy(
    reshard_after_forward: bool = True,
    save_distributed_checkpoint: bool = True,
    process_group_backend: str | None = None,
) -> FSDP2Strategy:
    """FSDP2 (``fully_shard`` per decoder layer) over every device of every node."""
    return FSDP2Strategy(
        reshard_after_forward=reshard_after_forward,
        save_distributed_checkpoint=save_distributed_checkpoint,
        process_group_backend=process_group_backend,
    )


def deepspeed_config(
    stage: int,
    offload_optimizer: bool = False,
    offload_parameters: bool = False,
    overlap_comm: bool = True,
    contiguous_gradients: bool = True,
    reduce_bucket_size: int = 500_000_000,
    allgather_bucket_size: int = 500_000_000,
    micro_batch_size: int | None = None,
) -> dict[str, Any]:
    """A DeepSpeed config with one consistent ZeRO stage (the paper's mixed ZeRO-1/ZeRO-3 keys fixed).

    Accumulation, clipping and precision are left out: Lightning fills them from the Trainer.
    """
    if stage not in (1, 2, 3):
        raise ConfigError(f"strategy.stage={stage!r}: DeepSpeed ZeRO stages are 1, 2 and 3")
    if offload_parameters and stage != 3:
        raise ConfigError("strategy.offload_parameters=true needs stage 3 (ZeRO-1/2 do not partition parameters)")
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
    config: dict[str, Any] = {"zero_optimization": zero, "zero_allow_untested_optimizer": True}
    if micro_batch_size is not None:
        # Lightning would otherwise guess 1 (our sampler has no batch_size attribute); DeepSpeed checks
        # train_batch_size = micro x accumulation x world against it and uses it in its throughput logs.
        config["train_micro_batch_size_per_gpu"] = micro_batch_size
    return config


def deepspeed_strategy(stage: int, **settings: Any) -> ZeroStrategy:
    """Lightning's DeepSpeedStrategy with the config of ``deepspeed_config``."""
    return ZeroStrategy(config=deepspeed_config(stage, **settings))


def uses_deepspeed(strategy: Any) -> bool:
    """True for DeepSpeed strategies (their engine divides the loss by the accumulation steps a second time)."""
    return isinstance(strategy, DeepSpeedStrategy)


def shards_parameters(strategy: Any) -> bool:
    """True when each rank holds only a shard of every gradient (FSDP1, FSDP2)."""
    return isinstance(strategy, FSDPStrategy | ModelParallelStrategy)


def gradient_copies(strategy: Any) -> int:
    """How many ranks hold each element of a sharded gradient: 1 when fully sharded, the node count for FSDP1's
    hybrid sharding (sharded within a node, replicated across nodes), every rank for NO_SHARD."""
    if isinstance(strategy, FSDPStrategy):
        name = getattr(strategy.sharding_strategy, "name", str(strategy.sharding_strategy))
        if name == "NO_SHARD":
            return strategy.world_size
        if "HYBRID" in name:
            return strategy.num_nodes
    return 1


def offloads_optimizer(strategy: Any) -> bool:
    """True for a DeepSpeed strategy that keeps the optimizer state in CPU memory (ZeRO-Offload)."""
    return uses_deepspeed(strategy) and bool(
        (strategy.config or {}).get("zero_optimization", {}).get("offload_optimizer")
    )
