"""The export folder: a model that plain ``transformers`` (and any server built on it) loads without remote code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel

from huatuo.logs import get_logger
from huatuo.template import CHAT_TEMPLATE

log = get_logger(__name__)

# The paper's chat settings (DESIGN.md); the 34B release uses top_k 5, top_p 0.85 (conf/backbone/yi_34b.yaml).
PAPER_GENERATION = {
    "do_sample": True,
    "temperature": 0.3,
    "top_p": 0.7,
    "repetition_penalty": 1.1,
    "max_new_tokens": 1024,
}


def export_model(
    model: PreTrainedModel,
    tokenizer,
    out_dir: str | Path,
    generation: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    dtype: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write safetensors weights, tokenizer files with the HuatuoGPT-II chat template, and a generation config.

    ``state_dict`` overrides the model's own tensors (a consolidated FSDP/DeepSpeed state dict); ``dtype``
    casts floating tensors on the way out (``bfloat16`` halves the folder).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        from huatuo.backbone import resolve_dtype

        target = resolve_dtype(dtype)
        source = state_dict if state_dict is not None else model.state_dict()
        state_dict = {k: v.to(target) if v.is_floating_point() else v for k, v in source.items()}
        model.config.dtype = target
    model.config.use_cache = True  # training turns the cache off; generation wants it on
    model.save_pretrained(out, state_dict=state_dict)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    settings = dict(PAPER_GENERATION if generation is None else generation)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **settings,
    ).save_pretrained(out)
    if metadata:
        (out / "huatuo.json").write_text(json.dumps(metadata, indent=1, ensure_ascii=False, default=str))
    log.info("exported model to %s", out)
    return out
