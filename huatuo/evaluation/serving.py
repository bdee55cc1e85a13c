"""Generation through a serving engine (``eval.backend=endpoint``): any OpenAI-compatible server (vLLM, SGLang,
``transformers serve``) answers the evaluated model's prompts instead of a model loaded in this process.

What is sent is the chat message itself (``[{"role": "user", "content": ...}]``, with the model's own earlier replies
for a conversation): the server applies the model's chat template, and our exports carry the HuatuoGPT-II one, so the
model sees the bytes in-process generation renders. Chat, not the completions endpoint with our rendered prompt,
because every server and hosted API speaks it (the paper compared with GPT-4, which has no completions endpoint) and
one client (``huatuo.unify.endpoint.ChatClient``) serves the judge, unify and this. A server whose model lacks the
template needs it passed in (vLLM: ``--chat-template``; docs/evaluation.md).

The paper's sampling settings travel as the API's own fields where it has them (``temperature``, ``top_p``,
``max_tokens``, ``seed``); greedy decoding is ``temperature: 0``. The OpenAI API has no repetition penalty or top-k:
``penalty_field`` says how they travel: ``extra_body`` puts ``repetition_penalty``/``top_k`` in the request body
(vLLM and SGLang read them there), ``generation_config`` sends them as the JSON generation settings that
``transformers serve`` takes (it refuses unknown body fields; with ``--continuous-batching`` it drops the penalty
whatever is sent), ``none`` leaves them out (hosted APIs).

Every reply is appended, as it arrives, to a JSONL file keyed by the request's key (question uid, with the turn for
a conversation) and a fingerprint of the request (model, messages, settings). A rerun after a kill asks only for what
is missing or changed; a request that failed for good is recorded with its error and asked again next time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from huatuo.core.errors import did_you_mean, raise_problems
from huatuo.core.jsonl import JsonlAppender, latest_by_key
from huatuo.core.logs import get_logger
from huatuo.evaluation.answers import Answers, OpenQuestion
from huatuo.evaluation.generation import cut_at_next_turn
from huatuo.unify.endpoint import ChatClient, EndpointError, EndpointSettings

log = get_logger(__name__)

PenaltyField = Literal["extra_body", "generation_config", "none"]
PENALTY_FIELDS = ("extra_body", "generation_config", "none")
_OUTSIDE_THE_API = ("repetition_penalty", "top_k")  # sampling knobs the OpenAI API has no field for
ENDPOINT_EXTRAS = {"penalty_field": "extra_body"}  # eval.endpoint's keys beside EndpointSettings, with defaults
JUDGE_EXTRAS = {"prompt_file": None}  # eval.judge's: the rubric file (None: ours)


@dataclass
class ServedRequest:
    """One chat request: its key in the replies file and the messages sent."""

    key: str
    messages: list[dict[str, str]]


@dataclass
class ServedReplies:
    """Replies by request key, the errors of requests that failed for good, and how many were asked now."""

    texts: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    asked: int = 0
    reused: int = 0


def request_params(generation: Mapping[str, Any], penalty_field: PenaltyField, seed: int | None) -> dict[str, Any]:
    """The chat-completions fields for a generation config (``eval.generate``: do_sample, temperature, top_p ...)."""
    params: dict[str, Any] = {}
    if generation.get("max_new_tokens") is not None:
        params["max_tokens"] = int(generation["max_new_tokens"])
    sampling = bool(generation.get("do_sample", False))
    if sampling:
        for name in ("temperature", "top_p"):
            if generation.get(name) is not None:
                params[name] = float(generation[name])
        if seed is not None:
            params["seed"] = int(seed)
    else:
        params["temperature"] = 0.0  # greedy on every server
    extra = {name: generation[name] for name in _OUTSIDE_THE_API if generation.get(name) is not None}
    if not sampling:
        extra.pop("top_k", None)
    if extra.get("repetition_penalty") == 1.0:
        extra.pop("repetition_penalty")
    if extra and penalty_field == "extra_body":
        params["extra_body"] = extra
    elif extra and penalty_field == "generation_config":
        params["extra_body"] = {"generation_config": json.dumps(extra, sort_keys=True)}
    elif extra:
        log.warning("eval.endpoint.penalty_field=none: %s not sent; the server decodes without them", sorted(extra))
    return params


def fingerprint(
    model: str, messages: Sequence[Mapping[str, str]], params: Mapping[str, Any], base_url: str | None = None
) -> str:
    """Identifies one request: a changed prompt, model, server or setting means a new reply."""
    request = {"model": model, "messages": list(messages), "params": params, "base_url": base_url}
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_replies(path: str | Path) -> dict[str, dict[str, Any]]:
    """The latest record per key of an append-only replies file (a torn last line is ignored)."""
    return latest_by_key(path, "key")


async def _serve(
    client: ChatClient,
    requests: Sequence[ServedRequest],
    params: Mapping[str, Any],
    path: Path,
    progress: Callable[[int], None] | None,
) -> ServedReplies:
    model = client.settings.model
    done = read_replies(path)
    out, pending = ServedReplies(), []
    for request in requests:
        # what the client really sends: its endpoint.params under this call's; and where it sends it
        stamp = fingerprint(model, request.messages, {**client.settings.params, **params}, client.settings.base_url)
        old = done.get(request.key)
        if old and old.get("fingerprint") == stamp and isinstance(old.get("reply"), str):
            out.texts[request.key] = old["reply"]
            out.reused += 1
            if progress:
                progress(1)
        else:
            pending.append((request, stamp))
    out.asked = len(pending)

    with JsonlAppender(path, fsync=False) as handle:

        async def one(request: ServedRequest, stamp: str) -> None:
            record: dict[str, Any] = {"key": request.key, "fingerprint": stamp, "model": model}
            try:
                result = await client.chat(request.messages, **params)
            except EndpointError as err:
                out.errors[request.key] = f"endpoint: {err.kind}"
                record.update(reply=None, error=str(err))
            else:
                out.texts[request.key] = result.text
                record.update(reply=result.text, finish_reason=result.finish_reason, attempts=result.attempts)
            handle.append(record)  # one whole line per reply before the next: a kill loses only requests in flight
            if progress:
                progress(1)

        await asyncio.gather(*(one(request, stamp) for request, stamp in pending))
    return out


def serve_replies(
    settings: EndpointSettings,
    requests: Sequence[ServedRequest],
    params: Mapping[str, Any],
    path: str | Path,
    progress: Callable[[int], None] | None = None,
) -> ServedReplies:
    """Ask the server for every request not already in ``path``, ``settings.max_concurrency`` at a time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    async def run() -> ServedReplies:
        client = ChatClient(settings)
        try:
            return await _serve(client, requests, params, path, progress)
        finally:
            await client.close()

    replies = asyncio.run(run())
    log.info(
        "endpoint %s: %d replies asked, %d reused from %s, %d failed",
        settings.model, replies.asked, replies.reused, path, len(replies.errors),
    )  # fmt: skip
    return replies


