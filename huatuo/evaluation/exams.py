"""Multiple-choice questions: one ``Question`` type for every exam, and how one raw record becomes one.

Field spellings accepted per record: options as an ``option``/``options``/``Options``/``choices`` dict, a list of
``{key, value}`` (MedQA as converted by BigBio), a list of strings, an ``"A xxx\\nB yyy"`` string or a JSON string
of a dict; or one column per letter (``A``..``G``) or ``opa``..``ope`` (MedMCQA). The gold answer as letters
(``"ACD"``, ``"A、C"``, ``["A","C"]``), ``answer_idx`` (MedQA, preferred over its answer text), ``cop``
(MedMCQA, 0- or 1-based), or the exact text of one option. Empty options are dropped. Files and hub splits are
``huatuo.evaluation.exam_files``; the prompt is ``huatuo.evaluation.prompt``.

Two views of a record's text: the normalised one (NFKC, stripped) that everything reads answers and letters from,
and ``Written``, the text exactly as the record has it, which the paper's prompt is built from.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from huatuo.core.errors import DataError

OnError = Literal["raise", "skip"]

QUESTION_KEYS = ("question", "Question", "题目", "sent1")
OPTION_KEYS = ("option", "options", "Options", "choices", "选项")
ANSWER_KEYS = ("answer_idx", "answer", "Answer", "答案", "correct_answer", "cop")
TYPE_KEYS = ("question_type", "题型")
SUBJECT_KEYS = ("subject", "exam_subject", "subject_name", "科目")
ID_KEYS = ("id", "ID", "qid", "question_id")
_OPTION_LINE = re.compile(r"^\s*\(?([A-Za-z])\s*[).．.、:：]?\s*(.*?)\s*$")
_ANSWER_SEPARATORS = re.compile(r"[\s,，、;；/|和及与\[\]'\"()]")
_MULTI_TYPES = ("多项", "多选")


class RecordError(DataError):
    """One record that is not a readable multiple-choice question."""


@dataclass(frozen=True)
class Written:
    """A record's own text, byte for byte (nothing stripped or normalised): what the paper's prompt is made of."""

    question: str
    question_type: str | None  # None: the record has no type field (or it is null); "": it has one, empty
    options: tuple[tuple[str, str], ...]  # (key, text) in the record's own order; only empty texts are left out


@dataclass(frozen=True)
class Question:
    """One multiple-choice question, normalised: option letters in order, answer letters sorted."""

    uid: str  # unique in the run: <dataset>/<source id or file:index>
    dataset: str
    subject: str
    question_type: str | None
    question: str
    options: dict[str, str]
    answer: str  # sorted letters, e.g. "B" or "ACD"
    multi: bool  # several letters may be right (多项选择题), scored by exact set match
    source: str  # file:index (or hub name:index), for error messages and the per-question report
    written: Written  # the record's text as written, for the paper-exact prompt

    @property
    def answer_count(self) -> int:
        """How many letters the right answer has."""
        return len(self.answer)


@dataclass
class Exam:
    """The questions of one suite and what was left out while reading it."""

    questions: list[Question] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {source, dataset, reason}: not scored, and why
    open_items: int = 0  # records without options in the HuatuoGPT-II layout (open questions, not scored)
    filtered: int = 0  # readable questions left out on purpose (eval.subjects, eval.limit)

    def extend(self, other: Exam) -> None:
        """Append another exam's questions and counts."""
        self.questions += other.questions
        self.skipped += other.skipped
        self.open_items += other.open_items
        self.filtered += other.filtered


