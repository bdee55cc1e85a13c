"""Baichuan2's forward pass written out in plain torch, the way baichuan-inc's modeling code computes it at inference.

Independent of ``huatuo.models.baichuan`` (no shared code), it differs from it on purpose where the original does: a
cos/sin table indexed by position, an additive float causal mask, and for ALiBi the original's inference form of the
bias, ``slope * key index`` (huatuo adds ``slope * (key index - query index)``, equal after the softmax), followed by a
clamp at the dtype's minimum and a softmax in the activation dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def slopes(n: int) -> list[float]:
    """ALiBi slopes from the closed form: ``2^(-8k/n)``; for non-powers of two, odd steps of the next power."""
    if (n & (n - 1)) == 0:
        return [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]
    m = 1 << (n.bit_length() - 1)
    return [2.0 ** (-8.0 * k / m) for k in range(1, m + 1)] + [2.0 ** (-8.0 * k / (2 * m)) for k in range(1, 2 * m, 2)][
        : n - m
    ]


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return weight * (x.to(weight.dtype) if weight.dtype in (torch.float16, torch.bfloat16) else x)


def reference_logits(state: dict[str, torch.Tensor], config, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of a Baichuan2 checkpoint (original key names) for ``input_ids`` of shape (batch, length)."""
    heads, hidden = config.num_attention_heads, config.hidden_size
    head_dim = hidden // heads
    batch, length = input_ids.shape
    x = state["model.embed_tokens.weight"][input_ids]
    dtype = x.dtype
    if config.position_embedding == "rope":
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(config.max_position_embeddings).float(), inv_freq)
        table = torch.cat((angles, angles), dim=-1)
        cos, sin = table.cos()[:length], table.sin()[:length]
        mask = torch.full((length, length), torch.finfo(dtype).min).triu(1).to(dtype)
    else:
        key_bias = torch.tensor(slopes(heads))[:, None, None] * torch.arange(length).float()[None, None, :]
        mask = (torch.full((length, length), float("-inf")).triu(1)[None] + key_bias).to(dtype)

    def rotate(t: torch.Tensor) -> torch.Tensor:
        t32 = t.float()
        half = torch.cat((-t32[..., head_dim // 2 :], t32[..., : head_dim // 2]), dim=-1)
        return (t32 * cos + half * sin).to(t.dtype)

    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        h = _rms(x, state[p + "input_layernorm.weight"], config.rms_norm_eps)
        qkv = h @ state[p + "self_attn.W_pack.weight"].T
        q, k, v = (
            qkv[..., j * hidden : (j + 1) * hidden].view(batch, length, heads, head_dim).transpose(1, 2)
            for j in range(3)
        )
        if config.position_embedding == "rope":
            q, k = rotate(q), rotate(k)
        scores = q @ k.transpose(2, 3) / math.sqrt(head_dim) + mask
        scores = torch.max(scores, torch.tensor(torch.finfo(dtype).min))
        attended = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, length, hidden)
        x = x + attended @ state[p + "self_attn.o_proj.weight"].T
        h = _rms(x, state[p + "post_attention_layernorm.weight"], config.rms_norm_eps)
        gate = F.silu(h @ state[p + "mlp.gate_proj.weight"].T) * (h @ state[p + "mlp.up_proj.weight"].T)
        x = x + gate @ state[p + "mlp.down_proj.weight"].T
    x = _rms(x, state["model.norm.weight"], config.rms_norm_eps)
    return x @ F.normalize(state["lm_head.weight"]).T
