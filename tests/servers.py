"""Real local servers for tests: a tiny checkpoint served by ``transformers serve`` on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import torch

from huatuo.inference.server import free_port, transformers_serve

__all__ = ["free_port", "make_tiny_checkpoint", "transformers_serve"]

GREEDY_16 = {"do_sample": False, "max_new_tokens": 16}  # short, repeatable replies


def make_tiny_checkpoint(
    out_dir: Path,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    positions: int = 1024,
    generation: dict | None = GREEDY_16,
) -> Path:
    """A random-init Llama checkpoint with the demo tokenizer and the HuatuoGPT-II chat template (an export).

    ``generation``: the export's generation settings (default greedy, 16 new tokens; None: the paper's).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    import huatuo
    from huatuo.models.loading import load_tokenizer
    from huatuo.training.export import export_model

    tokenizer = load_tokenizer(huatuo.asset_path("tiny_tokenizer"))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    export_model(model, tokenizer, out_dir, generation=None if generation is None else dict(generation))
    return out_dir