def normalize_text(value: Any) -> str:
    """NFKC-normalised, stripped text ("Ａ．" -> "A."); None and NaN become ""."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return unicodedata.normalize("NFKC", str(value)).strip()


def first_field(record: Mapping, keys: Iterable[str]) -> tuple[str | None, Any]:
    for key in keys:
        if key in record and record[key] is not None and normalize_text(record[key]) != "":
            return key, record[key]
    return None, None


def _options_from_value(value: Any, normalize: bool = True) -> dict[str, Any]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                return _options_from_value(json.loads(text), normalize)
            except json.JSONDecodeError:
                pass
        options = {}
        for line in (normalize_text(text) if normalize else text).splitlines():
            if not line.strip():
                continue
            match = _OPTION_LINE.match(line)
            if not match:
                raise RecordError(f"cannot read option line {line[:40]!r}; expected 'A. text' or 'A text'")
            key = match.group(1).upper() if normalize else match.group(1)
            options[key] = match.group(2)
        return options
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list | tuple):
        if all(isinstance(item, Mapping) and "key" in item and "value" in item for item in value):
            return {str(item["key"]): item["value"] for item in value}
        if all(not isinstance(item, Mapping | list | tuple) for item in value):
            return {chr(ord("A") + i): item for i, item in enumerate(value)}
    raise RecordError(f"options of type {type(value).__name__} are not a dict, list or 'A. text' lines")


def _raw_options(record: Mapping, normalize: bool = True) -> dict[str, Any]:
    key, value = first_field(record, OPTION_KEYS)
    if key is not None:
        return _options_from_value(value, normalize)
    if any(f"op{c}" in record for c in "abcde"):  # MedMCQA
        return {c.upper(): record.get(f"op{c}") for c in "abcde" if f"op{c}" in record}
    return {letter: record[letter] for letter in "ABCDEFG" if letter in record}


def read_options(record: Mapping) -> dict[str, str]:
    """The options of a record as ``{letter: text}`` in letter order, empty ones dropped."""
    raw = _raw_options(record)
    options = {}
    for letter, text in raw.items():
        letter = normalize_text(letter).upper()
        if not re.fullmatch(r"[A-Z]", letter):
            raise RecordError(f"option key {letter!r} is not a single letter A-Z")
        text = normalize_text(text)
        if text:
            options[letter] = text
    return dict(sorted(options.items()))


def gold_letters(record: Mapping, options: Mapping[str, str], cop_base: int | None = None) -> str:
    """The right answer as sorted letters, checked against the options."""
    key, value = first_field(record, ANSWER_KEYS)
    if key is None:
        raise RecordError("no answer (fields tried: " + ", ".join(ANSWER_KEYS) + ")")
    if key == "cop":
        if cop_base is None:
            raise RecordError("cop is given but whether it counts from 0 or 1 is unknown; set eval.cop_base")
        try:
            index = int(value) - cop_base
        except (TypeError, ValueError):
            raise RecordError(f"cop={value!r} is not an integer") from None
        letters = sorted(options)
        if not 0 <= index < len(letters):
            raise RecordError(f"cop={value!r} is outside the {len(letters)} options (cop_base={cop_base})")
        return letters[index]
    if isinstance(value, list | tuple):
        value = "".join(normalize_text(v) for v in value)
    text = normalize_text(value)
    letters = _ANSWER_SEPARATORS.sub("", text).upper()
    is_letters = re.fullmatch(r"[A-Z]+", letters) is not None
    if is_letters and all(letter in options for letter in letters):
        return "".join(sorted(set(letters)))
    matching = [letter for letter, option in options.items() if option == text]
    if len(matching) == 1:  # MedQA's "answer" holds the option text
        return matching[0]
    if is_letters and len(letters) <= max(len(options), 1):
        missing = "".join(sorted({letter for letter in letters if letter not in options}))
        raise RecordError(
            f"answer {text!r} names option(s) {missing} that the record does not have "
            f"(options: {''.join(options) or 'none'}; empty options are dropped)"
        )
    raise RecordError(f"answer {text[:40]!r} is neither option letters nor the text of exactly one option")


def _as_written(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def written_text(record: Mapping) -> Written:
    """The record's question, type and options as written, as the paper's evaluation script read them.

    The type counts when the record has the field at all, even empty (the script tested for the key; a null, which
    is how hub datasets fill a field a record lacks, counts as absent). Options keep the record's keys and order and
    leave out only empty texts: an option that is only whitespace stays.
    """
    _, question = first_field(record, QUESTION_KEYS)
    type_key = next((k for k in TYPE_KEYS if k in record and record[k] is not None), None)
    options = tuple(
        (str(key), text)
        for key, value in _raw_options(record, normalize=False).items()
        if len(text := _as_written(value)) > 0
    )
    return Written(_as_written(question), None if type_key is None else _as_written(record[type_key]), options)


def portable(source: str) -> str:
    """``file:index`` with the file's folders left out (hub locations as they are): a question's id without its own
    must not depend on how the path was spelled (relative, absolute, moved), or a contamination report made with one
    spelling would flag nothing in an evaluation run with another."""
    if "://" in source:
        return source
    return Path(source).name


def record_to_question(
    record: Any,
    source: str,
    dataset: str,
    subject: str,
    subject_field: str | None = None,
    cop_base: int | None = None,
) -> Question:
    """Normalise one raw record; raises RecordError with the reason when it is not a readable question."""
    if not isinstance(record, Mapping):
        raise RecordError(f"expected an object, got {type(record).__name__}")
    _, question = first_field(record, QUESTION_KEYS)
    question = normalize_text(question)
    if not question:
        raise RecordError("no question text (fields tried: " + ", ".join(QUESTION_KEYS) + ")")
    options = read_options(record)
    if len(options) < 2:
        raise RecordError(f"only {len(options)} non-empty option(s); a multiple-choice question needs 2 or more")
    answer = gold_letters(record, options, cop_base)
    _, question_type = first_field(record, TYPE_KEYS)
    question_type = normalize_text(question_type) or None
    if subject_field:
        record_subject = normalize_text(record.get(subject_field))
    else:
        record_subject = normalize_text(first_field(record, SUBJECT_KEYS)[1])
    _, source_id = first_field(record, ID_KEYS)
    source_id = normalize_text(source_id)
    multi = len(answer) > 1 or any(marker in (question_type or "") for marker in _MULTI_TYPES)
    return Question(
        uid=f"{dataset}/{source_id or portable(source)}",
        dataset=dataset,
        subject=record_subject or subject,
        question_type=question_type,
        question=question,
        options=options,
        answer=answer,
        multi=multi,
        source=source,
        written=written_text(record),
    )
