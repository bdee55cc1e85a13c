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
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from huatuo.core.errors import HuatuoError, raise_problems
from huatuo.core.jsonl import JsonlAppender
from huatuo.unify.endpoint import ChatClient, EndpointError, EndpointSettings
from huatuo.unify.filters import AnswerSettings, Problem, QuestionSettings, check_answer, check_question, clean_reply
from huatuo.unify.journal import drop_records, recover
from huatuo.unify.passages import ReaderSettings, SplitSettings, Unit, iter_units, scan_input
from huatuo.unify.validation import config_problems, input_paths, read_settings, rejected_path

# A plain logger: this stage runs in one process, and importing Lightning for a rank filter costs seconds.
log = logging.getLogger("huatuo.unify")

ENDPOINT_ERROR = "endpoint_error"


class UnifyError(HuatuoError, RuntimeError):
    """The run stopped before the end (a fatal endpoint error, or too many endpoint failures in a row)."""


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


def unify(cfg: DictConfig) -> dict[str, Any]:
    """Unify every unfinished passage of ``cfg.input`` into ``cfg.output``; returns the run's statistics.

    Raises:
        ConfigError, DataError: bad config or input (every problem listed), before any request is sent.
        UnifyError: the endpoint failed fatally or too often in a row; finished passages stay recorded.
    """
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # one INFO line per request otherwise
    raise_problems("bad unify config", config_problems(cfg))
    endpoint = read_settings(EndpointSettings, cfg.endpoint)
    reader = read_settings(ReaderSettings, cfg.reader)
    split = read_settings(SplitSettings, cfg.split)
    question = read_settings(QuestionSettings, cfg.question)
    answer = read_settings(AnswerSettings, cfg.answer)
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
