"""The model an evaluation scores: a folder or hub name, or the ``backbone`` group's (random init included)."""

from __future__ import annotations

import gc

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from huatuo.inference.loading import LoadedModel, load_for_inference, pick_device


def load_evaluated_model(cfg: DictConfig, path: str | None = None) -> tuple[LoadedModel, str]:
    """The model to evaluate: ``path`` or ``model_path`` (any folder or hub name), else the ``backbone`` group."""
    path = path or cfg.get("model_path")
    options = {
        "quantize": cfg.get("quantize"),
        "dtype": cfg.get("dtype", "auto"),
        "device": cfg.get("device", "auto"),
        "trust_remote_code": bool(cfg.get("trust_remote_code", False)),
        "revision": cfg.get("revision"),
    }
    if path:
        return load_for_inference(str(path), **options), str(path)
    backbone = cfg.backbone
    if backbone.model.get("path"):
        options["trust_remote_code"] = bool(backbone.model.get("trust_remote_code", False))
        options["revision"] = backbone.model.get("revision")
        loaded = load_for_inference(str(backbone.model.path), **options)
        if backbone.tokenizer.get("path") and backbone.tokenizer.path != backbone.model.path:
            loaded.tokenizer = instantiate(backbone.tokenizer)
        return loaded, str(backbone.model.path)
    torch.manual_seed(cfg.seed)  # random init (the tiny demo backbone): the same weights for the same seed
    tokenizer = instantiate(backbone.tokenizer)
    model = instantiate(backbone.model)()
    device = pick_device(options["device"])
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, device=device), f"{backbone.get('name')} (random init)"


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def progress_bar(cfg: DictConfig, total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="q", disable=not cfg.get("progress", True), dynamic_ncols=True)
