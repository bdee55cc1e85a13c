"""Where tokens are, for attention: ALiBi slopes and biases (13B), rotary tables (7B), packed-document ids.

The ALiBi bias is built from token positions, not from slots of the batch, whenever a 2D attention mask says which
slots are padding: padding between a prompt and its continuation (right-padded prompts whose candidates are appended
after the padding, as log-likelihood scoring does) then adds no distance, so a row's scores do not depend on what
else shares its batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.masking_utils import find_packed_sequence_indices


def alibi_slopes(num_heads: int) -> list[float]:
    """Per-head ALiBi slopes (Press et al., 2022).

    For ``n`` a power of two: the geometric sequence ``2^(-8/n), 2^(-16/n), ...``. Otherwise the ``m`` slopes of the
    largest power of two ``m < n``, then every other slope of the ``2m`` sequence, first ``n - m`` of them.
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


def alibi_bias(
    num_heads: int,
    q_len: int,
    kv_len: int,
    dtype: torch.dtype,
    device: torch.device,
    attention_mask: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Additive attention bias of shape ``(batch or 1, heads, q_len, kv_len)``: ALiBi where allowed, ``min`` elsewhere.

    Queries are the last ``q_len`` of the ``kv_len`` slots (earlier ones come from the cache). A key is allowed when
    its slot is not after the query's, it belongs to the query's document (``document_ids``, packed rows), and it is
    not padding. A 2D ``attention_mask`` is read as the original 13B code reads it: 0 is padding, and without a past,
    tokens only see tokens with the same mask value (so segment ids 1, 2, 3 ... isolate segments too); a 4D mask is
    used as is.

    The distance is measured between token positions: with a 2D mask a token's position is the number of real
    tokens before it, for keys and queries alike, so padding anywhere in a row (between a prompt and a continuation
    appended after it, as log-likelihood scoring does) adds no distance. Without a 2D mask positions are slots.
    """
    past = kv_len - q_len
    slots = torch.arange(kv_len, device=device)
    allowed = (slots[None, :] <= slots[past:, None])[None, None]  # (1, 1, q, k): causal by slot
    if document_ids is not None:
        allowed = allowed & (document_ids[:, None, :, None] == document_ids[:, None, None, :])
    distance = (slots[None, :] - slots[past:, None])[None]  # (1, q, k)
    if attention_mask is not None and attention_mask.ndim == 4:
        allowed = allowed & (attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0)
    elif attention_mask is not None:
        if attention_mask.shape[-1] != kv_len:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, expected {kv_len}")
        keys = attention_mask.to(device)
        real = keys != 0
        allowed = allowed & real[:, None, None, :]
        if past == 0:
            allowed = allowed & (keys[:, None, :, None] == keys[:, None, None, :])
        # For contiguous rows (unpadded, left-padded) position differences equal slot differences: the original's bias.
        positions = real.long().cumsum(-1) - 1
        distance = positions[:, None, :] - positions[:, past:, None]  # (batch, q, k)
    slopes = torch.tensor(alibi_slopes(num_heads), dtype=torch.float32, device=device)[:, None, None]
    shape = torch.broadcast_shapes((distance.shape[0], num_heads, q_len, kv_len), allowed.shape)
    bias = torch.empty(shape, dtype=dtype, device=device)  # (batch or 1, heads, q, k): the one full-size tensor
    if distance.shape[0] == 1:
        bias.copy_((slopes * distance[0].to(torch.float32)).to(dtype))
    else:  # a row's float32 products at a time: a 13B prefill would otherwise hold the whole bias in float32 too
        for row in range(shape[0]):
            bias[row] = slopes * distance[row].to(torch.float32)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)


def compute_dtype(embeds: torch.Tensor) -> torch.dtype:
    device_type = embeds.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else embeds.dtype


def document_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Document index of every token of packed rows (a new document wherever positions do not go up by one).

    None when every row holds a single document: plain causal attention then suffices.
    """
    return find_packed_sequence_indices(position_ids)


class BaichuanRotary(nn.Module):
    """cos/sin tables for the given position ids, in float32 (base ``rope_theta``, 10000 for Baichuan2-7B).

    No buffers: the frequencies are computed on the CPU at the first call, so a model built on the meta device
    (sharded loading) needs nothing re-initialised, and every device uses the same float32 frequencies.
    """

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = float(base)
        self._inv_freq: dict[torch.device, torch.Tensor] = {}  # per device: no host-to-device copy per step

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = position_ids.device
        if device not in self._inv_freq:
            exponents = torch.arange(0, self.head_dim, 2, device="cpu").float() / self.head_dim
            self._inv_freq[device] = (1.0 / (self.base**exponents)).to(device)
        freqs = position_ids[..., None].to(torch.float32) * self._inv_freq[device]
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (batch, heads, seq, head_dim) in float32 and return it in its own dtype."""
    x32 = x.to(torch.float32)
    cos, sin = cos[:, None], sin[:, None]
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)
