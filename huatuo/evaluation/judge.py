"""Pairwise LLM-as-judge: two models' answers to the same open questions, compared in both orders.

Each question is judged twice, with model A shown first (order ``ab``) and with model B shown first (order
``ba``), so a judge's preference for a position cancels out. The judge writes a short comparison and names its
verdict about Assistant 1: ``better than``, ``worse than`` or ``equal to`` Assistant 2. ``parse_verdict`` reads it
as the paper's judge script did, anywhere in the reply; a reply without a verdict is asked again up to
``parse_retries`` times, then recorded as a parse failure and reported, never counted as a tie.

The rubric (``huatuo.evaluation.rubric``) is ours or a user's file (``eval.judge.prompt_file``).

The two orders combine into win / tie / loss for model A by one of two rules:

- ``sum`` (the paper's): each verdict gives the preferred model 10 points, or 5 each for ``equal``; the model
  with more points over both orders wins. A win in one order and a tie in the other is a win.
- ``agree`` (FastChat's): a model wins only when both orders name it; any disagreement is a tie.

Judgments go to an append-only JSONL file keyed by question id and order, with a fingerprint of everything the
judge saw (the rubric template, the prompt made from it, the judge model). Re-running skips every key already judged
with the same fingerprint, so an interrupted run resumes and changed answers or a changed rubric are judged again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from huatuo.core.jsonl import JsonlAppender, latest_by_key
from huatuo.core.logs import get_logger
from huatuo.evaluation.rubric import Rubric, fill
from huatuo.unify.endpoint import ChatClient, EndpointError

log = get_logger(__name__)

Verdict = Literal["better", "worse", "equal"]
Rule = Literal["sum", "agree"]
ORDERS = ("ab", "ba")

# The paper's verdict forms: the relation may start with a capital and may be wrapped in backticks; nothing else
# varies (one space between words, "Assistant" capitalised), so "assistant 1 IS BETTER" is no verdict.
_RELATION = r"(`?)([bB]etter than|[wW]orse than|[eE]qual to)\1"
_ABOUT_1 = re.compile(rf"Assistant 1 is {_RELATION} Assistant 2")
_ABOUT_2 = re.compile(rf"Assistant 2 is {_RELATION} Assistant 1")
_EQUAL_IN = re.compile(r"are equal in")


@dataclass
class JudgeItem:
    """One question with both models' replies (one reply per user turn)."""

    id: str
    turns: list[str]
    replies_a: list[str]
    replies_b: list[str]


@dataclass
class JudgeSettings:
    """How verdicts are asked for and combined (``eval.*`` of a judge suite)."""

    rule: Rule = "sum"
    parse_retries: int = 2  # extra requests when a reply has no readable verdict
    rubric: Rubric = field(default_factory=Rubric)  # ours, or a user's file (eval.judge.prompt_file)


def parse_verdict(reply: str) -> Verdict | None:
    """The verdict about Assistant 1, read with the paper's precedence, or None when the reply states none.

    1. The last ``Assistant 1 is better than|worse than|equal to Assistant 2`` anywhere in the reply (the relation
       may start with a capital letter and may be wrapped in backticks: ``Assistant 1 is `Better than` Assistant 2``);
    2. else the last ``Assistant 2 is ... Assistant 1``, mirrored (Assistant 2 better means Assistant 1 worse);
    3. else ``are equal in`` ("both answers are equal in quality") is ``equal``.
    """
    relation = {"better than": "better", "worse than": "worse", "equal to": "equal"}
    first = _ABOUT_1.findall(reply)
    if first:
        return relation[first[-1][1].lower()]  # type: ignore[return-value]
    second = _ABOUT_2.findall(reply)
    if second:
        mirrored: dict[str, Verdict] = {"better": "worse", "worse": "better", "equal": "equal"}
        return mirrored[relation[second[-1][1].lower()]]
    return "equal" if _EQUAL_IN.search(reply) else None


def points(verdict: Verdict, order: str) -> tuple[int, int]:
    """(points for A, points for B) of one verdict, the paper's 10 / 0 / 5-5 scale."""
    first, second = {"better": (10, 0), "worse": (0, 10), "equal": (5, 5)}[verdict]
    return (first, second) if order == "ab" else (second, first)


