"""Loading a model for generation (chat, evaluation, answer generation): device, dtype and quantization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from huatuo.backbone import load_tokenizer, resolve_dtype
from huatuo.checkpoints import load_causal_lm
from huatuo.logs import get_logger
from huatuo.template import CHAT_TEMPLATE, build_prompt

log = get_logger(__name__)

Quantize = Literal["4bit", "8bit"] | None


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def quantization_config(quantize: Quantize, compute_dtype: torch.dtype):
    """A bitsandbytes config for ``4bit`` (NF4, double quantization) or ``8bit`` (LLM.int8)."""
    if quantize is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantize={quantize!r}: use 4bit, 8bit or null")


@dataclass
class LoadedModel:
    """A model ready for generation and its tokenizer."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device

    @property
    def uses_huatuo_format(self) -> bool:
        """True when prompts are built in the HuatuoGPT-II format (ours, or a model without a chat template)."""
        template = getattr(self.tokenizer, "chat_template", None)
        return template is None or template == CHAT_TEMPLATE

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text: the model's own chat template if it has one, else the HuatuoGPT-II format."""
        if self.uses_huatuo_format:
            return build_prompt(messages, add_generation_prompt=add_generation_prompt)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of a rendered prompt, on the model's device (no extra special tokens: the prompt is complete)."""
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        return ids.to(self.device)


def load_for_inference(
    path: str,
    quantize: Quantize = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> LoadedModel:
    """Load a model folder or hub name for generation on ``device`` (bf16 on GPU, fp32 on CPU by default)."""
    target = pick_device(device)
    torch_dtype = resolve_dtype(dtype) or (torch.bfloat16 if target.type == "cuda" else torch.float32)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code, revision=revision)
    kwargs = {}
    if quantize is not None:
        kwargs["quantization_config"] = quantization_config(quantize, torch_dtype)
        kwargs["device_map"] = {"": target.index or 0} if target.type == "cuda" else {"": "cpu"}
    # load_causal_lm: AutoModelForCausalLM, plus the released Yi/HuatuoGPT2-34B layout (huatuo.checkpoints)
    model = load_causal_lm(path, dtype=torch_dtype, trust_remote_code=trust_remote_code, revision=revision, **kwargs)
    if quantize is None:
        model.to(target)
    model.eval()
    log.info("loaded %s on %s (%s%s)", path, target, torch_dtype, f", {quantize}" if quantize else "")
    return LoadedModel(model=model, tokenizer=tokenizer, device=target)
