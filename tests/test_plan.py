"""``huatuo.training.plan``: the activation estimate against measured CPU peaks, sharding arithmetic, the CLI."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from huatuo.core.errors import HuatuoError
from huatuo.data.packing import position_ids
from huatuo.training.memory import GIB, Setup, activation_parts, measure_cpu_peak
from huatuo.training.module import token_statistics
from huatuo.training.plan import architecture, make_plan, plan_from_config, render
from tests.helpers import compose_config

BATCH, SEQ = 2, 512


def tiny_config(model_type: str, **extra):
    """The demo backbone's dimensions (conf/backbone/tiny.yaml), as Llama or as Baichuan2."""
    settings = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4)
    if model_type == "llama":
        extra = dict(num_key_value_heads=2, max_position_embeddings=512) | extra
    return AutoConfig.for_model(model_type, tie_word_embeddings=False, **settings, **extra)


def measured_peak(config, precision: str, checkpointing: bool, packed: bool) -> int:
    """Peak CPU memory of one training step of a random-init model (the step's loss is the trainer's)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    ids = torch.randint(0, config.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    lengths = [100, 200, 150]  # and 62 tokens of padding, which count as one more document
    positions = position_ids(lengths, SEQ, isolate=True) if packed else position_ids([SEQ], SEQ, isolate=False)
    positions = torch.from_numpy(positions)[None].expand(BATCH, -1)
    sources = torch.zeros_like(ids)

    def loss() -> torch.Tensor:  # like CausalLMModule.training_step: logits are gone when backward runs
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
            return token_statistics(logits, ids, sources, 1)["loss_sum"] / ids.numel()

    loss().backward()  # gradients exist before the measured step, as in every step after the first
    return measure_cpu_peak(lambda: loss().backward())


@pytest.mark.parametrize(
    ("model_type", "extra", "precision", "checkpointing", "packed"),
    [
        ("llama", {}, "32-true", False, False),  # the demo backbone as configured
        pytest.param("llama", {}, "32-true", True, True, marks=pytest.mark.slow),
        pytest.param("llama", {}, "bf16-mixed", False, True, marks=pytest.mark.slow),
        pytest.param("baichuan", {"position_embedding": "rope"}, "32-true", False, True, marks=pytest.mark.slow),
        ("baichuan", {"position_embedding": "alibi"}, "bf16-mixed", False, True),
        ("baichuan", {"position_embedding": "alibi"}, "32-true", True, True),
    ],
)
def test_activation_estimate_is_within_20_percent_of_the_measured_cpu_peak(
    model_type, extra, precision, checkpointing, packed
):
    config = tiny_config(model_type, **extra)
    setup = Setup(
        world=1,
        per_node=1,
        strategy="single",
        precision=precision,
        checkpointing=checkpointing,
        packed=packed,
        micro_batch=BATCH,
        seq_len=SEQ,
    )
    estimate = sum(activation_parts(architecture(config), setup, BATCH).values())
    measured = measured_peak(config, precision, checkpointing, packed)
    print(
        f"\n{model_type} {extra} {precision} ckpt={checkpointing}: estimate {estimate / 2**20:.1f} MiB, "
        f"measured {measured / 2**20:.1f} MiB ({estimate / measured:.3f})"
    )
    assert 0.8 <= estimate / measured <= 1.2


def test_published_backbones_have_their_known_sizes():
    sizes = {}
    for option in ("baichuan2_7b", "baichuan2_13b", "yi_34b"):
        cfg = compose_config("plan", [f"backbone={option}"])
        sizes[option] = plan_from_config(cfg).architecture
    assert round(sizes["baichuan2_7b"].params / 1e9, 2) == 7.51
    assert round(sizes["baichuan2_13b"].params / 1e9, 2) == 13.9
    assert round(sizes["yi_34b"].params / 1e9, 2) == 34.39
    assert sizes["baichuan2_13b"].family == "baichuan-alibi" and sizes["yi_34b"].kv_heads == 8
    assert sizes["baichuan2_7b"].layer_class == "huatuo.models.baichuan.modeling.BaichuanDecoderLayer"


def _plan(*overrides: str):
    base = ["backbone=baichuan2_7b", "trainer.devices=8", "trainer.precision=bf16-mixed", "data.micro_batch_size=2"]
    return plan_from_config(compose_config("plan", base + list(overrides)))


def test_sharding_divides_exactly_what_each_strategy_shards():
    params = _plan("strategy=ddp").architecture.params
    ddp = _plan("strategy=ddp").per_gpu
    assert ddp["weights"] == ddp["gradients"] == 4 * params and ddp["optimizer state"] == 8 * params
    zero = {stage: _plan(f"strategy=deepspeed_zero{stage}").per_gpu for stage in (1, 2, 3)}
    # DeepSpeed bf16: bf16 weights and gradients, float32 master + Adam moments (12 bytes) in the optimizer
    assert zero[1]["weights"] == 2 * params and zero[1]["gradients"] == 2 * params
    assert zero[1]["optimizer state"] == pytest.approx(12 * params / 8)
    assert zero[2]["gradients"] == pytest.approx(2 * params / 8) and zero[2]["weights"] == 2 * params
    assert zero[3]["weights"] == pytest.approx(2 * params / 8)
    fsdp = _plan("strategy=fsdp").per_gpu
    assert fsdp["weights"] == pytest.approx(4 * params / 8) and fsdp["optimizer state"] == pytest.approx(params)
    offload = _plan("strategy=deepspeed_zero3_offload")
    assert "optimizer state" not in offload.per_gpu and offload.cpu["optimizer state"] == pytest.approx(1.5 * params)


def test_checkpointing_and_micro_batch_move_activations_the_right_way():
    plain = _plan("strategy=deepspeed_zero3", "backbone.model.gradient_checkpointing=false")
    checkpointed = _plan("strategy=deepspeed_zero3")
    assert checkpointed.per_gpu["activations"] < plain.per_gpu["activations"] / 3
    bigger = _plan("strategy=deepspeed_zero3", "data.micro_batch_size=4")
    assert bigger.per_gpu["activations"] > checkpointed.per_gpu["activations"]
    assert checkpointed.max_micro_batch >= 2 > plain.max_micro_batch  # the paper's 4 x 4096 needs checkpointing


def test_the_largest_micro_batch_fits_and_one_more_does_not():
    plan = _plan("strategy=deepspeed_zero3", "plan.gpu_memory_gb=40")
    largest = plan.max_micro_batch
    assert largest >= 1
    fits = make_plan(plan.architecture, _with_batch(plan.setup, largest))
    over = make_plan(plan.architecture, _with_batch(plan.setup, largest + 1))
    assert fits.total <= 40 * GIB < over.total


def _with_batch(setup: Setup, batch: int) -> Setup:
    from dataclasses import replace

    return replace(setup, micro_batch=batch)


def test_the_cli_table_names_every_part_and_the_verdict(capsys):
    plan = _plan("strategy=deepspeed_zero3", "data.micro_batch_size=64")
    render(plan, name="baichuan2_7b")
    out = capsys.readouterr().out
    for text in ("7.51B parameters", "DeepSpeed ZeRO-3 over 8", "weights", "gradients", "optimizer state"):
        assert text in out
    assert "activations" in out and "does NOT fit" in out and "largest that fits" in out


def test_a_path_without_config_json_is_named_in_the_error():
    cfg = compose_config("plan", ["backbone=hf", "backbone.path=/no/such/model"])
    with pytest.raises(HuatuoError, match="/no/such/model: no such folder"):
        plan_from_config(cfg)
