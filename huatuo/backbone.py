"""Loading backbones and tokenizers: hub names, local folders, or a random-init config (the tiny demo model).

Released folders that ship remote code (Baichuan2, HuatuoGPT2, Yi) load without it: see ``huatuo.checkpoints``.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from huatuo import checkpoints
from huatuo.logs import get_logger

log = get_logger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """Map a config string such as ``bfloat16`` to a torch dtype (``None`` and ``auto`` stay ``None``)."""
    if name is None or name == "auto" or isinstance(name, torch.dtype):
        return name if isinstance(name, torch.dtype) else None
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)} or auto")
    return DTYPES[name]


def import_class(dotted: str | None) -> type:
    """Import ``package.module.Class`` from its dotted path (used for FSDP wrap classes named in YAML)."""
    if not dotted:
        raise ValueError(
            "backbone.layer_class is not set: name the model's decoder layer class, e.g. "
            "backbone.layer_class=transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer "
            "(`python -m huatuo.plan backbone=hf backbone.path=...` prints it)"
        )
    module_name, _, class_name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {dotted!r} ({err}); check backbone.layer_class") from None


def load_tokenizer(
    path: str,
    trust_remote_code: bool = False,
    pad_token: str | None = None,
    revision: str | None = None,
    from_sentencepiece: bool | None = None,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer and make sure it can pad (falling back to ``pad_token``, then the unk/eos token).

    ``from_sentencepiece``: rebuild the tokenizer from the folder's ``tokenizer.model`` so it encodes exactly like
    sentencepiece. None (the default) does so only for folders whose ``tokenizer_config.json`` names Baichuan2's or
    Yi's remote tokenizer class, which cannot run on current transformers anyway.
    """
    remote_class = checkpoints.remote_sentencepiece_class(
        checkpoints.read_json(path, "tokenizer_config.json", revision)
    )
    if from_sentencepiece or (from_sentencepiece is None and remote_class is not None):
        tokenizer = checkpoints.sentencepiece_tokenizer(path, remote_class, revision=revision)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def load_model(
    path: str | None = None,
    config: dict[str, Any] | None = None,
    dtype: str | None = "float32",
    attn_implementation: str | None = "sdpa",
    trust_remote_code: bool = False,
    revision: str | None = None,
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """Build the causal LM: pretrained weights from ``path``, or random init from ``config`` when ``path`` is None.

    Random init draws from torch's global generator, so seeding before the call (Lightning's
    ``seed_everything``) gives the same weights on every rank and every run.
    """
    torch_dtype = resolve_dtype(dtype)
    if path is None:
        if not config:
            raise ValueError("backbone.model needs a path (hub name or folder) or a config for random init")
        config = dict(config)
        model_config = AutoConfig.for_model(config.pop("model_type"), **config)
        model = AutoModelForCausalLM.from_config(
            model_config,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
    else:
        log.info("loading backbone weights from %s", path)
        model = checkpoints.load_causal_lm(
            path,
            revision=revision,
            trust_remote_code=trust_remote_code,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
        )
    if gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
        model.config.use_cache = False
    return model
