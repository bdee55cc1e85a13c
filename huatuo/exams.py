"""Multiple-choice medical exams: reading every published layout into one ``Question`` type, and the paper's prompt.

Layouts read (chosen from the file suffix and the top-level shape, never from the file name):

- a JSON list of records ``{question, option: {A..E}, answer, question_type?}`` (the pharmacist exams, CMB);
- the HuatuoGPT-II evaluation layout, one JSON object ``{dataset_name: [records]}``; records without options are
  the open questions of that file and are counted, not scored;
- JSONL (also a ``.json`` file holding one object per line, as MedMCQA ships it);
- CSV: CMMLU (``,Question,A,B,C,D,Answer``), C-Eval (``id,question,A,B,C,D,answer,explanation``), CMExam
  (``Question,Options,Answer,...`` with the options in one ``"A xxx\\nB yyy"`` cell);
- parquet (hub conversions), and any folder of the above (one file per subject for CMMLU/C-Eval).

Field spellings accepted per record: options as an ``option``/``options``/``Options``/``choices`` dict, a list of
``{key, value}`` (MedQA as converted by BigBio), a list of strings, an ``"A xxx\\nB yyy"`` string or a JSON string
of a dict; or one column per letter (``A``..``G``) or ``opa``..``ope`` (MedMCQA). The answer as letters
(``"ACD"``, ``"A、C"``, ``["A","C"]``), ``answer_idx`` (MedQA, preferred over its answer text), ``cop``
(MedMCQA, 0- or 1-based), or the exact text of one option. All text is NFKC-normalised (full-width letters and
punctuation become ASCII); empty options are dropped. A record that cannot be read raises one ``ExamDataError``
naming ``file:index`` and the reason, or with ``on_error=skip`` is skipped and counted in the report.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

OnError = Literal["raise", "skip"]
MAX_REPORTED = 20  # problems listed in one error before "... and N more"
SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
SPLIT_SUFFIX = re.compile(r"_(val|dev|test|train)$")  # C-Eval names files <subject>_<split>.csv

PROMPT = "请回答下面选择题。\n[{question_type}]{question}\n{options}"
PROMPT_WITHOUT_TYPE = "请回答下面选择题。\n{question}\n{options}"

_QUESTION_KEYS = ("question", "Question", "题目", "sent1")
_OPTION_KEYS = ("option", "options", "Options", "choices", "选项")
_ANSWER_KEYS = ("answer_idx", "answer", "Answer", "答案", "correct_answer", "cop")
_TYPE_KEYS = ("question_type", "题型")
_SUBJECT_KEYS = ("subject", "exam_subject", "subject_name", "科目")
_ID_KEYS = ("id", "ID", "qid", "question_id")
_OPTION_LINE = re.compile(r"^\s*\(?([A-Za-z])\s*[).．.、:：]?\s*(.*?)\s*$")
_ANSWER_SEPARATORS = re.compile(r"[\s,，、;；/|和及与\[\]'\"()]")
_MULTI_TYPES = ("多项", "多选")


class ExamDataError(ValueError):
    """Exam files that cannot be read; the message lists every bad record as ``file:index: reason``."""


class RecordError(ValueError):
    """One record that is not a readable multiple-choice question."""


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

    @property
    def answer_count(self) -> int:
        """How many letters the right answer has."""
        return len(self.answer)


@dataclass
class Exam:
    """The questions of one suite and what was left out while reading it."""

    questions: list[Question] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {source, reason}
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


def mcq_prompt(question: Question) -> str:
    """The paper's user message: instruction, ``[question_type]question``, then ``A. text`` lines."""
    options = "\n".join(f"{letter}. {text}" for letter, text in question.options.items())
    if question.question_type:
        return PROMPT.format(question_type=question.question_type, question=question.question, options=options)
    return PROMPT_WITHOUT_TYPE.format(question=question.question, options=options)


# ---------------------------------------------------------------------------------------------------------------
# One record -> one Question
# ---------------------------------------------------------------------------------------------------------------


def _first(record: Mapping, keys: Iterable[str]) -> tuple[str | None, Any]:
    for key in keys:
        if key in record and record[key] is not None and normalize_text(record[key]) != "":
            return key, record[key]
    return None, None


def _options_from_value(value: Any) -> dict[str, str]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                return _options_from_value(json.loads(text))
            except json.JSONDecodeError:
                pass
        options = {}
        for line in normalize_text(text).splitlines():
            if not line.strip():
                continue
            match = _OPTION_LINE.match(line)
            if not match:
                raise RecordError(f"cannot read option line {line[:40]!r}; expected 'A. text' or 'A text'")
            options[match.group(1).upper()] = match.group(2)
        return options
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list | tuple):
        if all(isinstance(item, Mapping) and "key" in item and "value" in item for item in value):
            return {str(item["key"]): item["value"] for item in value}
        if all(not isinstance(item, Mapping | list | tuple) for item in value):
            return {chr(ord("A") + i): item for i, item in enumerate(value)}
    raise RecordError(f"options of type {type(value).__name__} are not a dict, list or 'A. text' lines")


