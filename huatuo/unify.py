"""The unify stage: raw medical passages -> (question, answer) pairs through any OpenAI-compatible LLM.

``python -m huatuo.unify input=corpus.jsonl output=unified.jsonl endpoint.base_url=URL endpoint.model=NAME``

Two calls per passage (the HuatuoGPT-II data unification): the first writes a Chinese question the passage answers,
without mentioning the passage; the second answers it as a medical expert drawing on the passage without revealing
it had one. Replies go through the paper's filters (question length, no "reference" in the answer, optional n-gram
overlap); each call gets ``attempts`` tries before the passage is given up.

Loss-free and resumable: every finished passage is one JSON line, appended with a single ``write`` and fsynced, to
the output (accepted) or to the rejected file (with the reason). A rerun reads both, drops a torn last line left by
a kill, and skips every id already there; so after any number of kills and reruns each input id is in exactly one
of the two files, once. Records are in completion order, not input order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import string
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from huatuo.endpoint import ChatClient, EndpointError, EndpointSettings
from huatuo.journal import JsonlAppender, drop_records, recover
from huatuo.passages import (
    FORMATS,
    TEXT_UNITS,
    InputError,
    ReaderSettings,
    SplitSettings,
    Unit,
    iter_units,
    scan_input,
)

# A plain logger: this stage runs in one process, and importing Lightning for a rank filter costs seconds.
log = logging.getLogger("huatuo.unify")  # not __name__: that is "__main__" under python -m

ENDPOINT_ERROR = "endpoint_error"

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)  # reasoning models (R1, Qwen3) put their thoughts inline
_LABEL = re.compile(
    r"^\s*<?\s*(?:question|answer|reply|问题|提问|回答|答案|回复)\s*>?\s*[:：]\s*", re.IGNORECASE
)  # models often echo the label the prompt ended with
_QUOTES = ('""', "“”", "「」", "''", "‘’")


class UnifyError(RuntimeError):
    """The run stopped before the end (a fatal endpoint error, or too many endpoint failures in a row)."""


@dataclass
class QuestionSettings:
    """The first call: a question the passage answers. Defaults: the paper's rules; conf/unify.yaml adds the rest."""

    prompt: str = "{passage}"
    cut: int = 400
    attempts: int = 2
    max_chars: int = 180
    min_chinese_share: float = 0.0
    forbidden: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class AnswerSettings:
    """The second call: the expert's answer drawing on the passage (defaults: the paper's rules)."""

    prompt: str = "{question}\n{passage}"
    cut: int = 600
    attempts: int = 2
    forbidden: list[str] = field(default_factory=lambda: ["参考"])
    jaccard_threshold: float | None = None
    jaccard_ngram: int = 1
    params: dict[str, Any] = field(default_factory=dict)


# ----- the two calls and their filters -----


def clean_reply(text: str) -> str:
    """A reply without inline reasoning, an echoed label (``问题：``) or wrapping quotes."""
    text = _LABEL.sub("", _THINK.sub("", text).strip(), count=1).strip()
    if len(text) >= 2 and text[0] + text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def chinese_share(text: str) -> float:
    """The share of CJK ideographs among the letters, digits and ideographs of ``text``."""
    alnum = [c for c in text if c.isalnum()]
    cjk = sum(1 for c in alnum if "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf")
    return cjk / len(alnum) if alnum else 0.0


def ngram_jaccard(a: str, b: str, n: int) -> float:
    """Jaccard similarity of the character n-gram sets of two lowercased strings (0 when either is shorter than n)."""
    a, b = a.lower(), b.lower()
    if len(a) < n or len(b) < n:
        return 0.0
    grams_a = {a[i : i + n] for i in range(len(a) - n + 1)}
    grams_b = {b[i : i + n] for i in range(len(b) - n + 1)}
    return len(grams_a & grams_b) / len(grams_a | grams_b)


Problem = tuple[str, str]  # (reason, detail)


def check_question(question: str, settings: QuestionSettings) -> Problem | None:
    """Why a question is unusable, or None when it passes."""
    if not question:
        return "question_empty", "the reply was empty"
    if len(question) > settings.max_chars:
        return "question_too_long", f"{len(question)} characters > question.max_chars={settings.max_chars}"
    if settings.min_chinese_share and (share := chinese_share(question)) < settings.min_chinese_share:
        return "question_not_chinese", f"{share:.0%} Chinese < question.min_chinese_share={settings.min_chinese_share}"
    for word in settings.forbidden:
        if word in question:
            return "question_mentions_passage", f"contains {word!r} (question.forbidden)"
    return None


