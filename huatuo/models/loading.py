"""Loading backbones and tokenizers: hub names, local folders, or a random-init config (the tiny demo model).

Released folders that ship remote code (Baichuan2, HuatuoGPT2, Yi) load without it: see ``huatuo.models.released``
and ``huatuo.models.sentencepiece``. torch and transformers are imported inside the functions that use them, so
config validation (which needs only the names below) stays fast.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huatuo.core.errors import ConfigError
from huatuo.core.logs import get_logger

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = get_logger(__name__)

HUB_NAME = re.compile(r"^[\w.-]+/[\w.-]+$")  # org/name
# Config keys that hold a model's context length, by family (Llama/Yi, GPT-2, Baichuan2-13B/ALiBi, others).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "model_max_length", "max_sequence_length", "seq_length")
# Tokenizers without a configured length report a huge sentinel (int(1e30)); anything above this is "unset".
UNSET_LENGTH = 10_000_000

# Config spellings of the floating dtypes, by torch attribute name.
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """Map a config string such as ``bfloat16`` to a torch dtype (``None`` and ``auto`` stay ``None``)."""
    if name is None or name == "auto":
        return None
    if not isinstance(name, str):
        return name  # already a torch.dtype
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)} or auto")
    import torch

    return getattr(torch, DTYPES[name])


def model_folder_problem(path: object, key: str) -> str | None:
    """Why a local ``path`` is not a model folder (missing, a file, no ``config.json``), or None; hub names pass."""
    if not isinstance(path, str) or not path:
        return None
    local = Path(path).expanduser()
    if local.is_file():
        hint = " (a Lightning checkpoint: train.py writes the loadable export to <run dir>/export)"
        return f"{key}={path} is a file{hint if local.suffix == '.ckpt' else ''}; pass the model folder"
    if local.is_dir():
        if not (local / "config.json").is_file():
            return f"{key}={path} has no config.json, so it is not a model folder; pass the export folder inside it"
        return None
    if HUB_NAME.match(path) and not path.startswith("."):
        return None  # a hub name: resolved (or refused offline) when it is loaded
    return f"{key}={path}: no such folder; check the path (an export folder is <run dir>/export)"


def import_class(dotted: str | None) -> type:
    """Import ``package.module.Class`` from its dotted path (used for FSDP wrap classes named in YAML)."""
    if not dotted:
        raise ConfigError(
            "backbone.layer_class is not set: name the model's decoder layer class, e.g. "
            "backbone.layer_class=transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer "
            "(`python -m huatuo.plan backbone=hf backbone.path=...` prints it)"
        )
    module_name, _, class_name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import {dotted!r} ({err}); check backbone.layer_class") from None


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
    from transformers import AutoTokenizer

    from huatuo.models.released import read_json
    from huatuo.models.sentencepiece import remote_sentencepiece_class, sentencepiece_tokenizer

    remote_class = remote_sentencepiece_class(read_json(path, "tokenizer_config.json", revision))
    if from_sentencepiece or (from_sentencepiece is None and remote_class is not None):
        tokenizer = sentencepiece_tokenizer(path, remote_class, revision=revision)
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
    from transformers import AutoConfig, AutoModelForCausalLM

    from huatuo.models.released import load_causal_lm

    torch_dtype = resolve_dtype(dtype)
    if path is None:
        if not config:
            raise ConfigError("backbone.model needs a path (hub name or folder) or a config for random init")
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
        model = load_causal_lm(
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


def context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The longest sequence the model handles: the smaller of the tokenizer's and the model config's limits."""
    limits = []
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < UNSET_LENGTH:
        limits.append(tokenizer_limit)
    config = getattr(model, "config", None)
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and 0 < value < UNSET_LENGTH:
            limits.append(value)
            break
    return min(limits) if limits else None