def split_endpoint_block(
    spec: Mapping[str, Any] | None, extras: Mapping[str, Any], prefix: str
) -> tuple[EndpointSettings, dict[str, Any], list[str]]:
    """An endpoint config block as (client settings, its ``extras`` keys with their defaults, every problem).

    ``eval.endpoint`` and ``eval.judge`` are both EndpointSettings plus keys of their own (``penalty_field``,
    ``prompt_file``); a mistyped key is reported here, before any model generates, not as a TypeError after.
    """
    values = dict(spec or {})
    found = {key: values.pop(key, default) for key, default in extras.items()}
    fields = EndpointSettings.__dataclass_fields__
    known = sorted([*fields, *extras])
    problems = [
        f"{prefix}.{key} is not a setting{did_you_mean(str(key), known)}; known keys: {', '.join(known)}"
        for key in sorted(map(str, set(values) - set(fields)))
    ]
    settings = EndpointSettings(**{k: v for k, v in values.items() if k in fields})
    return settings, found, problems + settings.problems(prefix)


def endpoint_settings(spec: Mapping[str, Any]) -> tuple[EndpointSettings, PenaltyField]:
    """The client settings and the penalty field of an ``eval.endpoint`` block (checked by ``endpoint_problems``)."""
    settings, extras, problems = split_endpoint_block(spec, ENDPOINT_EXTRAS, "eval.endpoint")
    raise_problems("bad eval.endpoint", problems)
    return settings, extras["penalty_field"]


def endpoint_problems(spec: Mapping[str, Any] | None) -> list[str]:
    """Every problem of an ``eval.endpoint`` block, each naming the key, the value and the fix."""
    if not spec:
        return ["eval.endpoint is missing; give base_url and model of the server (eval.backend=endpoint)"]
    settings, extras, problems = split_endpoint_block(spec, ENDPOINT_EXTRAS, "eval.endpoint")
    if extras["penalty_field"] not in PENALTY_FIELDS:
        problems.append(
            f"eval.endpoint.penalty_field={extras['penalty_field']!r}: use extra_body (vLLM, SGLang), "
            "generation_config (transformers serve) or none (hosted APIs)"
        )
    if not settings.base_url:
        problems.append("eval.endpoint.base_url is empty; give the server's URL, e.g. http://127.0.0.1:8000/v1")
    return problems


def serve_answers(
    settings: EndpointSettings,
    questions: Sequence[OpenQuestion],
    params: Mapping[str, Any],
    path: str | Path,
    model_name: str,
    progress: Callable[[int], None] | None = None,
) -> tuple[Answers, dict[str, str]]:
    """The server's answers to open questions, turn by turn (its own replies form each conversation's history).

    Returns the answers and, per question whose answer stopped short, the error of the turn that failed.
    """
    replies: dict[str, list[str]] = {q.id: [] for q in questions}
    errors: dict[str, str] = {}
    for k in range(max((len(q.turns) for q in questions), default=0)):
        active = [q for q in questions if len(q.turns) > k and q.id not in errors]
        requests = []
        for q in active:
            messages = []
            for user, reply in zip(q.turns[:k], replies[q.id], strict=True):
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
            requests.append(ServedRequest(f"{q.id}#{k}", [*messages, {"role": "user", "content": q.turns[k]}]))
        served = serve_replies(settings, requests, params, path, progress)
        for q, request in zip(active, requests, strict=True):
            if request.key in served.texts:
                replies[q.id].append(cut_at_next_turn(served.texts[request.key]))
            else:
                errors[q.id] = f"turn {k + 1}: {served.errors[request.key]}"
    return Answers(model=model_name, replies=replies, turns={q.id: list(q.turns) for q in questions}), errors