def check_answer(answer: str, passage: str, settings: AnswerSettings) -> Problem | None:
    """Why an answer is unusable, or None when it passes."""
    if not answer:
        return "answer_empty", "the reply was empty"
    for word in settings.forbidden:
        if word in answer:
            return "answer_mentions_reference", f"contains {word!r} (answer.forbidden)"
    if settings.jaccard_threshold is not None:
        score = ngram_jaccard(answer, passage[: settings.cut], settings.jaccard_ngram)
        if score <= settings.jaccard_threshold:
            return (
                "answer_low_overlap",
                f"{settings.jaccard_ngram}-gram Jaccard {score:.3f} <= {settings.jaccard_threshold}",
            )
    return None


@dataclass
class _Call:
    """The outcome of one call with its content retries."""

    text: str | None = None  # the reply that passed the filters
    tries: int = 0
    requests: int = 0
    last_reply: str | None = None
    problems: list[Problem] = field(default_factory=list)
    finish_reason: str | None = None


async def _call_until_usable(
    call: _Call, client: ChatClient, prompt: str, attempts: int, params: dict[str, Any], check
) -> None:
    """Up to ``attempts`` calls until a reply passes ``check`` (content retries; transport retries are the client's).

    Fills ``call`` as it goes, so its counts stand when an EndpointError cuts it short.
    """
    while call.tries < attempts:
        call.tries += 1
        result = await client.chat([{"role": "user", "content": prompt}], **params)
        call.requests += result.attempts
        call.last_reply = clean_reply(result.text)
        if (problem := check(call.last_reply)) is None:
            call.text, call.finish_reason = call.last_reply, result.finish_reason
            return
        call.problems.append(problem)


