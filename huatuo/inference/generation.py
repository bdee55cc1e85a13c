"""How a reply is sampled: ``GenerationSettings``, defaulting to the paper's chat settings, checked field by field."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@functools.cache
def _generation_fields() -> frozenset[str]:
    """Names ``GenerationConfig`` accepts (``+generation.<name>`` must be one of them)."""
    from transformers import GenerationConfig

    return frozenset(GenerationConfig().to_dict()) - {"transformers_version", "_from_model_config"}


@dataclass
class GenerationSettings:
    """How a reply is sampled; the defaults are the paper's chat settings."""

    max_new_tokens: int = 1024
    do_sample: bool = True
    temperature: float = 0.3
    top_p: float = 0.7
    top_k: int | None = None  # None: the model's generation_config.json decides
    repetition_penalty: float = 1.1
    seed: int | None = None  # an int re-seeds torch before every reply: same prompt, same reply
    extra: dict[str, Any] = field(default_factory=dict)  # any other GenerationConfig field (min_new_tokens...)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> GenerationSettings:
        """Settings from a config block; keys that are not fields go to ``extra``."""
        return cls(
            **{k: v for k, v in values.items() if k in _SETTING_NAMES},
            extra={k: v for k, v in values.items() if k not in _SETTING_NAMES},
        )

    def updated(self, **overrides: Any) -> GenerationSettings:
        """A copy with ``overrides`` applied (unknown keys join ``extra``)."""
        own = {name: getattr(self, name) for name in _SETTING_NAMES}  # shallow: asdict's deep copy cost ~30 us
        return GenerationSettings.from_mapping({**own, **self.extra, **overrides})

    def problems(self, prefix: str = "generation") -> list[str]:
        """Every invalid setting, each naming the key, the value and the fix."""
        out = []
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            out.append(f"{prefix}.max_new_tokens={self.max_new_tokens!r} must be an integer >= 1 (the paper: 1024)")
        if not isinstance(self.do_sample, bool):
            out.append(f"{prefix}.do_sample={self.do_sample!r} must be true (sample) or false (greedy)")
        if not isinstance(self.temperature, int | float) or self.temperature <= 0:
            out.append(
                f"{prefix}.temperature={self.temperature!r} must be > 0 (the paper: 0.3); greedy: do_sample=false"
            )
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            out.append(f"{prefix}.top_p={self.top_p!r} must be in (0, 1] (the paper: 0.7)")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            out.append(f"{prefix}.top_k={self.top_k!r} must be null or an integer >= 0 (the 34B release: 5)")
        if not isinstance(self.repetition_penalty, int | float) or self.repetition_penalty <= 0:
            out.append(f"{prefix}.repetition_penalty={self.repetition_penalty!r} must be > 0 (the paper: 1.1)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            out.append(f"{prefix}.seed={self.seed!r} must be null or an integer")
        for key in self.extra:
            if key not in _generation_fields():
                out.append(f"{prefix}.{key} is not a generation setting; check the spelling (see GenerationConfig)")
        return out

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (sampling knobs only when sampling, so greedy stays quiet)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
            if self.top_k is not None:
                kwargs["top_k"] = self.top_k
        return {**kwargs, **self.extra}


_SETTING_NAMES = frozenset(f.name for f in fields(GenerationSettings)) - {"extra"}
