"""Batched generation: replies to exam prompts, and answers to open questions (single- and multi-turn) for the judge.

Open questions come from a JSONL file of ``{id, question}`` (single turn) and ``{id, turns: [q1, q2, ...]}``
(multi-turn: the user turns come from the file, the model's own earlier replies form the history). Answers are
saved as JSONL ``{id, turns, replies, model}``, one line per question; the same reader also accepts the paper's
answer files (a JSON list of ``{id, query, model_output}`` where ``model_output`` is a string, or a list of
``[user, assistant]`` pairs for conversations).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from huatuo.exams import parse_jsonl
from huatuo.inference import LoadedModel
from huatuo.template import USER_PREFIX


class AnswerFileError(ValueError):
    """A question or answer file that cannot be read; the message names the file, the line and the fix."""


@dataclass
class OpenQuestion:
    """One open question: its id and the user turns (one for a single-turn question)."""

    id: str
    turns: list[str]


@dataclass
class Answers:
    """A model's replies to open questions, one list of replies (one per user turn) per question id."""

    model: str
    replies: dict[str, list[str]]
    turns: dict[str, list[str]]


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
            replies[i] = _cut_at_next_turn(text) if loaded.uses_huatuo_format else text
        if progress:
            progress(len(rows))
    return replies


def _cut_at_next_turn(text: str) -> str:
    # A model that does not stop may write the next user turn itself; that text is not part of its reply.
    return text.split("\n" + USER_PREFIX, 1)[0].split(USER_PREFIX, 1)[0].strip()


def read_questions(path: str | Path, turns: str = "any") -> list[OpenQuestion]:
    """Open questions from JSONL/JSON: ``{id, question}`` or ``{id, turns}``; ``turns`` = single | multi | any."""
    path = Path(path)
    records = _records(path)
    questions, problems = [], []
    for index, record in enumerate(records):
        where = f"{path}:{index + 1}"
        if not isinstance(record, Mapping) or "id" not in record:
            problems.append(f"{where}: expected an object with an id")
            continue
        user_turns = record.get("turns")
        if user_turns is None:
            question = record.get("question", record.get("query"))
            user_turns = [question] if question is not None else None
        if not isinstance(user_turns, list) or not user_turns or not all(isinstance(t, str) and t for t in user_turns):
            problems.append(f"{where}: needs a non-empty 'question' string or a 'turns' list of strings")
            continue
        if (turns == "single" and len(user_turns) != 1) or (turns == "multi" and len(user_turns) < 2):
            continue
        questions.append(OpenQuestion(id=str(record["id"]), turns=list(user_turns)))
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        problems.append(f"{path}: question ids repeat ({len(ids) - len(set(ids))} duplicates); ids must be unique")
    if problems:
        raise AnswerFileError("cannot read the open questions:\n  - " + "\n  - ".join(problems[:20]))
    return questions


def _records(path: Path) -> list[Any]:
    if not path.is_file():
        raise AnswerFileError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise AnswerFileError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, list):
            raise AnswerFileError(f"{path}: expected a JSON list of records")
        return data
    return parse_jsonl(text, path, AnswerFileError)


def generate_answers(
    loaded: LoadedModel,
    questions: Sequence[OpenQuestion],
    batch_size: int,
    generation: Mapping[str, Any],
    model_name: str,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Answers:
    """Answer every question turn by turn: round k of all conversations is one batched generation call."""
    replies: dict[str, list[str]] = {q.id: [] for q in questions}
    rounds = max((len(q.turns) for q in questions), default=0)
    for k in range(rounds):
        active = [q for q in questions if len(q.turns) > k]
        prompts = []
        for q in active:
            messages = []
            for user, reply in zip(q.turns[:k], replies[q.id], strict=True):
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
            messages.append({"role": "user", "content": q.turns[k]})
            prompts.append(loaded.render(messages))
        outputs = generate_texts(loaded, prompts, batch_size, generation, seed=seed + k, progress=progress)
        for q, text in zip(active, outputs, strict=True):
            replies[q.id].append(text)
    return Answers(model=model_name, replies=replies, turns={q.id: list(q.turns) for q in questions})


def write_answers(answers: Answers, path: str | Path) -> Path:
    """Save answers as JSONL ``{id, turns, replies, model}`` (what ``read_answers`` and the judge read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for qid, replies in answers.replies.items():
            record = {"id": qid, "turns": answers.turns[qid], "replies": replies, "model": answers.model}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def read_answers(path: str | Path, model_name: str | None = None) -> Answers:
    """Answers from our JSONL or the paper's JSON (``model_output`` as a string or ``[[user, reply], ...]``)."""
    path = Path(path)
    replies: dict[str, list[str]] = {}
    turns: dict[str, list[str]] = {}
    problems = []
    name = model_name
    for index, record in enumerate(_records(path)):
        where = f"{path}:{index + 1}"
        if not isinstance(record, Mapping) or "id" not in record:
            problems.append(f"{where}: expected an object with an id")
            continue
        qid = str(record["id"])
        if "replies" in record:
            user_turns, texts = record.get("turns") or [], record["replies"]
            name = name or record.get("model")
        elif isinstance(record.get("model_output"), str):
            user_turns, texts = [record.get("query", "")], [record["model_output"]]
        elif isinstance(record.get("model_output"), list):
            pairs = record["model_output"]
            if not all(isinstance(p, list | tuple) and len(p) == 2 for p in pairs):
                problems.append(f"{where}: model_output must be a string or a list of [user, reply] pairs")
                continue
            user_turns, texts = [p[0] for p in pairs], [p[1] for p in pairs]
        else:
            problems.append(f"{where}: no replies (expected 'replies' or the paper's 'model_output')")
            continue
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            problems.append(f"{where}: replies must be a list of strings")
            continue
        if qid in replies:
            problems.append(f"{where}: id {qid!r} appears twice")
            continue
        replies[qid], turns[qid] = list(texts), [str(t) for t in user_turns]
    if problems:
        raise AnswerFileError("cannot read the answers:\n  - " + "\n  - ".join(problems[:20]))
    return Answers(model=name or path.stem, replies=replies, turns=turns)