async def unify_unit(
    unit: Unit, client: ChatClient, question: QuestionSettings, answer: AnswerSettings
) -> dict[str, Any]:
    """Both calls for one passage; returns its output record (``reason`` set when rejected).

    Raises:
        EndpointError: a fatal one (bad key, wrong URL or model, nothing listening); other failures reject the passage.
    """
    origin = {} if unit.source_id is None else {"source_id": unit.source_id, "chunk": unit.chunk, "chunks": unit.chunks}
    if not unit.text.strip():
        record = {"id": unit.id, "reason": "empty_passage", "detail": "the passage is empty", "text": unit.text}
        meta = {"attempts": {"question": 0, "answer": 0}, "requests": 0, "seconds": 0.0}
        return {**record, **origin, "model": client.settings.model, **meta}
    started = time.perf_counter()
    asked, answered = _Call(), _Call()
    endpoint_problem: Problem | None = None
    try:
        await _call_until_usable(
            asked,
            client,
            question.prompt.format(passage=unit.text[: question.cut]),
            question.attempts,
            question.params,
            lambda reply: check_question(reply, question),
        )
        if asked.text is not None:
            await _call_until_usable(
                answered,
                client,
                answer.prompt.format(question=asked.text, passage=unit.text[: answer.cut]),
                answer.attempts,
                answer.params,
                lambda reply: check_answer(reply, unit.text, answer),
            )
    except EndpointError as error:
        if error.fatal or (error.kind == "connection error" and client.successes == 0):
            raise  # nothing answered yet and nothing listens: a wrong URL or a server that is down, not this passage
        endpoint_problem = (ENDPOINT_ERROR, f"{error.kind}: {error}")
    meta = {
        "model": client.settings.model,
        "attempts": {"question": asked.tries, "answer": answered.tries},
        "requests": asked.requests + answered.requests,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if answered.text is not None:
        record = {"id": unit.id, "question": asked.text, "answer": answered.text, "text": unit.text, **origin}
        return {**record, **meta, "finish_reason": answered.finish_reason}
    last = answered if asked.text is not None else asked
    problems = last.problems + ([endpoint_problem] if endpoint_problem else [])
    record = {"id": unit.id, "reason": problems[-1][0], "detail": " | ".join(f"{r}: {d}" for r, d in problems)}
    record["text"] = unit.text
    if asked.text is not None:
        record["question"] = asked.text
    if endpoint_problem is None and last.last_reply is not None:
        record["reply"] = last.last_reply  # the last reply the filters refused, for tuning them
    return {**record, **origin, **meta}


# ----- the run -----


@dataclass
class RunCounts:
    """What this run did."""

    accepted: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    consecutive_endpoint_errors: int = 0


async def _run(
    units: Iterator[Unit],
    todo: int,
    client: ChatClient,
    question: QuestionSettings,
    answer: AnswerSettings,
    accepted_out: JsonlAppender,
    rejected_out: JsonlAppender,
    workers: int,
    max_consecutive_endpoint_errors: int,
    progress: bool,
    log_every: float,
) -> RunCounts:
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    counts = RunCounts()
    bar = tqdm(total=todo, unit="passage", disable=not progress, dynamic_ncols=True, smoothing=0.05)
    started = last_log = time.monotonic()

    async def worker() -> None:
        nonlocal last_log
        for unit in units:  # one generator shared by every worker: each unit is taken exactly once
            record = await unify_unit(unit, client, question, answer)
            reason = record.get("reason")
            await asyncio.to_thread((rejected_out if reason else accepted_out).append, record)
            if reason:
                counts.rejected += 1
                counts.reasons[reason] += 1
            else:
                counts.accepted += 1
            counts.consecutive_endpoint_errors = (
                counts.consecutive_endpoint_errors + 1 if reason == ENDPOINT_ERROR else 0
            )
            bar.set_postfix(accepted=counts.accepted, rejected=counts.rejected, retries=client.retries, refresh=False)
            bar.update(1)
            if counts.consecutive_endpoint_errors >= max_consecutive_endpoint_errors:
                raise UnifyError(
                    f"the endpoint failed {counts.consecutive_endpoint_errors} passages in a row (last: "
                    f"{record['detail'][:200]}); stopping. Check the server, then rerun with "
                    "retry_endpoint_failures=true to redo the passages it failed"
                )
            if log_every and time.monotonic() - last_log >= log_every:
                last_log = time.monotonic()
                done = counts.accepted + counts.rejected
                rate = done / (last_log - started)
                log.info(
                    "%d/%d passages (%d accepted, %d rejected), %.2f/s, about %s left",
                    done,
                    todo,
                    counts.accepted,
                    counts.rejected,
                    rate,
                    _duration((todo - done) / rate) if rate else "?",
                )

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    try:
        with logging_redirect_tqdm():  # log lines print above the bar instead of through it
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    finally:
        for task in tasks:
            task.cancel()
        bar.close()
    return counts


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


# ----- config -----


def _settings(cls, node: Any) -> Any:
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
        reserved = {"model", "messages", "stream", "n"} & set(
            node.params if isinstance(node.params, DictConfig) else []
        )
        if reserved:
            problems.append(f"{call}.params sets {sorted(reserved)}: the client sets these itself; remove them")
        if not isinstance(node.params, DictConfig):
            problems.append(
                f"{call}.params={node.params!r} must be a mapping of request fields, e.g. {{max_tokens: 512}}"
            )
    if not isinstance(cfg.question.max_chars, int) or cfg.question.max_chars < 1:
        problems.append(f"question.max_chars={cfg.question.max_chars!r} must be an integer >= 1 (the paper's is 180)")
    if not 0 <= cfg.question.min_chinese_share <= 1:
        problems.append(f"question.min_chinese_share={cfg.question.min_chinese_share!r} must be in [0, 1]")
    threshold = cfg.answer.jaccard_threshold
    if threshold is not None and not (isinstance(threshold, int | float) and 0 <= threshold < 1):
        problems.append(f"answer.jaccard_threshold={threshold!r} must be null (off) or in [0, 1), e.g. 0.5")
    if not isinstance(cfg.answer.jaccard_ngram, int) or cfg.answer.jaccard_ngram < 1:
        problems.append(f"answer.jaccard_ngram={cfg.answer.jaccard_ngram!r} must be an integer >= 1")
    endpoint = _settings(EndpointSettings, cfg.endpoint)
    problems += endpoint.problems("endpoint")
    if reserved := {"model", "messages", "stream", "n"} & set(endpoint.params or {}):
        problems.append(f"endpoint.params sets {sorted(reserved)}: the client sets these itself; remove them")
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


def unify(cfg: DictConfig) -> dict[str, Any]:
    """Unify every unfinished passage of ``cfg.input`` into ``cfg.output``; returns the run's statistics.

    Raises:
        InputError: bad config or input (every problem listed), before any request is sent.
        UnifyError: the endpoint failed fatally or too often in a row; finished passages stay recorded.
    """
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # one INFO line per request otherwise
    if problems := config_problems(cfg):
        raise InputError("bad unify config:\n  " + "\n  ".join(problems))
    endpoint = _settings(EndpointSettings, cfg.endpoint)
    reader = _settings(ReaderSettings, cfg.reader)
    split = _settings(SplitSettings, cfg.split)
    question = _settings(QuestionSettings, cfg.question)
    answer = _settings(AnswerSettings, cfg.answer)
    output, rejected = Path(cfg.output), rejected_path(cfg)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    log.info(
        "API key: %s",
        f"read from ${endpoint.api_key_env}"
        if endpoint.has_api_key()
        else f"${endpoint.api_key_env} is empty; sending a placeholder (fine for local servers)",
    )

    if cfg.retry_endpoint_failures and (dropped := drop_records(rejected, ENDPOINT_ERROR)):
        log.info("retry_endpoint_failures: %d passages rejected on endpoint errors will be redone", dropped)
    finished = recover(output)
    for key, reason in recover(rejected).items():
        if key in finished:
            log.warning("id %r is in both %s and %s; counting it as accepted", key, output, rejected)
        finished.setdefault(key, reason)
    summary = scan_input(input_paths(cfg), reader, split, finished, answer.cut)
    if summary.orphans:
        log.warning(
            "%d finished ids are not in this input: did the input or split settings change? they stay recorded",
            summary.orphans,
        )
    if summary.longer_than_answer_cut and split.max_chars is None:
        log.info(
            "%d passages are longer than answer.cut=%d characters: their tails are never read; split.max_chars=%d "
            "cuts them into paragraph-sized chunks instead",
            summary.longer_than_answer_cut,
            answer.cut,
            answer.cut,
        )
    todo = summary.todo if cfg.limit is None else min(summary.todo, cfg.limit)
    log.info(
        "%d passages in the input, %d finished before, %d to do -> %s (rejected: %s)",
        summary.units,
        summary.units - summary.todo,
        todo,
        output,
        rejected,
    )

    pending = (u for _, u in iter_units(input_paths(cfg), reader, split) if u.key not in finished)
    units = itertools.islice(pending, todo)
    client = ChatClient(endpoint)
    accepted_out, rejected_out = JsonlAppender(output, cfg.fsync), JsonlAppender(rejected, cfg.fsync)
    started = time.perf_counter()

    async def go() -> RunCounts:
        try:
            return await _run(
                units,
                todo,
                client,
                question,
                answer,
                accepted_out,
                rejected_out,
                workers=max(1, min(cfg.passages_in_flight or endpoint.max_concurrency, max(todo, 1))),
                max_consecutive_endpoint_errors=cfg.max_consecutive_endpoint_errors,
                progress=cfg.progress,
                log_every=cfg.log_every,
            )
        finally:
            await client.close()

    try:
        counts = asyncio.run(go())
    except EndpointError as error:
        raise UnifyError(
            f"stopped: the endpoint at {endpoint.base_url or 'api.openai.com'} failed ({error}); check "
            f"endpoint.base_url, endpoint.model and ${endpoint.api_key_env}. Finished passages are kept; rerun "
            "to continue"
        ) from None
    finally:
        accepted_out.close()
        rejected_out.close()
    seconds = time.perf_counter() - started
    before = Counter(finished.values())
    stats = {
        "input_units": summary.units,
        "finished_before": summary.units - summary.todo,
        "processed": counts.accepted + counts.rejected,
        "accepted": counts.accepted,
        "rejected": counts.rejected,
        "reasons": dict(counts.reasons.most_common()),
        "accepted_total": before["accepted"] + counts.accepted,
        "rejected_total": sum(before.values()) - before["accepted"] + counts.rejected,
        "remaining": summary.todo - counts.accepted - counts.rejected,
        "requests": client.requests,
        "retries": client.retries,
        "failures": dict(client.failures.most_common()),
        "seconds": round(seconds, 2),
        "passages_per_second": round((counts.accepted + counts.rejected) / seconds, 3) if seconds else None,
        "model": endpoint.model,
        "output": str(output),
        "rejected_path": str(rejected),
    }
    log.info(
        "done: %d accepted, %d rejected %s in %.1fs (%d requests, %d retries)\n  output: %s\n  rejected: %s",
        counts.accepted,
        counts.rejected,
        stats["reasons"],
        seconds,
        client.requests,
        client.retries,
        output,
        rejected,
    )
    if counts.reasons.get(ENDPOINT_ERROR):
        log.warning(
            "%d passages failed on endpoint errors; rerun with retry_endpoint_failures=true to redo them",
            counts.reasons[ENDPOINT_ERROR],
        )
    run_dir = cfg.get("paths", {}).get("run_dir")
    if run_dir:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return stats


def main() -> None:
    """``python -m huatuo.unify`` / ``huatuo-unify``: unify a corpus into instruction pairs."""
    import hydra

    from huatuo import conf_dir

    @hydra.main(version_base="1.3", config_path=conf_dir(), config_name="unify")
    def _main(cfg: DictConfig) -> int:
        return unify(cfg)["accepted"]

    _main()


if __name__ == "__main__":
    main()
