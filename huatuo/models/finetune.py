"""Finetuning modes (``conf/finetune/``): every weight (``full``), LoRA adapters (``lora``), or LoRA on a 4-bit NF4
base (``qlora``), and the merge of adapters back into plain base weights for the export.

The mode is applied in ``CausalLMModule.configure_model`` right after the backbone is built, so it composes
with every strategy that supports it (``huatuo.training.validation`` lists the combinations that do not).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from huatuo.core.logs import get_logger
from huatuo.models.loading import resolve_dtype

log = get_logger(__name__)

ADAPTER_NAME = "default"  # peft's name for the single adapter we train


def full_finetune(model: nn.Module) -> nn.Module:
    """Full finetuning: the model as it is, every parameter trainable (the paper's recipe)."""
    return model


def lora(
    model: nn.Module,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | Sequence[str] = "all-linear",
) -> nn.Module:
    """Freeze the backbone and add trainable LoRA adapters to ``target_modules`` (peft)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA r=%d: %d of %d parameters train (%.2f%%)", r, trainable, total, 100 * trainable / max(total, 1))
    return model


def quantize_nf4(
    model: nn.Module,
    compute_dtype: str = "bfloat16",
    quant_type: str = "nf4",
    double_quant: bool = True,
    skip: Sequence[str] = ("lm_head",),
) -> nn.Module:
    """Replace every ``nn.Linear`` (but ``skip``) by a bitsandbytes 4-bit layer holding the same weights, quantized."""
    import bitsandbytes as bnb

    dtype = resolve_dtype(compute_dtype)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and name.rpartition(".")[2] not in skip
    ]
    for name, linear in targets:
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        device = linear.weight.device
        quantized = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=dtype,
            compress_statistics=double_quant,
            quant_type=quant_type,
            device="meta",
        )
        quantized.weight = bnb.nn.Params4bit(
            linear.weight.data.to("cpu"), requires_grad=False, quant_type=quant_type, compress_statistics=double_quant
        )
        if linear.bias is not None:
            quantized.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        setattr(parent, name.rpartition(".")[2], quantized.to(device))  # moving to a device quantizes the weight
    model.is_loaded_in_4bit = True  # tells peft to wrap the 4-bit layers with its 4-bit LoRA layers
    log.info("quantized %d linear layers to 4-bit %s", len(targets), quant_type)
    return model


def qlora(
    model: nn.Module,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | Sequence[str] = "all-linear",
    compute_dtype: str = "bfloat16",
    quant_type: str = "nf4",
    double_quant: bool = True,
) -> nn.Module:
    """QLoRA: quantize the frozen backbone to 4-bit NF4, then train LoRA adapters on top in ``compute_dtype``."""
    model = quantize_nf4(model, compute_dtype, quant_type, double_quant)
    return lora(model, r, alpha, dropout, target_modules)


def is_adapter_model(model: nn.Module) -> bool:
    """True for a peft model (LoRA/QLoRA)."""
    return type(model).__module__.startswith("peft.")  # without importing peft (and bitsandbytes) for full runs


def _dequantized(layer: nn.Module) -> torch.Tensor | None:
    """A 4-bit layer's weight as a dense tensor; ``None`` for an ordinary layer."""
    weight = layer.weight
    if getattr(weight, "quant_state", None) is None:
        return None
    import bitsandbytes as bnb

    data, state = weight.data, weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):  # bitsandbytes repacks CPU weights after an eval forward
        data, state = bnb.functional._convert_weight_packed_for_cpu_inverse(data, state)
    return bnb.functional.dequantize_4bit(data, state)


def merged_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The base model's weights with every LoRA update merged in (``W + scale * B @ A``), 4-bit layers dequantized.

    ``state_dict`` is the adapter model's consolidated state (keys of ``model.state_dict()``); the result has the
    plain backbone's keys (no ``base_model.model.`` prefix, no ``lora_`` tensors), so any ``transformers`` loader
    reads it as an ordinary checkpoint.
    """
    from peft.tuners.lora import LoraLayer

    state = state_dict if state_dict is not None else model.state_dict()
    prefix = "base_model.model."
    layers = {
        name.removeprefix(prefix): module for name, module in model.named_modules() if isinstance(module, LoraLayer)
    }
    dense_dtype = model.get_input_embeddings().weight.dtype  # what the 4-bit layers were before quantization
    merged: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        dequantized = _dequantized(layer.get_base_layer())
        base = dequantized if dequantized is not None else state[f"{prefix}{name}.base_layer.weight"]
        dtype = dense_dtype if dequantized is not None else base.dtype
        weight = base.float()
        lora_a, lora_b = (state.get(f"{prefix}{name}.lora_{x}.{ADAPTER_NAME}.weight") for x in ("A", "B"))
        if lora_a is not None and lora_b is not None:
            weight = weight + layer.scaling[ADAPTER_NAME] * (lora_b.float() @ lora_a.float())
        merged[f"{name}.weight"] = weight.to(dtype)
        bias = state.get(f"{prefix}{name}.base_layer.bias")
        if bias is not None:
            merged[f"{name}.bias"] = bias
    for key, value in state.items():
        clean = key.removeprefix(prefix).replace(".base_layer", "")
        if "lora_" in key or clean in merged or any(clean.startswith(f"{name}.") for name in layers):
            continue  # adapters, merged weights, and the 4-bit layers' quantization statistics
        merged[clean] = value
    return merged