def combine(verdict_ab: Verdict, verdict_ba: Verdict, rule: Rule = "sum") -> Literal["win", "tie", "loss"]:
    """Model A's outcome from the verdicts of both orders (``sum``: the paper's rule; ``agree``: FastChat's)."""
    a_ab, b_ab = points(verdict_ab, "ab")
    a_ba, b_ba = points(verdict_ba, "ba")
    if rule == "sum":
        a, b = a_ab + a_ba, b_ab + b_ba
        return "win" if a > b else "loss" if b > a else "tie"
    if rule == "agree":
        first = "win" if a_ab > b_ab else "loss" if b_ab > a_ab else "tie"
        second = "win" if a_ba > b_ba else "loss" if b_ba > a_ba else "tie"
        return first if first == second else "tie"
    raise ValueError(f"unknown rule {rule!r}; use sum or agree")


def transcript(turns: Sequence[str], replies: Sequence[str]) -> str:
    """A conversation as the judge reads it: ``Patient:`` / ``Assistant:`` paragraphs."""
    return "\n\n".join(f"Patient: {q}\nAssistant: {a}" for q, a in zip(turns, replies, strict=True))


def judge_prompt(item: JudgeItem, order: str, rubric: Rubric | None = None) -> str:
    """The judge's message for one order (``ab``: A is Assistant 1).

    A conversation's ``{answer_1}``/``{answer_2}`` are the two transcripts and its ``{question}`` the patient's turns,
    one per line.
    """
    rubric = rubric or Rubric()
    first, second = (item.replies_a, item.replies_b) if order == "ab" else (item.replies_b, item.replies_a)
    if len(item.turns) == 1:
        values = {"question": item.turns[0], "answer_1": first[0], "answer_2": second[0]}
        return fill(rubric.template(multi_turn=False), values)
    values = {
        "question": "\n".join(item.turns),
        "answer_1": transcript(item.turns, first),
        "answer_2": transcript(item.turns, second),
    }
    return fill(rubric.template(multi_turn=True), values)


def fingerprint(prompt: str, judge_model: str, rubric: str = "", params: Mapping[str, Any] | None = None) -> str:
    """Identifies what was judged: a changed answer, rubric template, judge model or request setting (temperature,
    max_tokens) means a new judgment."""
    settings = json.dumps(dict(params or {}), sort_keys=True, default=str)
    return hashlib.sha256(f"{judge_model}\n{settings}\n{rubric}\n{prompt}".encode()).hexdigest()[:16]


def read_judgments(path: str | Path) -> dict[str, dict[str, Any]]:
    """The latest judgment per ``id|order`` key of an append-only JSONL file (a torn last line is ignored)."""
    return latest_by_key(path, "key")


async def _judge_one(
    client: ChatClient, prompt: str, settings: JudgeSettings
) -> tuple[Verdict | None, str, int, str | None]:
    reply, error = "", None
    for attempt in range(1, settings.parse_retries + 2):
        try:
            result = await client.chat([{"role": "user", "content": prompt}])  # eval.judge.params via the client
        except EndpointError as err:
            return None, reply, attempt, f"endpoint: {err.kind}"
        reply = result.text
        verdict = parse_verdict(reply)
        if verdict is not None:
            return verdict, reply, attempt, None
        error = "no verdict"
    return None, reply, settings.parse_retries + 1, error


