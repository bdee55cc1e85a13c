"""Baichuan2 as native transformers classes: 7B (RoPE) and 13B (ALiBi), no remote code, original checkpoint names.

The released Baichuan2 and HuatuoGPT2-7B/13B folders carry their own ``modeling_baichuan.py``, which breaks on every
transformers release since 4.34. These classes load those folders as they are (``config.json`` with ``model_type``
"baichuan", weights named ``model.layers.N.self_attn.W_pack`` ...) and save the same names back. Importing ``huatuo``
registers them with ``AutoConfig`` / ``AutoModelForCausalLM`` (see ``huatuo/__init__.py``).

Numerics follow the original code, so logits match it within float32 rounding:

- RMSNorm: the variance in float32, the normalised activations cast back to a half-precision weight's dtype.
- RoPE (7B): frequencies, cos, sin and the rotation itself in float32, cast back afterwards (transformers' Llama
  rotates in the activation dtype, which drifts slightly from the original in bf16).
- ALiBi (13B): per-head slopes by the ALiBi paper's rule (head counts that are not a power of two included); the bias
  is ``slope * (key index - query index)`` built in float32 and cast once to the activation dtype, as the original's
  training path does. Its inference path adds ``slope * key index`` instead, equal after the softmax but made of
  numbers up to ``slope * 4095`` that bf16 rounds coarsely; the relative form keeps nearby keys exact. With a 2D
  attention mask the indices are token positions (real tokens before it), not slots, so padding inside a row adds no
  distance and a row's logits do not depend on its batch; for unpadded and left-padded rows the two are the same.
- NormHead: each vocabulary row of ``lm_head.weight`` is L2-normalised before the matmul, in training and inference
  (the stored weight stays as loaded; the original overwrote it with its normalised copy on the first eval call).

Packing isolation uses the data pipeline's interface: when every packed document restarts ``position_ids`` at 0 (and
there is no ``attention_mask`` and no past), each document attends only to itself. RoPE gets transformers' packed
causal mask; ALiBi gets a per-document bias (distances within a document, everything across documents blocked).
"""

from __future__ import annotations

from huatuo.models.baichuan.config import BaichuanConfig
from huatuo.models.baichuan.modeling import (
    BaichuanDecoderLayer,
    BaichuanForCausalLM,
    BaichuanModel,
    BaichuanPreTrainedModel,
    NormHead,
)
from huatuo.models.baichuan.positions import alibi_bias, alibi_slopes

__all__ = [
    "BaichuanConfig",
    "BaichuanDecoderLayer",
    "BaichuanForCausalLM",
    "BaichuanModel",
    "BaichuanPreTrainedModel",
    "NormHead",
    "alibi_bias",
    "alibi_slopes",
    "register",
]


def register() -> None:
    """Register the classes with transformers' Auto classes under ``model_type`` "baichuan" (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    AutoConfig.register("baichuan", BaichuanConfig, exist_ok=True)
    AutoModel.register(BaichuanConfig, BaichuanModel, exist_ok=True)
    AutoModelForCausalLM.register(BaichuanConfig, BaichuanForCausalLM, exist_ok=True)


register()
