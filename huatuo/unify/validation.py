"""Every problem of a composed ``unify.yaml`` config, found before any request is sent (the API key included: it
must never be written into a config)."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from huatuo.unify.endpoint import EndpointSettings, params_problems
from huatuo.unify.passages import FORMATS, TEXT_UNITS


def read_settings(cls, node: Any) -> Any:
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    return cls(**values)


def _placeholders(template: str) -> set[str] | None:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError:
        return None


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of a composed ``unify.yaml`` config, each naming the key, the value and the fix."""
    problems: list[str] = []
    inputs = cfg.input if isinstance(cfg.input, str) else list(cfg.input or [])
    for path in [inputs] if isinstance(inputs, str) else inputs:
        if not Path(path).is_file():
            problems.append(f"input={path!r}: no such file; point it at a JSON, JSONL, text or parquet file")
    output = Path(cfg.output)
    rejected = rejected_path(cfg)
    if output.suffix.lower() != ".jsonl":
        problems.append(f"output={cfg.output!r}: name it *.jsonl (one record per line, the prepare stage reads it)")
    taken = {Path(p).resolve() for p in ([inputs] if isinstance(inputs, str) else inputs)}
    if output.resolve() in taken or rejected.resolve() in taken:
        problems.append(
            f"output={cfg.output!r} / rejected={str(rejected)!r} would overwrite an input; pick other paths"
        )
    if output.resolve() == rejected.resolve():
        problems.append(f"rejected={str(rejected)!r} is the output file; use another path or null for the default")
    reader = cfg.reader
    if reader.format not in FORMATS:
        problems.append(f"reader.format={reader.format!r}: use one of {', '.join(FORMATS)}")
    if reader.text_unit not in TEXT_UNITS:
        problems.append(f"reader.text_unit={reader.text_unit!r}: use line or paragraph")
    split = cfg.split
    if split.max_chars is not None and (not isinstance(split.max_chars, int) or split.max_chars < 50):
        problems.append(f"split.max_chars={split.max_chars!r} must be null (no split) or an integer >= 50, e.g. 600")
    if not isinstance(split.min_chars, int) or split.min_chars < 0:
        problems.append(f"split.min_chars={split.min_chars!r} must be an integer >= 0")
    for call, needed in (("question", {"passage"}), ("answer", {"question", "passage"})):
        node = cfg[call]
        names = _placeholders(str(node.prompt))
        if names is None or names - needed or needed - names:
            problems.append(
                f"{call}.prompt has placeholders {sorted(names or [])}; it needs exactly "
                f"{' and '.join('{' + n + '}' for n in sorted(needed))} (write literal braces as {{{{ and }}}})"
            )
        for key in ("cut", "attempts"):
            if not isinstance(node[key], int) or node[key] < 1:
                problems.append(f"{call}.{key}={node[key]!r} must be an integer >= 1")
        problems += params_problems(node.params, f"{call}.params")
    if not isinstance(cfg.question.max_chars, int) or cfg.question.max_chars < 1:
        problems.append(f"question.max_chars={cfg.question.max_chars!r} must be an integer >= 1 (the paper's is 180)")
    if not 0 <= cfg.question.min_chinese_share <= 1:
        problems.append(f"question.min_chinese_share={cfg.question.min_chinese_share!r} must be in [0, 1]")
    threshold = cfg.answer.jaccard_threshold
    if threshold is not None and not (isinstance(threshold, int | float) and 0 <= threshold < 1):
        problems.append(f"answer.jaccard_threshold={threshold!r} must be null (off) or in [0, 1), e.g. 0.5")
    if not isinstance(cfg.answer.jaccard_ngram, int) or cfg.answer.jaccard_ngram < 1:
        problems.append(f"answer.jaccard_ngram={cfg.answer.jaccard_ngram!r} must be an integer >= 1")
    endpoint = read_settings(EndpointSettings, cfg.endpoint)
    problems += endpoint.problems("endpoint")
    if endpoint.base_url is None and not endpoint.has_api_key():
        problems.append(
            f"endpoint.base_url is null (api.openai.com) but ${endpoint.api_key_env} is empty; export the key in "
            "that variable, or point endpoint.base_url at a local server"
        )
    for key in ("passages_in_flight", "limit"):
        value = cfg[key]
        if value is not None and (not isinstance(value, int) or value < 1):
            problems.append(f"{key}={value!r} must be null or an integer >= 1")
    if not isinstance(cfg.max_consecutive_endpoint_errors, int) or cfg.max_consecutive_endpoint_errors < 1:
        problems.append(
            f"max_consecutive_endpoint_errors={cfg.max_consecutive_endpoint_errors!r} must be an integer >= 1"
        )
    problems += _key_in_config(cfg, endpoint.api_key_env)
    return problems


def _key_in_config(cfg: DictConfig, env: str) -> list[str]:
    key = os.environ.get(env)
    if not key or len(key) < 8:
        return []
    found = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        elif isinstance(node, str) and key in node:
            found.append(path)

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    try:  # an ${oc.env:...} interpolation would put it in requests (params) once resolved
        walk(OmegaConf.to_container(cfg, resolve=True), "")
    except Exception:  # noqa: BLE001 - unresolvable outside Hydra (hydra: resolvers); the unresolved walk stands
        pass
    found = sorted(set(found))
    return [f"{p} holds the API key from ${env}; remove it: the key is read from the environment only" for p in found]


def input_paths(cfg: DictConfig) -> list[Path]:
    """The input files, in reading order."""
    return [Path(cfg.input)] if isinstance(cfg.input, str) else [Path(p) for p in cfg.input]


def rejected_path(cfg: DictConfig) -> Path:
    """Where rejected passages go: ``rejected``, or ``<output stem>.rejected.jsonl`` beside the output."""
    if cfg.get("rejected"):
        return Path(cfg.rejected)
    output = Path(cfg.output)
    return output.with_name(output.name.removesuffix(".jsonl") + ".rejected.jsonl")