async def judge_pairs(
    items: Sequence[JudgeItem],
    client: ChatClient,
    settings: JudgeSettings,
    judgments_path: str | Path,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Judge every item in both orders, skipping keys already judged; returns the latest judgment per key."""
    path = Path(judgments_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = read_judgments(path)
    judge_model = client.settings.model
    pending = []
    for item in items:
        template = settings.rubric.template(multi_turn=len(item.turns) > 1)
        for order in ORDERS:
            prompt = judge_prompt(item, order, settings.rubric)
            key, print_ = f"{item.id}|{order}", fingerprint(prompt, judge_model, template, client.settings.params)
            old = done.get(key)
            if old and old.get("verdict") and old.get("fingerprint") == print_:
                continue
            pending.append((item, order, key, print_, prompt))
    log.info(
        "judging %d of %d (question, order) pairs; %d already judged",
        len(pending),
        2 * len(items),
        2 * len(items) - len(pending),
    )

    with JsonlAppender(path, fsync=False) as handle:

        async def run(item: JudgeItem, order: str, key: str, print_: str, prompt: str) -> None:
            verdict, reply, attempts, error = await _judge_one(client, prompt, settings)
            record = {
                "key": key,
                "id": item.id,
                "order": order,
                "fingerprint": print_,
                "judge_model": judge_model,
                "verdict": verdict,
                "attempts": attempts,
                "error": error,
                "reply": reply,
            }
            handle.append(record)  # each judgment is one whole line before the next: an interrupted run loses nothing
            done[key] = record
            if progress:
                progress(1)

        await asyncio.gather(*(run(*p) for p in pending))
    return done


def summarize_judgments(
    items: Sequence[JudgeItem], judgments: Mapping[str, Mapping[str, Any]], rule: Rule
) -> dict[str, Any]:
    """Win / tie / loss of model A over the items judged in both orders, and everything that went wrong."""
    outcomes: Counter = Counter()
    per_order = {order: Counter() for order in ORDERS}
    errors: Counter = Counter()
    incomplete, per_item, agree = [], [], 0
    for item in items:
        verdicts = {}
        for order in ORDERS:
            record = judgments.get(f"{item.id}|{order}") or {}
            verdicts[order] = record.get("verdict")
            per_order[order][record.get("verdict") or "failed"] += 1
            if not record.get("verdict"):
                errors[record.get("error") or "not judged"] += 1
        if verdicts["ab"] and verdicts["ba"]:
            outcome = combine(verdicts["ab"], verdicts["ba"], rule)
            outcomes[outcome] += 1
            same_winner = combine(verdicts["ab"], verdicts["ba"], "agree") != "tie"
            agree += same_winner or verdicts["ab"] == verdicts["ba"] == "equal"
        else:
            outcome = None
            incomplete.append(item.id)
        per_item.append({"id": item.id, "ab": verdicts["ab"], "ba": verdicts["ba"], "outcome": outcome})
    judged = sum(outcomes.values())
    rate = {k: (outcomes[k] / judged if judged else 0.0) for k in ("win", "tie", "loss")}
    return {
        "rule": rule,
        "items": len(items),
        "judged": judged,
        "win": outcomes["win"],
        "tie": outcomes["tie"],
        "loss": outcomes["loss"],
        "win_rate": rate["win"],
        "tie_rate": rate["tie"],
        "loss_rate": rate["loss"],
        "incomplete": incomplete,
        "failures": dict(errors),
        "per_order": {order: dict(counts) for order, counts in per_order.items()},
        "order_consistency": agree / judged if judged else 0.0,
        "per_item": per_item,
    }


def judge_markdown(results: Mapping[str, Any]) -> str:
    """``results.md`` of a judge run."""
    s = results["summary"]
    lines = [
        f"# {results['suite']}: {results['model_a']} vs {results['model_b']}",
        "",
        f"- judge: `{results['judge_model']}`; rule: `{s['rule']}`; questions: {s['items']}; "
        f"judged in both orders: {s['judged']}",
        "",
        f"| {results['model_a']} | win | tie | loss |",
        "| --- | ---: | ---: | ---: |",
        f"| count | {s['win']} | {s['tie']} | {s['loss']} |",
        f"| % | {100 * s['win_rate']:.1f} | {100 * s['tie_rate']:.1f} | {100 * s['loss_rate']:.1f} |",
        "",
        f"- order consistency (both orders agree on the winner, or both say equal): "
        f"{100 * s['order_consistency']:.1f}%",
        f"- verdicts per order: {json.dumps(s['per_order'], ensure_ascii=False)}",
        f"- incomplete (a verdict missing after retries, not counted): {len(s['incomplete'])}"
        + (f" — {', '.join(s['incomplete'][:20])}" if s["incomplete"] else ""),
        f"- failures by reason: {json.dumps(s['failures'], ensure_ascii=False) if s['failures'] else 'none'}",
        "",
        f"Judgments (append-only, resumable): `{results['files']['judgments']}`.",
        "",
    ]
    return "\n".join(lines)
