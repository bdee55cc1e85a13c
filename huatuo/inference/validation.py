"""Checks made before any model loads: a device this machine has, a model folder that holds a model, and every
problem of a composed ``chat.yaml`` config at once. torch is imported only for a GPU device setting."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from huatuo.core.errors import raise_problems
from huatuo.inference.generation import GenerationSettings
from huatuo.models.loading import DTYPES, model_folder_problem


def device_problem(device: object, key: str = "device") -> str | None:
    """Why ``device`` cannot be used on this machine, or None."""
    if not isinstance(device, str):
        return f"{key}={device!r}: use auto, cpu, cuda, cuda:N or split"
    if device in ("auto", "cpu"):
        return None
    if device == "split" or device.startswith("cuda"):
        import torch  # only for a GPU setting: importing torch takes a second or two

        if not torch.cuda.is_available():
            return f"{key}={device} but no CUDA device is visible; use {key}=auto or {key}=cpu"
        try:
            index = torch.device(device).index if device != "split" else None
        except RuntimeError:
            return f"{key}={device!r} is not a device name; use auto, cpu, cuda, cuda:N or split"
        if index is not None and index >= torch.cuda.device_count():
            return f"{key}={device}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        return None
    return f"{key}={device!r}: use auto, cpu, cuda, cuda:N or split (layers spread over every GPU)"


def model_path_problem(path: object, key: str = "model_path") -> str | None:
    """Why ``path`` is not a loadable model folder or hub name, or None (hub names are checked at load time)."""
    if path is None or path == "":
        return (
            f"{key} is required: pass {key}=DIR (an export folder such as outputs/train/<time>/export, or any "
            "Hugging Face model folder) or a hub name such as FreedomIntelligence/HuatuoGPT2-7B"
        )
    if not isinstance(path, str):
        return f"{key}={path!r} must be a folder path or a hub name"
    return model_folder_problem(path, key)


def chat_config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of a composed ``chat.yaml`` config that can be found without loading the model."""
    problems = []
    model_path = cfg.get("model_path")
    if model_path is None and cfg.get("backbone") is not None:
        name = cfg.backbone.get("name", "this backbone")
        problems.append(
            f"backbone={name} names no weights (backbone.model.path is null: a random-init model cannot chat); "
            "pass model_path=DIR, e.g. the export folder of a training run (outputs/train/<time>/export)"
        )
    elif problem := model_path_problem(model_path, "model_path"):
        problems.append(problem)
    tokenizer_path = cfg.get("tokenizer_path")
    if tokenizer_path is not None and (problem := model_path_problem(tokenizer_path, "tokenizer_path")):
        if "config.json" not in problem:  # a tokenizer folder needs no model config
            problems.append(problem)
    if cfg.get("quantize") not in (None, "4bit", "8bit"):
        problems.append(f"quantize={cfg.get('quantize')!r}: use 4bit, 8bit or null (full precision)")
    if cfg.get("dtype") not in (None, "auto", *DTYPES):
        problems.append(f"dtype={cfg.get('dtype')!r} is unknown; use auto or one of {sorted(DTYPES)}")
    if problem := device_problem(cfg.get("device"), "device"):
        problems.append(problem)
    max_context = cfg.get("max_context")
    if max_context is not None and (
        isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 2
    ):
        problems.append(f"max_context={max_context!r} must be null (the model's own) or an integer number of tokens")
    if cfg.get("prompt_format") not in ("auto", "huatuo", "template"):
        problems.append(f"prompt_format={cfg.get('prompt_format')!r}: use auto, huatuo or template")
    generation = cfg.get("generation")
    if not isinstance(generation, DictConfig):
        problems.append(f"generation={generation!r} must be a block of generation settings")
    else:
        values = OmegaConf.to_container(generation, resolve=True)
        if values.get("max_new_tokens") is None:  # null: taken from the model once it is loaded
            values["max_new_tokens"] = GenerationSettings.max_new_tokens
        problems += GenerationSettings.from_mapping(values).problems()
    message = cfg.get("message")
    if message is not None and not isinstance(message, str | int | float):
        problems.append(f"message={message!r} must be text; quote it: message='\"...\"'")
    return problems


def check_chat_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem of the chat config, or return quietly."""
    raise_problems("the chat config cannot run", chat_config_problems(cfg))
