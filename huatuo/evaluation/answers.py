"""Batched generation: replies to exam prompts, and answers to open questions (single- and multi-turn) for the judge.

Open questions come from a JSONL file of ``{id, question}`` (single turn) and ``{id, turns: [q1, q2, ...]}``
(multi-turn: the user turns come from the file, the model's own earlier replies form the history). Answers are
saved as JSONL ``{id, turns, replies, model}``, one line per question; the same reader also accepts the paper's
answer files (a JSON list of ``{id, query, model_output}`` where ``model_output`` is a string, or a list of
``[user, assistant]`` pairs for conversations).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huatuo.core.errors import DataError, raise_problems
from huatuo.core.jsonl import read_json_records, read_jsonl, write_jsonl
from huatuo.evaluation.generation import generate_texts
from huatuo.inference.loading import LoadedModel


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
    raise_problems("cannot read the open questions", problems, DataError)
    return questions


def _records(path: Path) -> list[Any]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    data = read_json_records(path, DataError) if path.suffix == ".json" else [record for _, record in read_jsonl(path)]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


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
    records = (
        {"id": qid, "turns": answers.turns[qid], "replies": replies, "model": answers.model}
        for qid, replies in answers.replies.items()
    )
    return write_jsonl(records, path)


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
    raise_problems("cannot read the answers", problems, DataError)
    return Answers(model=name or path.stem, replies=replies, turns=turns)
