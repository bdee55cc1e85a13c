"""Loading a model for generation (chat, evaluation, answer generation): device, dtype, quantization, prompt format.

Released HuatuoGPT2 folders load through the same path: the native backbones register themselves with the
``transformers`` Auto classes when ``huatuo.models.loading`` is imported, so no remote code runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from huatuo.core.errors import ConfigError, ModelLoadError
from huatuo.core.logs import get_logger
from huatuo.core.template import CHAT_TEMPLATE, build_prompt
from huatuo.inference.validation import device_problem, model_path_problem
from huatuo.models.loading import context_length, load_tokenizer, resolve_dtype
from huatuo.models.released import load_causal_lm

log = get_logger(__name__)

Quantize = Literal["4bit", "8bit"] | None
PromptFormat = Literal["auto", "huatuo", "template"]

_PROBE = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` (and ``split``) is the first CUDA device when there is one, else the CPU."""
    if device in ("auto", "split"):
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
    raise ConfigError(f"quantize={quantize!r}: use 4bit, 8bit or null")


@dataclass
class LoadedModel:
    """A model ready for generation and its tokenizer.

    ``prompt_format`` decides how conversations become text: ``huatuo`` is the HuatuoGPT-II builder
    (``template.build_prompt``), ``template`` the tokenizer's own chat template, ``auto`` the builder for our
    exports, released HuatuoGPT2 folders and tokenizers without a template, the tokenizer's template otherwise.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    prompt_format: PromptFormat = "auto"
    max_context: int | None = field(default=None)  # overrides context_length when set

    @cached_property
    def uses_huatuo_format(self) -> bool:
        """True when prompts are built in the HuatuoGPT-II format (ours, or a model without a chat template)."""
        if self.prompt_format != "auto":
            return self.prompt_format == "huatuo"
        template = getattr(self.tokenizer, "chat_template", None)
        if template is None or template == CHAT_TEMPLATE:
            return True
        try:  # a template of its own that renders our format (a re-saved export, a released folder) counts too
            rendered = self.tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - any template error just means "not ours"
            return False
        return rendered == build_prompt(_PROBE)

    @property
    def context_length(self) -> int | None:
        """Tokens the model can attend to (``max_context`` if set, else the model's and tokenizer's limit)."""
        return self.max_context or context_length(self.model, self.tokenizer)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text: the model's own chat template if it has one, else the HuatuoGPT-II format."""
        if self.uses_huatuo_format:
            return build_prompt(messages, add_generation_prompt=add_generation_prompt)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of a rendered prompt, on the model's device (no extra special tokens: the prompt is complete)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # the Rust tokenizer directly, as training's encoder does; no offsets computed
            ids = backend.encode_batch_fast([text], add_special_tokens=False)[0].ids  # 30 us vs 110 us via encode()
            return torch.from_numpy(np.asarray(ids, dtype=np.int64)).unsqueeze(0).to(self.device)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        return ids.to(self.device)


def load_for_inference(
    path: str,
    quantize: Quantize = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    tokenizer_path: str | None = None,
    prompt_format: PromptFormat = "auto",
    max_context: int | None = None,
) -> LoadedModel:
    """Load a model folder or hub name for generation on ``device`` (bf16 on GPU, fp32 on CPU by default).

    ``device="split"`` spreads the layers over every visible GPU (``device_map="auto"``), for models larger
    than one GPU. ``quantize`` works on CPU too (bitsandbytes >= 0.45), mostly to save memory.
    """
    problem = model_path_problem(path, "path") or device_problem(device)
    if problem:
        raise ConfigError(problem)
    if prompt_format not in ("auto", "huatuo", "template"):
        raise ConfigError(f"prompt_format={prompt_format!r}: use auto, huatuo or template")
    target = pick_device(device)
    torch_dtype = resolve_dtype(dtype) or (torch.bfloat16 if target.type == "cuda" else torch.float32)
    try:
        tokenizer = load_tokenizer(tokenizer_path or path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load a tokenizer from {tokenizer_path or path!r}: {err}") from err
    kwargs = {}
    if device == "split" and target.type == "cuda":
        kwargs["device_map"] = "auto"
    elif quantize is not None:
        kwargs["device_map"] = {"": target.index or 0} if target.type == "cuda" else {"": "cpu"}
    if quantize is not None:
        kwargs["quantization_config"] = quantization_config(quantize, torch_dtype)
        if quantize == "8bit":  # LLM.int8 computes in fp16 by design; bitsandbytes warns on every matmul otherwise
            warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    try:
        # load_causal_lm: AutoModelForCausalLM, plus the released Yi/HuatuoGPT2-34B layout (huatuo.models.released)
        model = load_causal_lm(
            path, dtype=torch_dtype, trust_remote_code=trust_remote_code, revision=revision, **kwargs
        )
    except (OSError, ValueError) as err:  # missing files, offline hub, an architecture transformers does not know
        raise ModelLoadError(f"cannot load a model from {path!r}: {err}") from err
    if "device_map" not in kwargs:
        model.to(target)
    model.eval()
    first = model.get_input_embeddings().weight.device  # where the input ids must go, whatever the device map
    log.info("loaded %s on %s (%s%s)", path, first, torch_dtype, f", {quantize}" if quantize else "")
    return LoadedModel(
        model=model, tokenizer=tokenizer, device=first, prompt_format=prompt_format, max_context=max_context
    )
