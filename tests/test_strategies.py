"""Strategies that cannot run on CPU are checked by construction and by DeepSpeed's own config parser; checkpoint
writes are crash-safe; the validator reports every problem of a config at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra.utils import instantiate

from huatuo.core.errors import ConfigError
from huatuo.training.checkpointing import AtomicCheckpointIO, find_checkpoint
from huatuo.training.strategies import (
    FSDP2Strategy,
    ShardedFSDPStrategy,
    ZeroStrategy,
    gradient_copies,
    offloads_optimizer,
)
from huatuo.training.validation import check_train_config, derived_accumulation
from tests.helpers import ROOT, compose_config

ZERO = ["deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"]


def config(tmp_path, *overrides: str):
    return compose_config("train", [f"paths.run_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides])


@pytest.mark.parametrize("option", ZERO)
@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_zero_configs_pass_deepspeeds_own_parser(option, precision, tmp_path):
    from deepspeed.runtime.config import DeepSpeedConfig
    from lightning.fabric.strategies.deepspeed import _format_precision_config

    cfg = config(tmp_path, f"strategy={option}", "data.micro_batch_size=4", "trainer.accumulate_grad_batches=8")
    strategy = instantiate(cfg.strategy)
    assert isinstance(strategy, ZeroStrategy)
    assert offloads_optimizer(strategy) == option.endswith("offload")  # then DeepSpeed's CPU Adam replaces AdamW
    ds_config = dict(strategy.config)
    # what Lightning adds from the Trainer before it starts the engine
    ds_config["gradient_accumulation_steps"] = cfg.trainer.accumulate_grad_batches
    ds_config["gradient_clipping"] = cfg.trainer.gradient_clip_val
    _format_precision_config(ds_config, precision, 0, 1000, 1, 16, 2)
    parsed = DeepSpeedConfig(ds_config)  # raises on unknown or inconsistent keys
    stage = int(option.split("zero")[1][0])
    assert parsed.zero_optimization_stage == stage
    assert (parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps) == (4, 8)
    assert parsed.train_batch_size == 32  # micro x accumulation x world (1 process here)
    assert parsed.gradient_clipping == 1.0
    assert parsed.bfloat16_config.enabled == (precision == "bf16-mixed")
    assert (parsed.zero_config.offload_param is not None) == option.endswith("offload")
    assert (parsed.zero_config.offload_optimizer is not None) == option.endswith("offload")
    if stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save  # the export consolidates full weights


def test_deepspeeds_parser_rejects_the_papers_mixed_stage_keys():
    from deepspeed.runtime.config import DeepSpeedConfig

    with pytest.raises(Exception, match="stage3_param_persistence_threshold|extra"):
        DeepSpeedConfig(
            {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 1, "stage3_bogus_threshold": 1}}
        )


def test_fsdp_wraps_and_checkpoints_the_backbones_decoder_layer(tmp_path):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    cfg = config(tmp_path, "strategy=fsdp", "strategy.activation_checkpointing=true")
    strategy = instantiate(cfg.strategy)
    assert isinstance(strategy, ShardedFSDPStrategy)
    assert strategy._state_dict_type == "sharded"
    assert strategy.kwargs["use_orig_params"] is True
    policy = strategy.kwargs["auto_wrap_policy"]
    assert policy._module_classes == {LlamaDecoderLayer}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    plain = instantiate(config(tmp_path, "strategy=fsdp").strategy)
    assert plain._activation_checkpointing_kwargs == {}  # checkpointing only when asked for


@pytest.mark.parametrize(("sharding", "copies"), [("FULL_SHARD", 1), ("SHARD_GRAD_OP", 1), ("HYBRID_SHARD", 2)])
def test_the_gradient_norm_counts_each_element_once_under_every_fsdp_sharding(sharding, copies, tmp_path):
    cfg = config(tmp_path, "strategy=fsdp", f"strategy.sharding_strategy={sharding}", "trainer.num_nodes=2")
    strategy = instantiate(cfg.strategy)
    strategy.num_nodes = cfg.trainer.num_nodes  # what Lightning sets from the Trainer
    assert gradient_copies(strategy) == copies  # hybrid: each node holds a full set of shards


def test_fsdp2_shards_over_every_device(tmp_path):
    cfg = config(tmp_path, "strategy=fsdp2", "strategy.reshard_after_forward=false")
    strategy = instantiate(cfg.strategy)
    assert isinstance(strategy, FSDP2Strategy)
    assert strategy.reshard_after_forward is False
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == ("auto", 1)


WRITER = """
import sys, torch
from huatuo.training.checkpointing import AtomicCheckpointIO
io = AtomicCheckpointIO()
io.save_checkpoint({"global_step": 1, "w": torch.zeros(10)}, sys.argv[1])
print("first", flush=True)
io.save_checkpoint({"global_step": 2, "w": torch.ones(150_000_000)}, sys.argv[1])  # 600 MB: slow enough to kill
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    folder = tmp_path / "checkpoints"
    target = folder / "last.ckpt"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "first"
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".last.ckpt.partial") and p.stat().st_size > 0 for p in folder.iterdir()):
        assert writer.poll() is None, "the writer finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert torch.load(target, weights_only=True)["global_step"] == 1  # untouched by the interrupted write
    assert any(".partial" in p.name for p in folder.iterdir())  # the half-written file is left aside

    # A truncated newer checkpoint (a non-atomic writer, a full disk) is skipped by resume=auto.
    (folder / "step0000009.ckpt").write_bytes(target.read_bytes()[:100])
    path, step = find_checkpoint("auto", tmp_path)
    assert (path, step) == (str(target), 1)