def read_options(record: Mapping) -> dict[str, str]:
    """The options of a record as ``{letter: text}`` in letter order, empty ones dropped."""
    key, value = _first(record, _OPTION_KEYS)
    if key is not None:
        raw = _options_from_value(value)
    elif any(f"op{c}" in record for c in "abcde"):  # MedMCQA
        raw = {c.upper(): record.get(f"op{c}") for c in "abcde" if f"op{c}" in record}
    else:
        raw = {letter: record[letter] for letter in "ABCDEFG" if letter in record}
    options = {}
    for letter, text in raw.items():
        letter = normalize_text(letter).upper()
        if not re.fullmatch(r"[A-Z]", letter):
            raise RecordError(f"option key {letter!r} is not a single letter A-Z")
        text = normalize_text(text)
        if text:
            options[letter] = text
    return dict(sorted(options.items()))


def read_answer(record: Mapping, options: Mapping[str, str], cop_base: int | None = None) -> str:
    """The right answer as sorted letters, checked against the options."""
    key, value = _first(record, _ANSWER_KEYS)
    if key is None:
        raise RecordError("no answer (fields tried: " + ", ".join(_ANSWER_KEYS) + ")")
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
    _, question = _first(record, _QUESTION_KEYS)
    question = normalize_text(question)
    if not question:
        raise RecordError("no question text (fields tried: " + ", ".join(_QUESTION_KEYS) + ")")
    options = read_options(record)
    if len(options) < 2:
        raise RecordError(f"only {len(options)} non-empty option(s); a multiple-choice question needs 2 or more")
    answer = read_answer(record, options, cop_base)
    _, question_type = _first(record, _TYPE_KEYS)
    question_type = normalize_text(question_type) or None
    if subject_field:
        record_subject = normalize_text(record.get(subject_field))
    else:
        record_subject = normalize_text(_first(record, _SUBJECT_KEYS)[1])
    _, source_id = _first(record, _ID_KEYS)
    source_id = normalize_text(source_id)
    multi = len(answer) > 1 or any(marker in (question_type or "") for marker in _MULTI_TYPES)
    return Question(
        uid=f"{dataset}/{source_id or source}",
        dataset=dataset,
        subject=record_subject or subject,
        question_type=question_type,
        question=question,
        options=options,
        answer=answer,
        multi=multi,
        source=source,
    )


# ---------------------------------------------------------------------------------------------------------------
# Files and folders
# ---------------------------------------------------------------------------------------------------------------


