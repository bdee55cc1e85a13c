"""One training record of any supported layout -> the turn list ``[q1, a1, q2, a2, ...]``, or why it cannot be."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_USER_ROLES = {"user", "human"}
_ASSISTANT_ROLES = {"assistant", "gpt", "bot", "model"}

Checked = tuple[list[str] | None, tuple[str, str] | None]


def check_turns(record: Any) -> Checked:
    """Validate a turn list; returns ``(turns, None)`` or ``(None, (kind, detail))``."""
    if not isinstance(record, list):
        return None, ("not a list of turns", f"expected a list of turns, got {type(record).__name__}")
    if not record:
        return None, ("empty conversation", "the conversation has no turns; remove the record")
    for i, turn in enumerate(record):
        if not isinstance(turn, str):
            return None, ("non-string turn", f"turn {i} is {type(turn).__name__}, not a string; make it text")
        if not turn.strip():
            return None, ("empty turn", f"turn {i} is empty or whitespace; fill it in or remove the round")
    if len(record) % 2:
        return None, (
            "ends on a question",
            f"{len(record)} turns: the last question has no answer to learn from; add the answer or drop the question",
        )
    return record, None


def _text_of(content: Any) -> Any:
    """OpenAI content: a string, or the joined text of ``[{"type": "text", "text": ...}]`` parts."""
    if isinstance(content, list) and all(isinstance(p, Mapping) for p in content):
        kinds = {p.get("type") for p in content}
        if kinds <= {"text"}:
            return "".join(str(p.get("text", "")) for p in content)
    return content


def _from_roles(messages: Any, role_key: str, text_key: str) -> Checked:
    if not isinstance(messages, list):
        return None, ("not a list of messages", f"expected a list of messages, got {type(messages).__name__}")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return None, ("not a list of messages", f"message {i} is {type(message).__name__}, not an object")
        role = message.get(role_key)
        if role == "system":
            return None, (
                "system message",
                "the HuatuoGPT-II format has no system prompt; fold it into the first question",
            )
        expected = _USER_ROLES if i % 2 == 0 else _ASSISTANT_ROLES
        if role not in expected:
            return None, (
                "roles out of order",
                f"message {i} has {role_key}={role!r}; roles must alternate user/assistant, starting with the user",
            )
        content = _text_of(message.get(text_key))
        if isinstance(content, list):
            return None, ("non-text content", f"message {i} has non-text parts; keep only text parts")
        turns.append(content)
    return check_turns(turns)


def record_to_turns(record: Any, fmt: str) -> Checked:
    """Turn one record of any supported layout into ``[q1, a1, ...]``; returns ``(turns, None)`` or a problem."""
    if isinstance(record, list):
        if fmt in ("sharegpt", "openai", "unify"):
            return None, ("unknown record layout", f"expected a {fmt} record (object), got a list")
        return check_turns(record)
    if not isinstance(record, Mapping):
        return None, ("unknown record layout", f"expected a list of turns or an object, got {type(record).__name__}")
    if "conversations" in record and fmt in ("auto", "jsonl", "sharegpt", "parquet", "hf"):
        return _from_roles(record["conversations"], "from", "value")
    if "messages" in record and fmt in ("auto", "jsonl", "openai", "parquet", "hf"):
        return _from_roles(record["messages"], "role", "content")
    if "turns" in record and fmt in ("auto", "jsonl", "parquet", "hf"):
        return check_turns(record["turns"])
    if "question" in record and "answer" in record and fmt in ("auto", "jsonl", "unify", "parquet", "hf"):
        return check_turns([record["question"], record["answer"]])
    wanted = {
        "sharegpt": "'conversations'",
        "openai": "'messages'",
        "unify": "'question' and 'answer'",
    }.get(fmt, "'turns', 'conversations', 'messages' or 'question'+'answer'")
    return None, ("unknown record layout", f"record has keys {sorted(map(str, record))[:6]}, expected {wanted}")


RECORD_COLUMNS = ({"turns"}, {"conversations"}, {"messages"}, {"question", "answer"})