def test_resume_auto_takes_the_checkpoint_with_the_highest_step_not_the_newest_file(tmp_path):
    io = AtomicCheckpointIO()
    folder = tmp_path / "checkpoints"
    io.save_checkpoint({"global_step": 8}, folder / "step0000008.ckpt")
    io.save_checkpoint({"global_step": 4}, folder / "step0000004.ckpt")  # written last, but older training state
    assert find_checkpoint("auto", tmp_path) == (str(folder / "step0000008.ckpt"), 8)
    assert find_checkpoint(None, tmp_path) == (None, 0)
    assert find_checkpoint("auto", tmp_path / "elsewhere") == (None, 0)


def test_validator_names_every_problem_with_its_key_and_fix(tmp_path):
    cfg = config(
        tmp_path,
        "strategy=fsdp",
        "strategy.activation_checkpointing=true",
        "backbone.model.gradient_checkpointing=true",
        "finetune=qlora",
        "finetune.r=0",
        "trainer.accelerator=cpu",
        "trainer.precision=16-mixed",
        "data.micro_batch_size=3",
        "global_batch_size=16",
        "checkpoint.every_n_train_steps=0",
        "export.dtype=float8",
    )
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)
    message = str(err.value)
    for expected in (
        "strategy=fsdp (FSDP1) needs CUDA GPUs",
        "trainer.precision=16-mixed needs a GPU",
        "finetune=qlora with strategy=fsdp",
        "finetune.r=0",
        "recompute every layer twice",
        "global_batch_size=16 is not a multiple of data.micro_batch_size x trainer.devices x trainer.num_nodes = "
        "3 x 1 x 1 = 3",
        "checkpoint.every_n_train_steps=0",
        "export.dtype='float8'",
    ):
        assert expected in message
    assert message.count("\n  - ") == 8


def test_qlora_with_zero3_and_fsdp2_is_refused_and_zero2_is_not(tmp_path):
    def problems(strategy: str) -> str:
        try:
            check_train_config(config(tmp_path, f"strategy={strategy}", "finetune=qlora", "trainer.accelerator=cpu"))
        except ConfigError as err:
            return str(err)
        return ""

    assert "finetune=qlora with strategy=deepspeed_zero3" in problems("deepspeed_zero3")
    assert "finetune=qlora with strategy=fsdp2" in problems("fsdp2")
    assert "qlora" not in problems("deepspeed_zero2")  # refused only for needing a GPU
    assert problems("ddp") == ""


def test_global_batch_size_sets_the_accumulation(tmp_path):
    cfg = config(tmp_path, "data.micro_batch_size=2", "trainer.accelerator=cpu", "global_batch_size=8")
    check_train_config(cfg)
    assert derived_accumulation(cfg) == 4
    clash = config(
        tmp_path,
        "data.micro_batch_size=2",
        "trainer.accelerator=cpu",
        "global_batch_size=8",
        "trainer.accumulate_grad_batches=2",
    )
    with pytest.raises(ConfigError, match="needs trainer.accumulate_grad_batches=4 but it is 2"):
        check_train_config(clash)