def _read_json_or_jsonl(path: Path) -> Any:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".jsonl":
        return parse_jsonl(text, path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        if "Extra data" in str(err):  # a .json file holding one object per line (MedMCQA)
            return parse_jsonl(text, path)
        raise ExamDataError(f"{path}: not valid JSON ({err}); fix the file or convert it to JSONL") from None


def parse_jsonl(text: str, path: Path, error: type[ValueError] = ExamDataError) -> list[Any]:
    """The records of a JSONL text; a bad line raises ``error`` naming ``path:line`` (blank lines are skipped)."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise error(f"{path}:{number}: not valid JSON ({err}); fix or delete the line") from None
    return records


def raw_records(path: Path) -> dict[str, list[Any]]:
    """The records of one file grouped by dataset name (the HuatuoGPT-II layout has several)."""
    if path.suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return {"": list(csv.DictReader(handle))}
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return {"": pq.read_table(path).to_pylist()}
    if path.suffix in (".json", ".jsonl"):
        data = _read_json_or_jsonl(path)
        if isinstance(data, list):
            return {"": data}
        if isinstance(data, Mapping) and data and all(isinstance(v, list) for v in data.values()):
            return {str(name): records for name, records in data.items()}
        raise ExamDataError(
            f"{path}: expected a JSON list of questions or an object {{dataset: [questions]}}, "
            f"got {type(data).__name__}"
        )
    raise ExamDataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")


def _detect_cop_base(records: list[Any]) -> int | None:
    values = {r.get("cop") for r in records if isinstance(r, Mapping) and isinstance(r.get("cop"), int)}
    if 0 in values and 4 in values:
        return None
    if 0 in values:
        return 0
    if 4 in values:
        return 1
    return None


def exam_files(path: Path) -> list[Path]:
    """A file, or the exam files of a folder (recursively, sorted)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    raise ExamDataError(f"{path}: no such file or folder; check eval.data")


def _subject_of_file(path: Path) -> str:
    return SPLIT_SUFFIX.sub("", path.stem)


def load_exam(
    path: str | Path,
    dataset: str | None = None,
    subjects: Iterable[str] | None = None,
    on_error: OnError = "raise",
    subject_field: str | None = None,
    cop_base: int | None = None,
    answers: Mapping[str, Any] | None = None,
) -> Exam:
    """Read an exam file or folder (any layout of this module's docstring) into normalised questions.

    ``dataset`` names the questions (default: each file's stem; the folder's name for a folder of per-subject CSVs);
    ``subjects`` keeps only those subjects (for CMMLU/C-Eval folders: file stems without the split suffix);
    ``answers`` fills records that carry no answer, by id (see ``read_answer_file``).
    """
    root = Path(path)
    files = exam_files(root)
    if not files:
        raise ExamDataError(f"{root}: the folder holds no {'/'.join(SUFFIXES)} files; check eval.data")
    wanted = {normalize_text(s) for s in subjects} if subjects else None
    exam, problems = Exam(), []
    for file in files:
        per_subject = root.is_dir() and file.suffix == ".csv"  # CMMLU / C-Eval: one CSV per subject
        file_subject = _subject_of_file(file) if per_subject else ""
        if wanted is not None and per_subject and file_subject not in wanted:
            continue
        for group, records in raw_records(file).items():
            name = group or dataset or (root.name if per_subject else file.stem)
            base = cop_base if cop_base is not None else _detect_cop_base(records)
            for index, record in enumerate(records):
                source = f"{file}:{group}[{index}]" if group else f"{file}:{index}"
                if group and isinstance(record, Mapping) and _first(record, _OPTION_KEYS)[0] is None:
                    exam.open_items += 1
                    continue
                try:
                    question = record_to_question(
                        with_answer(record, answers),
                        source,
                        name,
                        file_subject or name,
                        subject_field=subject_field,
                        cop_base=base,
                    )
                except RecordError as err:
                    problems.append((source, str(err)))
                    continue
                if wanted is None or question.subject in wanted:
                    exam.questions.append(question)
                else:
                    exam.filtered += 1
    _settle(exam, problems, on_error)
    return exam


def load_hub_exam(
    repo: str,
    split: str,
    name: str | None = None,
    revision: str | None = None,
    dataset: str | None = None,
    subject: str | None = None,
    on_error: OnError = "raise",
    subject_field: str | None = None,
    cop_base: int | None = None,
    answers: Mapping[str, Any] | None = None,
) -> Exam:
    """Read one hub dataset split (``datasets.load_dataset``) through the same record reader as local files."""
    from datasets import load_dataset

    rows = load_dataset(repo, name, split=split, revision=revision)
    label = f"hf://{repo}" + (f"/{name}" if name else "") + f"[{split}]"
    dataset = dataset or (name or repo.split("/")[-1])
    exam, problems = Exam(), []
    base = cop_base if cop_base is not None else _detect_cop_base(list(rows))
    for index, record in enumerate(rows):
        try:
            exam.questions.append(
                record_to_question(
                    with_answer(record, answers),
                    f"{label}:{index}",
                    dataset,
                    subject or dataset,
                    subject_field=subject_field,
                    cop_base=base,
                )
            )
        except RecordError as err:
            problems.append((f"{label}:{index}", str(err)))
    _settle(exam, problems, on_error)
    return exam


def _settle(exam: Exam, problems: list[tuple[str, str]], on_error: OnError) -> None:
    if not problems:
        _check_unique(exam)
        return
    if on_error == "skip":
        exam.skipped += [{"source": source, "reason": reason} for source, reason in problems]
        _check_unique(exam)
        return
    shown = "\n  - ".join(f"{source}: {reason}" for source, reason in problems[:MAX_REPORTED])
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    raise ExamDataError(
        f"{len(problems)} record(s) are not readable multiple-choice questions:\n  - {shown}{more}\n"
        "Fix the records, or set eval.on_error=skip to leave them out (they are counted in the report)."
    )


def _check_unique(exam: Exam) -> None:
    # Duplicate ids (several files of one dataset) would merge rows in the report: fall back to file:index.
    counts = Counter(q.uid for q in exam.questions)
    if any(n > 1 for n in counts.values()):
        exam.questions = [q if counts[q.uid] == 1 else _with_uid(q, f"{q.dataset}/{q.source}") for q in exam.questions]


def _with_uid(question: Question, uid: str) -> Question:
    return replace(question, uid=uid)


def read_answer_file(path: str | Path) -> dict[str, Any]:
    """Answers published apart from the questions (CMB's test set): a JSON/JSONL list of ``{id, answer}``."""
    records = _read_json_or_jsonl(Path(path))
    if not isinstance(records, list):
        raise ExamDataError(f"{path}: expected a list of {{id, answer}} records")
    answers = {}
    for index, record in enumerate(records):
        _, key = _first(record, _ID_KEYS) if isinstance(record, Mapping) else (None, None)
        _, answer = _first(record, _ANSWER_KEYS) if isinstance(record, Mapping) else (None, None)
        if key is None or answer is None:
            raise ExamDataError(f"{path}:{index}: expected an object with an id and an answer")
        answers[normalize_text(key)] = answer
    return answers


def with_answer(record: Any, answers: Mapping[str, Any] | None) -> Any:
    """The record with its answer taken from ``answers`` (by id) when the record has none."""
    if not answers or not isinstance(record, Mapping) or _first(record, _ANSWER_KEYS)[0] is not None:
        return record
    _, key = _first(record, _ID_KEYS)
    key = normalize_text(key)
    return {**record, "answer": answers[key]} if key in answers else record
