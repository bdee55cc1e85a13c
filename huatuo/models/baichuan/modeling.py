"""The Baichuan2 layers and models, with the numerics of the original code (described in ``huatuo.models.baichuan``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import capture_outputs

from huatuo.models.baichuan.config import BaichuanConfig
from huatuo.models.baichuan.positions import BaichuanRotary, alibi_bias, apply_rotary, compute_dtype, document_ids


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
        dtype = compute_dtype(embeds)
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
