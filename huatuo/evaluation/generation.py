"""Batched generation for evaluation: replies to rendered prompts, longest first, outputs in input order."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from huatuo.core.template import USER_PREFIX
from huatuo.inference.loading import LoadedModel


def generate_texts(
    loaded: LoadedModel,
    prompts: Sequence[str],
    batch_size: int,
    generation: Mapping[str, Any],
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Continue each rendered prompt; batched with left padding, longest prompts first, outputs in input order."""
    tokenizer = loaded.tokenizer
    encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    settings = dict(generation)
    if not settings.get("do_sample", False):  # greedy: drop sampling knobs so transformers does not warn
        for key in ("temperature", "top_p", "top_k"):
            settings.pop(key, None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)  # one seed for the whole run: same batches -> same samples
    replies: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[r, width - len(encoded[i]) :] = 1
        with torch.no_grad():
            out = loaded.model.generate(
                input_ids=ids.to(loaded.device),
                attention_mask=mask.to(loaded.device),
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
                **settings,
            )
        for r, i in enumerate(rows):
            text = tokenizer.decode(out[r, width:], skip_special_tokens=True)
            replies[i] = cut_at_next_turn(text) if loaded.uses_huatuo_format else text
        if progress:
            progress(len(rows))
    return replies


def cut_at_next_turn(text: str) -> str:
    """The reply without a next user turn the model went on to write itself (that text is not part of its reply)."""
    return text.split("\n" + USER_PREFIX, 1)[0].split(USER_PREFIX, 1)[0].strip()
