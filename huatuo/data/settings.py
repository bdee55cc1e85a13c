"""The ``data`` config group as objects: the sources of the mixture and the packing settings, every problem at once.

Checked before anything heavy loads (no tokenizer, no model): ``train.py`` and ``python -m huatuo.prepare`` report a
missing file, an unknown format or a bad priority within a second of starting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from huatuo.core.errors import did_you_mean, raise_problems
from huatuo.data.sources import MISSING, SourceSpec

# A question, the answer marker, one answer token and </s>: the template's floor whatever the tokenizer (the exact
# minimum is checked once the tokenizer is loaded, by huatuo.data.encoder.ConversationEncoder).
MIN_TEMPLATE_TOKENS = 4


@dataclass
class PackingSettings:
    """Everything besides the sources that changes the prepared rows."""

    max_len: int = 4096
    packing: str = "best_fit"  # greedy (the paper's) | best_fit
    window: int = 256  # greedy: samples per packing window (the paper's 256)
    open_rows: int = 8  # best_fit: rows open at once
    seed: int = 42
    overlong: str = "truncate"  # truncate (the paper's) | drop
    on_error: str = "raise"  # raise | skip

    def problems(self, prefix: str = "data") -> list[str]:
        """Every problem of these settings, each naming the key, the value and the fix."""
        out = []
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 1:
            out.append(f"{prefix}.max_len={self.max_len!r} must be a positive integer (the paper uses 4096)")
        elif self.max_len < MIN_TEMPLATE_TOKENS:
            out.append(
                f"{prefix}.max_len={self.max_len} cannot hold even a one-token exchange in the HuatuoGPT-II template "
                f"(at least {MIN_TEMPLATE_TOKENS} tokens, more with most tokenizers); raise {prefix}.max_len "
                "(the paper uses 4096)"
            )
        if self.packing not in ("greedy", "best_fit"):
            out.append(
                f"{prefix}.packing={self.packing!r}{did_you_mean(str(self.packing), ['greedy', 'best_fit'])}: "
                "use greedy (the paper's) or best_fit"
            )
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            out.append(f"{prefix}.window={self.window!r} must be an integer >= 1 (the paper's is 256)")
        if isinstance(self.open_rows, bool) or not isinstance(self.open_rows, int) or self.open_rows < 1:
            out.append(f"{prefix}.open_rows={self.open_rows!r} must be an integer >= 1 (8 is a good default)")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            out.append(f"{prefix}.seed={self.seed!r} must be an integer")
        if self.overlong not in ("truncate", "drop"):
            out.append(f"{prefix}.overlong={self.overlong!r}: use truncate (the paper's) or drop")
        if self.on_error not in ("raise", "skip"):
            out.append(f"{prefix}.on_error={self.on_error!r}: use raise or skip")
        return out


def parse_sources(sources: Mapping[str, Mapping[str, Any]] | None) -> tuple[list[SourceSpec], list[str]]:
    """SourceSpecs from ``data.sources`` (name -> settings), and every problem found in them."""
    problems, specs = [], []
    if not sources:
        return [], ["data.sources is empty; add at least one source (see conf/data/demo.yaml)"]
    known = sorted(set(SourceSpec.__dataclass_fields__) - {"name"})
    names = [str(n) for n in sources]
    for name, settings in sources.items():
        prefix = f"data.sources.{name}"
        others = [n for n in names if n != str(name)]
        if not isinstance(settings, Mapping):
            problems.append(f"{prefix}={settings!r} is not a mapping; give it paths, format, priority and epochs")
            continue
        unknown = sorted(set(settings) - set(known))
        if unknown:
            hints = "".join(did_you_mean(str(k), known) for k in unknown)
            problems.append(f"{prefix} has unknown key(s) {unknown}{hints}; known keys: {known}")
            continue
        values = dict(settings)
        if "paths" not in values and values.get("format") != "hf":
            # typically `+data.sources.<typo>.priority=...`: a new source holding only the overridden key
            problems.append(
                f"{prefix} has no paths: {str(name)!r} is not a source of this mixture{did_you_mean(str(name), others)}"
                f"; override an existing source (data.sources.<name>.priority=...) or give the new one paths"
            )
            continue
        paths = values.get("paths")
        if paths == MISSING or paths is None:
            paths = [MISSING] if paths == MISSING else []
        elif isinstance(paths, str):
            paths = [paths]
        values["paths"] = [str(p) for p in paths]
        spec = SourceSpec(name=str(name), **values)
        problems += spec.problems(prefix)
        specs.append(spec)
    return specs, problems


def sources_from_config(sources: Mapping[str, Mapping[str, Any]] | None) -> list[SourceSpec]:
    """Build SourceSpecs from ``data.sources``; raises one ConfigError listing every problem."""
    specs, problems = parse_sources(sources)
    raise_problems("bad data config", problems)
    return specs


def settings_from_config(data: Mapping[str, Any]) -> PackingSettings:
    """The PackingSettings part of a ``data`` config group."""
    keys = PackingSettings.__dataclass_fields__
    return PackingSettings(**{k: data[k] for k in keys if k in data})


WORKERS = ("thread", "process")  # how prepare's tokenizing workers run (data.workers); the first is the default


def reading_options(data: Mapping[str, Any]) -> dict[str, Any]:
    """How prepare reads and tokenizes, from a ``data`` config group: ``num_proc`` workers of kind ``workers``."""
    return {"num_proc": data.get("num_proc"), "workers": data.get("workers", WORKERS[0])}


def reading_problems(data: Mapping[str, Any]) -> list[str]:
    """Every problem of ``data.num_proc`` and ``data.workers``."""
    problems = []
    num_proc, workers = reading_options(data).values()
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        problems.append(f"data.num_proc={num_proc!r} must be null (every core) or an integer >= 1")
    if workers not in WORKERS:
        problems.append(f"data.workers={workers!r}: use thread (the default) or process")
    return problems
