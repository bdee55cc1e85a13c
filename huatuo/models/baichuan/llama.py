"""A RoPE Baichuan2 (7B) as a plain ``LlamaForCausalLM``, for stacks that know Llama but not Baichuan2."""

from __future__ import annotations

import torch.nn.functional as F
from transformers import initialization as init

from huatuo.models.baichuan.modeling import BaichuanForCausalLM


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
