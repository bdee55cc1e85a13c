"""The unify stage's two calls and what a usable reply is: the paper's rules (question length, no "reference" in the
answer, retries) and the optional ones (Chinese share, words that give the passage away, n-gram overlap)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)  # reasoning models (R1, Qwen3) put their thoughts inline
_LABEL = re.compile(
    r"^\s*<?\s*(?:question|answer|reply|问题|提问|回答|答案|回复)\s*>?\s*[:：]\s*", re.IGNORECASE
)  # models often echo the label the prompt ended with
_QUOTES = ('""', "“”", "「」", "''", "‘’")


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
