"""Real local servers for tests: a tiny checkpoint served by ``transformers serve`` on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import torch

from huatuo.server import free_port, transformers_serve

__all__ = ["free_port", "make_tiny_checkpoint", "transformers_serve"]


def make_tiny_checkpoint(out_dir: Path, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """A random-init Llama checkpoint with the demo tokenizer and the HuatuoGPT-II chat template (an export)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import huatuo
    from huatuo.backbone import load_tokenizer
    from huatuo.export import export_model

    tokenizer = load_tokenizer(huatuo.asset_path("tiny_tokenizer"))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    export_model(model, tokenizer, out_dir, generation={"do_sample": False, "max_new_tokens": 16})
    return out_dir
