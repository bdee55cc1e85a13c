"""Released checkpoint folders that ship remote code (Baichuan2, HuatuoGPT2-7B/13B/34B, Yi-34B), loaded without it.

- Baichuan2 layout (``config.json`` with ``model_type`` "baichuan" and an ``auto_map``; Baichuan2-7B/13B and
  HuatuoGPT2-7B/13B): huatuo registers its native classes for that model type (``huatuo.models.baichuan``), so
  transformers' Auto classes read the folder as it is.
- Yi layout (``model_type`` "Yi" or ``architectures`` ["YiForCausalLM"]; the first Yi-34B release and HuatuoGPT2-34B):
  the architecture is Llama's. The config is translated to a ``LlamaConfig`` and Yi's layer-norm names ``ln1``/``ln2``
  are renamed on load (folders already in Llama naming load unchanged), so the result is a plain
  ``LlamaForCausalLM`` that saves in Llama naming and loads anywhere.
- Tokenizers whose ``tokenizer_config.json`` names remote SentencePiece code are rebuilt without it
  (``huatuo.models.sentencepiece``).

These paths run whatever ``trust_remote_code`` says: the remote code they replace no longer runs on current
transformers, so there is nothing better to fall back to.
"""

from __future__ import annotations

import json
import os
from typing import Any

from huatuo.core.errors import ModelLoadError
from huatuo.core.logs import get_logger

log = get_logger(__name__)

# Yi's modeling_yi.py named the two layer norms of a decoder layer ln1 and ln2 (regexes, as transformers' key_mapping).
YI_KEY_MAPPING = {r"\.ln1\.": ".input_layernorm.", r"\.ln2\.": ".post_attention_layernorm."}


def resolve_file(path: str, filename: str, revision: str | None = None) -> str | None:
    """Local path of ``filename`` in a folder or hub repository (downloaded to the hub cache), or None if absent."""
    from transformers.utils import cached_file

    if os.path.isdir(path):
        local = os.path.join(path, filename)
        return local if os.path.isfile(local) else None
    if path.startswith(("/", ".", "~")):
        raise ModelLoadError(f"{path}: no such folder; use a local model folder or a hub name such as org/model")
    return cached_file(
        path,
        filename,
        revision=revision,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def read_json(path: str, filename: str, revision: str | None = None) -> dict[str, Any] | None:
    """``filename`` of a local folder or hub repository as a dict, or None when it has no such file."""
    resolved = resolve_file(path, filename, revision)
    if resolved is None:
        return None
    with open(resolved, encoding="utf-8") as handle:
        return json.load(handle)


def is_yi(config: dict[str, Any]) -> bool:
    """True for the Yi layout (the original Yi-34B and HuatuoGPT2-34B ``config.json``)."""
    return str(config.get("model_type", "")).lower() == "yi" or "YiForCausalLM" in (config.get("architectures") or [])


def llama_config_from_yi(config: dict[str, Any]):
    """The ``LlamaConfig`` equivalent of a Yi ``config.json`` (same dimensions, rope base, norm epsilon)."""
    from transformers import LlamaConfig

    settings = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "model_type", "rope_theta")}
    settings["rope_parameters"] = {"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000.0))}
    settings.setdefault("tie_word_embeddings", False)
    return LlamaConfig(**settings, architectures=["LlamaForCausalLM"])


def load_causal_lm(path: str, revision: str | None = None, trust_remote_code: bool = False, **kwargs: Any):
    """``AutoModelForCausalLM.from_pretrained`` that also reads the Yi layout (``kwargs`` go to ``from_pretrained``)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    config = read_json(path, "config.json", revision)
    if config is not None and is_yi(config):
        log.info("%s is in the Yi layout: loading it as LlamaForCausalLM", path)
        model = LlamaForCausalLM.from_pretrained(
            path, config=llama_config_from_yi(config), key_mapping=YI_KEY_MAPPING, revision=revision, **kwargs
        )
        # from_pretrained remembers the renaming to undo it on save; the model is a Llama now and saves as one.
        model._weight_conversions = None
        return model
    return AutoModelForCausalLM.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code, **kwargs)
