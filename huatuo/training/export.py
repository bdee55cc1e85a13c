"""The export folder: a model that plain ``transformers`` (and any server built on it) loads without remote code.

After training, ``gather_full_state_dict`` consolidates the weights on rank zero whatever the strategy (FSDP1
and FSDP2 shards, DeepSpeed ZeRO-3 partitions), ``export_trained`` merges LoRA/QLoRA adapters into the base
weights (optionally also saving the adapter alone), and ``export_model`` writes the folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel

from huatuo.core.logs import get_logger
from huatuo.core.template import CHAT_TEMPLATE
from huatuo.models.loading import context_length

log = get_logger(__name__)

# The paper's chat settings; the 34B release uses top_k 5, top_p 0.85 (conf/backbone/yi_34b.yaml).
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
        from huatuo.models.loading import resolve_dtype

        target = resolve_dtype(dtype)
        source = state_dict if state_dict is not None else model.state_dict()
        state_dict = {k: v.to(target) if v.is_floating_point() else v for k, v in source.items()}
        model.config.dtype = target
    model.config.use_cache = True  # training turns the cache off; generation wants it on
    if not torch.cuda.is_available():
        # save_pretrained imports DeepSpeed (through accelerate), which warns that it found no GPU unless told
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar for a folder that takes a second
    try:
        model.save_pretrained(out, state_dict=state_dict)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    settings = dict(PAPER_GENERATION if generation is None else generation)
    context = context_length(model, tokenizer)
    if context and settings.get("max_new_tokens", 0) > context // 2:
        # A reply may take at most half the context (chat keeps the rest for the conversation): the paper's 1024 on a
        # 512-token demo model would otherwise be cut, with a warning, on every chat.
        log.info("export: max_new_tokens %d capped at %d, half the context", settings["max_new_tokens"], context // 2)
        settings["max_new_tokens"] = context // 2
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


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def gather_full_state_dict(trainer, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full, unsharded weights of ``model`` (the module's ``self.model``) on rank zero, ``None`` elsewhere.

    Collective: every rank must call it. Keys are those of ``model.state_dict()`` on a single device.
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    if isinstance(strategy, ModelParallelStrategy):  # FSDP2: DTensor parameters
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    elif isinstance(strategy, FSDPStrategy):  # FSDP1: flat parameters, the root wraps the LightningModule
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(trainer.model, StateDictType.FULL_STATE_DICT, config):
            state = _strip_prefix(trainer.model.state_dict())
    elif isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        # needs stage3_gather_16bit_weights_on_model_save (set in huatuo.training.strategies.deepspeed_config)
        state = _strip_prefix(trainer.model._zero3_consolidated_16bit_state_dict() or {})
    else:  # one device, DDP, ZeRO-1/2: every rank holds the full weights
        state = model.state_dict()
    if not trainer.is_global_zero:
        return None
    return {k: v.detach().to("cpu") for k, v in state.items()}


def _plain_copy(model: PreTrainedModel, state_dict: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A fresh, unwrapped model of the same class holding ``state_dict`` (no FSDP/DTensor, no extra memory)."""
    with torch.device("meta"):
        plain = type(model)(model.config)
    missing, unexpected = plain.load_state_dict(state_dict, strict=False, assign=True)
    tied = set(getattr(plain, "_tied_weights_keys", None) or [])
    if unexpected or (set(missing) - tied):
        raise RuntimeError(
            f"export: consolidated weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    if missing:
        plain.tie_weights()
    for name, buffer in list(plain.named_buffers()):  # non-persistent buffers (rotary tables) come from the original
        if buffer.is_meta:
            owner, _, attribute = name.rpartition(".")
            source = model.get_submodule(owner) if owner else model
            setattr(plain.get_submodule(owner) if owner else plain, attribute, getattr(source, attribute).to("cpu"))
    return plain


def export_trained(
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    tokenizer,
    out_dir: str | Path,
    generation: dict[str, Any] | None = None,
    dtype: str | None = None,
    metadata: dict[str, Any] | None = None,
    adapter: bool = True,
) -> Path:
    """Export a trained model from its consolidated ``state_dict``; LoRA/QLoRA adapters are merged into the base.

    With ``adapter``, an adapter model is also saved alone in ``<out_dir>/adapter`` (peft format), for stacking
    on the base weights elsewhere.
    """
    from huatuo.models.finetune import is_adapter_model, merged_state_dict

    out = Path(out_dir)
    if is_adapter_model(model):
        if adapter:
            from peft import get_peft_model_state_dict

            adapter_state = get_peft_model_state_dict(model, state_dict=state_dict)
            model.save_pretrained(out / "adapter", state_dict=adapter_state)
            log.info("saved the adapter alone to %s", out / "adapter")
        state_dict = merged_state_dict(model, state_dict)
        base = model.get_base_model()
        for attribute in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(base.config, attribute):
                delattr(base.config, attribute)
        model = base
    plain = _plain_copy(model, state_dict)
    plain.generation_config = model.generation_config
    return export_model(plain, tokenizer, out, generation=generation, dtype=dtype, metadata=metadata)
