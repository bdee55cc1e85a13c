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
  numbers up to ``slope * 4095`` that bf16 rounds coarsely; the relative form keeps nearby keys exact.
- NormHead: each vocabulary row of ``lm_head.weight`` is L2-normalised before the matmul, in training and inference
  (the stored weight stays as loaded; the original overwrote it with its normalised copy on the first eval call).

Packing isolation uses the data pipeline's interface: when every packed document restarts ``position_ids`` at 0 (and
there is no ``attention_mask`` and no past), each document attends only to itself. RoPE gets transformers' packed
causal mask; ALiBi gets a per-document bias (distances within a document, everything across documents blocked).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.configuration_utils import PreTrainedConfig
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, find_packed_sequence_indices
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import capture_outputs

PositionEmbedding = Literal["rope", "alibi"]


@strict
class BaichuanConfig(PreTrainedConfig):
    """Configuration of a Baichuan2 model; reads the released ``config.json`` files unchanged.

    ``position_embedding`` is huatuo's own key. The released files do not say which scheme they use: the 7B config
    has ``max_position_embeddings`` and uses RoPE, the 13B config has only ``model_max_length`` and uses ALiBi, so
    when the key is absent it is inferred from that difference.
    """

    model_type = "baichuan"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 125696
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    hidden_act: str = "silu"
    max_position_embeddings: int | None = None
    model_max_length: int = 4096
    position_embedding: str | None = None
    rope_theta: float | int = 10000.0
    initializer_range: float | int = 0.02
    rms_norm_eps: float | int = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    z_loss_weight: float | int = 0.0

    def __post_init__(self, **kwargs) -> None:
        if self.position_embedding is None:
            self.position_embedding = "rope" if self.max_position_embeddings is not None else "alibi"
        if self.position_embedding == "rope" and self.max_position_embeddings is None:
            self.max_position_embeddings = self.model_max_length
        # Saved folders point at the original .py files, which are not there after save_pretrained and need the
        # remote code this class replaces: drop the pointer so nothing tries to fetch it.
        kwargs.pop("auto_map", None)
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """Reject configs the model cannot be built from (called by ``@strict``)."""
        if self.position_embedding not in ("rope", "alibi"):
            raise ValueError(f"position_embedding={self.position_embedding!r}: use 'rope' (7B) or 'alibi' (13B)")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:
        """Baichuan2 has no grouped-query attention (read by transformers' cache and by ``huatuo.plan``)."""
        return self.num_attention_heads


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

    Queries are the last ``q_len`` of the ``kv_len`` positions (earlier ones come from the cache). A key is allowed
    when it is not in the future, belongs to the query's document (``document_ids``, packed rows), and is not padding.
    A 2D ``attention_mask`` is read as the original 13B code reads it: 0 is padding, and without a past, tokens only
    see tokens with the same mask value (so segment ids 1, 2, 3 ... isolate segments too); a 4D mask is used as is.
    """
    past = kv_len - q_len
    distance = torch.arange(kv_len, device=device)[None, :] - torch.arange(past, kv_len, device=device)[:, None]
    allowed = (distance <= 0)[None, None]  # (1, 1, q, k)
    if document_ids is not None:
        allowed = allowed & (document_ids[:, None, :, None] == document_ids[:, None, None, :])
    if attention_mask is not None and attention_mask.ndim == 4:
        allowed = allowed & (attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0)
    elif attention_mask is not None:
        if attention_mask.shape[-1] != kv_len:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, expected {kv_len}")
        keys = attention_mask.to(device)
        allowed = allowed & (keys != 0)[:, None, None, :]
        if past == 0:
            allowed = allowed & (keys[:, None, :, None] == keys[:, None, None, :])
    slopes = torch.tensor(alibi_slopes(num_heads), dtype=torch.float32, device=device)
    bias = (slopes[:, None, None] * distance.to(torch.float32)).to(dtype)[None]  # (1, heads, q, k)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


def _compute_dtype(embeds: torch.Tensor) -> torch.dtype:
    device_type = embeds.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else embeds.dtype


def document_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Document index of every token of packed rows (a new document wherever positions do not go up by one).

    None when every row holds a single document: plain causal attention then suffices.
    """
    return find_packed_sequence_indices(position_ids)


class BaichuanRMSNorm(nn.Module):
    """RMSNorm with the variance in float32 and the output in the weight's dtype (as the original)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


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


def eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out (``attn_implementation="eager"``); returns the weights too, for ``output_attentions``."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class BaichuanMLP(nn.Module):
    """SwiGLU: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, config: BaichuanConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class BaichuanAttention(nn.Module):
    """Multi-head attention with the fused ``W_pack`` projection (q, k, v in that order) and ``o_proj``."""

    def __init__(self, config: BaichuanConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.num_key_value_groups = 1  # read by transformers' attention functions
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.W_pack = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        query, key, value = (
            part.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
            for part in self.W_pack(hidden_states).chunk(3, dim=-1)
        )
        if position_embeddings is not None:
            cos, sin = position_embeddings
            query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention)
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(output.reshape(batch, length, -1).contiguous()), weights


class BaichuanDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: attention and MLP, each with a residual (the FSDP wrap and checkpointing unit)."""

    def __init__(self, config: BaichuanConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = BaichuanAttention(config, layer_idx)
        self.mlp = BaichuanMLP(config)
        self.input_layernorm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        **kwargs,
    ) -> torch.Tensor:
        attended, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            cache=cache,
            **kwargs,
        )
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class NormHead(nn.Module):
    """Output head whose vocabulary rows are L2-normalised before the matmul (Baichuan2's "NormHead").

    Without gradients (generation) the normalised copy is cached until the weight changes, so decoding does not
    re-normalise a vocabulary-sized matrix per token.
    """

    def __init__(self, hidden_size: int, vocab_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size))
        self._cached: torch.Tensor | None = None
        self._cache_key: tuple | None = None

    def normalized_weight(self) -> torch.Tensor:
        """``lm_head.weight`` with every row scaled to unit L2 norm."""
        if self.training or torch.is_grad_enabled():
            self._cached = self._cache_key = None
            return F.normalize(self.weight)
        key = (self.weight.data_ptr(), self.weight._version, self.weight.dtype, self.weight.device)
        if key != self._cache_key:
            self._cached, self._cache_key = F.normalize(self.weight), key
        return self._cached

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden_states, self.normalized_weight())


class BaichuanPreTrainedModel(PreTrainedModel):
    """Shared settings: config class, weight init, attention backends, checkpointing support."""

    config_class = BaichuanConfig
    config: BaichuanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BaichuanDecoderLayer"]
    # Released checkpoints may carry buffers older remote code saved; none of them are parameters here.
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq", r"future_mask", r"alibi_mask"]
    _supports_sdpa = True
    _supports_flash_attn = False  # flash kernels cannot add the ALiBi bias; RoPE on flash is untested here
    _supports_flex_attn = False
    _can_record_outputs = {"hidden_states": BaichuanDecoderLayer, "attentions": BaichuanAttention}

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, NormHead):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)


class BaichuanModel(BaichuanPreTrainedModel):
    """Embeddings, decoder layers and the final norm (``model.*`` in checkpoints)."""

    def __init__(self, config: BaichuanConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(BaichuanDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        rope = config.position_embedding == "rope"
        self.rotary = BaichuanRotary(config.head_dim, config.rope_theta) if rope else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _attention_mask(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Cache | None,
        past: int,
    ) -> torch.Tensor | None:
        # Packed documents are recognised from position resets only without a 2D mask and without a past, the same
        # rule as transformers' masks. A fresh, still empty cache is ignored so that `use_cache=True` (the config
        # default) does not switch isolation off.
        mask_cache = cache if cache is not None and (past > 0 or getattr(cache, "is_compileable", False)) else None
        # Masks and biases are built once per forward in the dtype attention runs in: under autocast the activations
        # are float32 but SDPA runs in half precision and would otherwise cast (and keep for backward) a copy per layer.
        dtype = _compute_dtype(embeds)
        if self.config.position_embedding == "rope":
            mask = create_causal_mask(
                config=self.config,
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                cache=mask_cache,
                position_ids=position_ids,
            )
            if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
                # SDPA turns a boolean mask into an additive one in every layer; doing it once saves that per layer.
                mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
                    ~mask, torch.finfo(dtype).min
                )
            return mask
        documents = None
        if attention_mask is None and mask_cache is None:
            documents = document_ids(position_ids.expand(embeds.shape[0], -1))
        length = embeds.shape[1]
        return alibi_bias(
            self.config.num_attention_heads,
            length,
            past + length,
            dtype,
            embeds.device,
            attention_mask=attention_mask,
            document_ids=documents,
        )

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            use_cache = False  # recomputed layers would append to the cache twice
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None] + past
        mask = self._attention_mask(inputs_embeds, attention_mask, position_ids, cache, past)
        rotary = self.rotary(position_ids) if self.rotary is not None else None

        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=mask,
                position_embeddings=rotary,
                cache=cache if use_cache else None,
                use_cache=use_cache,
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache if use_cache else None)


class BaichuanForCausalLM(BaichuanPreTrainedModel, GenerationMixin):
    """Baichuan2 with its NormHead: the class the released ``config.json`` files name."""

    def __init__(self, config: BaichuanConfig) -> None:
        super().__init__(config)
        self.model = BaichuanModel(config)
        self.lm_head = NormHead(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> NormHead:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: NormHead) -> None:
        self.lm_head = new_embeddings

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            if self.config.z_loss_weight:  # the original's z-loss: mean squared max logit of the shifted positions
                loss = loss + self.config.z_loss_weight * logits[:, :-1].float().max(-1).values.pow(2).mean()
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def to_llama(model: BaichuanForCausalLM):
    """A RoPE Baichuan2 as a plain ``LlamaForCausalLM``: ``W_pack`` split into q/k/v, the head pre-normalised.

    The result loads in any Llama-capable stack without huatuo; logits agree with the native model up to the
    rotation's rounding (Llama rotates in the activation dtype). ALiBi (13B) has no Llama equivalent.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = model.config
    if config.position_embedding != "rope":
        raise ValueError("only RoPE Baichuan2 (7B) maps onto Llama; ALiBi (13B) needs huatuo's BaichuanForCausalLM")
    llama_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=float(config.rms_norm_eps),
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        tie_word_embeddings=False,
        initializer_range=float(config.initializer_range),
    )
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("self_attn.W_pack.weight"):
            prefix = name[: -len("W_pack.weight")]
            for part, weight in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
                state[f"{prefix}{part}.weight"] = weight.clone()
        elif name == "lm_head.weight":
            state[name] = F.normalize(tensor.detach()).clone()
        else:
            state[name] = tensor.detach().clone()
    with init.no_init_weights():  # every parameter is overwritten below
        llama = LlamaForCausalLM(llama_config)
    llama.load_state_dict(state, strict=True)
    return llama.to(dtype=model.dtype)


def register() -> None:
    """Register the classes with transformers' Auto classes under ``model_type`` "baichuan" (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    AutoConfig.register("baichuan", BaichuanConfig, exist_ok=True)
    AutoModel.register(BaichuanConfig, BaichuanModel, exist_ok=True)
    AutoModelForCausalLM.register(BaichuanConfig, BaichuanForCausalLM, exist_ok=True)


register()
