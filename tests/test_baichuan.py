"""The native Baichuan2 classes: original numerics, cache, packing isolation, Llama equivalence, checkpoint names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

from huatuo.data.packing import position_ids as packed_position_ids
from huatuo.models.baichuan.config import BaichuanConfig
from huatuo.models.baichuan.llama import to_llama
from huatuo.models.baichuan.modeling import BaichuanDecoderLayer, BaichuanForCausalLM
from huatuo.models.baichuan.positions import alibi_slopes
from tests.baichuan_reference import reference_logits
from tests.helpers import run_script

VOCAB = 101


def tiny(position_embedding: str, heads: int = 4, hidden: int = 32, layers: int = 2, seed: int = 0, **extra):
    """A random-init tiny Baichuan2 in eval mode."""
    torch.manual_seed(seed)
    config = BaichuanConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden + 8,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        position_embedding=position_embedding,
        model_max_length=128,
        **extra,
    )
    return BaichuanForCausalLM(config).eval()


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("heads", "expected"),
    [
        (8, [2.0**-k for k in range(1, 9)]),
        (12, [2.0**-k for k in range(1, 9)] + [2.0 ** -(k + 0.5) for k in range(0, 4)]),
        (40, [2.0 ** (-k / 4) for k in range(1, 33)] + [2.0 ** (-(2 * k + 1) / 8) for k in range(0, 8)]),
    ],
)
def test_alibi_slopes_follow_the_paper_rule(heads, expected):
    # powers of two: 2^(-8k/n); otherwise the closest lower power's slopes, then odd steps of twice that power
    assert alibi_slopes(heads) == pytest.approx(expected, rel=1e-12)
    assert len(alibi_slopes(heads)) == heads


@pytest.mark.parametrize(("position_embedding", "heads"), [("rope", 4), ("alibi", 4), ("alibi", 6), ("alibi", 12)])
def test_logits_match_the_original_computation_written_out(position_embedding, heads):
    model = tiny(position_embedding, heads=heads, hidden=48)
    tokens = ids(2, 40)
    with torch.no_grad():
        native = model(tokens, use_cache=False).logits
        reference = reference_logits(model.state_dict(), model.config, tokens)
    torch.testing.assert_close(native, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position_embedding", ["rope", "alibi"])
def test_cached_decoding_gives_the_logits_of_the_full_forward(position_embedding):
    model = tiny(position_embedding)
    tokens = ids(2, 24)
    with torch.no_grad():
        full = model(tokens, use_cache=False).logits
        out = model(tokens[:, :10], use_cache=True)
        pieces, cache = [out.logits], out.cache
        for t in range(10, 24):
            out = model(tokens[:, t : t + 1], cache=cache, use_cache=True)
            pieces.append(out.logits)
            cache = out.cache
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(
        model.generate(tokens[:, :6], use_cache=True, **greedy),
        model.generate(tokens[:, :6], use_cache=False, **greedy),
    )


@pytest.mark.parametrize("position_embedding", ["rope", "alibi"])
def test_left_padding_with_an_attention_mask_leaves_real_tokens_unchanged(position_embedding):
    model = tiny(position_embedding)
    tokens = ids(1, 12)
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), tokens], dim=1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 12, dtype=torch.long)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = model(tokens, use_cache=False).logits
        batched = model(padded, attention_mask=mask, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(batched[:, 5:], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("position_embedding", "heads"), [("rope", 4), ("alibi", 5), ("alibi", 8)])
def test_padding_inside_a_row_adds_no_distance(position_embedding, heads):
    # Log-likelihood scoring's layout: a right-padded prompt, then a continuation after the padding (from the cache).
    model = tiny(position_embedding, heads=heads, hidden=8 * heads)
    prompt, continuation, gap = ids(1, 9, seed=4), ids(1, 4, seed=5), 6
    padded = torch.cat([prompt, torch.zeros(1, gap, dtype=torch.long)], dim=1)
    prompt_mask = torch.cat([torch.ones(1, 9, dtype=torch.long), torch.zeros(1, gap, dtype=torch.long)], dim=1)
    mask = torch.cat([prompt_mask, torch.ones(1, 4, dtype=torch.long)], dim=1)
    positions = torch.arange(9, 13)[None]
    with torch.no_grad():
        alone = model(torch.cat([prompt, continuation], dim=1), use_cache=False).logits[:, 9:]
        cache = model(padded, use_cache=True).cache
        cached = model(continuation, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True).logits
        gapped = torch.cat([padded, continuation], dim=1)
        full_positions = torch.cat([torch.arange(9), torch.zeros(gap, dtype=torch.long), positions[0]])[None]
        one_pass = model(gapped, attention_mask=mask, position_ids=full_positions, use_cache=False).logits[:, -4:]
    torch.testing.assert_close(cached, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one_pass, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position_embedding", ["rope", "alibi"])
def test_batched_generation_with_left_padding_matches_each_prompt_alone(position_embedding):
    model = tiny(position_embedding)
    long, short = ids(1, 6, seed=2), ids(1, 3, seed=3)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    greedy = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    together = model.generate(batch, attention_mask=mask, **greedy)[:, 6:]
    torch.testing.assert_close(together[0], model.generate(long, **greedy)[0, 6:])
    torch.testing.assert_close(together[1], model.generate(short, **greedy)[0, 3:])


@pytest.mark.parametrize("position_embedding", ["rope", "alibi"])
def test_packed_rows_with_isolation_equal_the_documents_run_alone(position_embedding):
    model = tiny(position_embedding)
    lengths = [7, 1, 12, 5]
    row_len = 30  # 25 tokens of documents, then padding (which the packer counts as one more document)
    tokens = ids(1, row_len)
    positions = torch.from_numpy(packed_position_ids(lengths, row_len, isolate=True))[None]
    with torch.no_grad():
        packed = model(tokens, position_ids=positions, use_cache=False).logits
        start = 0
        for n in lengths:
            alone = model(tokens[:, start : start + n], use_cache=False).logits
            torch.testing.assert_close(packed[:, start : start + n], alone, rtol=1e-5, atol=1e-5)
            start += n
        # without isolation the same row lets documents see each other: the later documents' logits change
        shared = model(tokens, position_ids=torch.arange(row_len)[None], use_cache=False).logits
    assert not torch.allclose(shared[:, 8:20], packed[:, 8:20], atol=1e-4)


def test_alibi_segment_ids_in_the_attention_mask_isolate_like_the_original():
    # the original 13B code reads a 2D mask of segment ids (1, 1, 2, 2, 2, ...) as packed documents
    model = tiny("alibi")
    tokens = ids(1, 9)
    segments = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 2, 2]])
    with torch.no_grad():
        packed = model(tokens, attention_mask=segments, use_cache=False).logits
        second = model(tokens[:, 4:], use_cache=False).logits
    torch.testing.assert_close(packed[:, 4:], second, rtol=1e-5, atol=1e-5)


def test_rope_baichuan_split_into_llama_gives_the_same_logits():
    model = tiny("rope", heads=4, hidden=48)
    llama = to_llama(model).eval()
    assert isinstance(llama, LlamaForCausalLM)
    packed_weight = model.model.layers[0].self_attn.W_pack.weight
    torch.testing.assert_close(llama.model.layers[0].self_attn.k_proj.weight, packed_weight[48:96])
    norms = llama.lm_head.weight.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    tokens = ids(2, 30)
    with torch.no_grad():
        torch.testing.assert_close(llama(tokens).logits, model(tokens, use_cache=False).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="ALiBi"):
        to_llama(tiny("alibi"))


@pytest.mark.parametrize("position_embedding", ["rope", "alibi"])
def test_gradient_checkpointing_gives_the_same_gradients(position_embedding):
    tokens = ids(2, 16)
    grads = []
    for checkpointing in (False, True):
        model = tiny(position_embedding).train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        out = model(tokens, labels=tokens, use_cache=False)
        out.loss.backward()
        grads.append(model.model.layers[0].self_attn.W_pack.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_norm_head_normalises_rows_in_training_and_inference():
    model = tiny("rope")
    hidden = torch.randn(1, 3, 32)
    expected = hidden @ torch.nn.functional.normalize(model.lm_head.weight.detach()).T
    with torch.no_grad():
        torch.testing.assert_close(model.lm_head(hidden), expected)
        model.lm_head.weight.mul_(3.0)  # a changed weight is normalised afresh, never served from a stale cache
        torch.testing.assert_close(model.lm_head(hidden), expected, rtol=1e-5, atol=1e-6)
    model.train()
    torch.testing.assert_close(model.lm_head(hidden), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("position_embedding", ["rope", "alibi"])
def test_checkpoints_save_and_load_the_original_key_names(position_embedding, tmp_path):
    model = tiny(position_embedding)
    model.save_pretrained(tmp_path)
    names = set(load_file(tmp_path / "model.safetensors"))
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(2):
        p = f"model.layers.{i}."
        expected |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        expected |= {p + f"self_attn.{n}.weight" for n in ("W_pack", "o_proj")}
        expected |= {p + f"mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")}
    assert names == expected
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "baichuan" and saved["position_embedding"] == position_embedding
    assert "auto_map" not in saved  # the original .py files are not there; nothing may try to fetch them
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is BaichuanForCausalLM
    tokens = ids(1, 10)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, model(tokens).logits)


def test_released_configs_pick_rope_for_7b_and_alibi_for_13b():
    seven = {"model_type": "baichuan", "max_position_embeddings": 4096, "model_max_length": 4096, "z_loss_weight": 0}
    thirteen = {"model_type": "baichuan", "model_max_length": 4096, "gradient_checkpointing": False}
    assert AutoConfig.for_model(**seven).position_embedding == "rope"
    assert AutoConfig.for_model(**thirteen).position_embedding == "alibi"
    with pytest.raises(Exception, match="position_embedding"):
        BaichuanConfig(position_embedding="sinusoidal")


def test_attention_kernels_that_cannot_add_a_bias_are_refused():
    config = BaichuanConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64)
    with pytest.raises(ValueError, match="flex"):
        AutoModelForCausalLM.from_config(config, attn_implementation="flex_attention")


def test_the_decoder_layer_is_the_wrap_unit():
    model = tiny("alibi")
    assert sum(isinstance(m, BaichuanDecoderLayer) for m in model.modules()) == 2
    assert set(model._no_split_modules) == {"BaichuanDecoderLayer"}


@pytest.mark.parametrize("position_embedding", ["rope", "alibi"])
def test_bf16_drift_from_fp32_is_small(position_embedding):
    """bf16 against fp32 on the same weights: reported (docs/backbones.md), bounded loosely, never asserted tight."""
    model = tiny(position_embedding, heads=8, hidden=64, layers=4)
    tokens = ids(2, 64)
    with torch.no_grad():
        reference = model(tokens, use_cache=False).logits
        half = model.to(torch.bfloat16)(tokens, use_cache=False).logits.float()
    drift = (half - reference).abs()
    agreement = float((half.argmax(-1) == reference.argmax(-1)).float().mean())
    print(
        f"\nbf16 vs fp32 ({position_embedding}): max |dlogit| {drift.max():.4f}, mean {drift.mean():.5f}, "
        f"logit scale {reference.abs().mean():.4f}, argmax agreement {agreement:.3f}"
    )
    assert np.isfinite(float(drift.max()))
    assert agreement > 0.8


def test_import_huatuo_stays_light_and_registers_when_transformers_loads():
    # transformers' own modules import its Auto classes half-way through loading: registration must wait for them
    code = (
        "import sys, huatuo\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "from transformers import LlamaForCausalLM\n"
        "from transformers import AutoConfig, AutoModelForCausalLM\n"
        "config = AutoConfig.for_model('baichuan', hidden_size=32, num_attention_heads=4, num_hidden_layers=1,"
        " intermediate_size=64, vocab_size=50)\n"
        "print(type(AutoModelForCausalLM.from_config(config)).__module__)\n"
    )
    result = run_script(["-c", code])
    assert result.stdout.strip() == "huatuo.models.baichuan.modeling"
