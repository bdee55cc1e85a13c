"""Exam files and hub splits: every published layout, read record by record into ``Question`` (``exams``).

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
(MedMCQA, 0- or 1-based), or the exact text of one option. Answers, letters and option texts are read from
NFKC-normalised text (full-width letters and punctuation become ASCII); empty options are dropped. The prompt is
built from the record's text as written (``exams.Written``) unless ``eval.normalize_text`` asks otherwise. A record
that cannot be read raises one ``DataError`` naming ``file:index`` and the reason, or with ``on_error=skip`` is
skipped and counted in the report.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from huatuo.core.errors import ConfigError, DataError, raise_problems
from huatuo.core.jsonl import read_json_records, read_utf8
from huatuo.evaluation.exams import (
    ANSWER_KEYS,
    ID_KEYS,
    OPTION_KEYS,
    Exam,
    OnError,
    Question,
    RecordError,
    first_field,
    normalize_text,
    portable,
    record_to_question,
)

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
SPLIT_SUFFIX = re.compile(r"_(val|dev|test|train)$")  # C-Eval names files <subject>_<split>.csv


def raw_records(path: Path) -> dict[str, list[Any]]:
    """The records of one file grouped by dataset name (the HuatuoGPT-II layout has several)."""
    if path.suffix == ".csv":
        return {"": list(csv.DictReader(io.StringIO(read_utf8(path), newline="")))}
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return {"": pq.read_table(path).to_pylist()}
    if path.suffix in (".json", ".jsonl"):
        data = read_json_records(path)
        if isinstance(data, list):
            return {"": data}
        if isinstance(data, Mapping) and data and all(isinstance(v, list) for v in data.values()):
            return {str(name): records for name, records in data.items()}
        raise DataError(
            f"{path}: expected a JSON list of questions or an object {{dataset: [questions]}}, "
            f"got {type(data).__name__}"
        )
    raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")


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
    raise DataError(f"{path}: no such file or folder; check eval.data")


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
        raise DataError(f"{root}: the folder holds no {'/'.join(SUFFIXES)} files; check eval.data")
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
                if group and isinstance(record, Mapping) and first_field(record, OPTION_KEYS)[0] is None:
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
                    problems.append((source, name, str(err)))
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
            problems.append((f"{label}:{index}", dataset, str(err)))
    _settle(exam, problems, on_error)
    return exam


def _settle(exam: Exam, problems: list[tuple[str, str, str]], on_error: OnError) -> None:
    if problems and on_error != "skip":
        raise_problems(
            f"{len(problems)} record(s) are not readable multiple-choice questions",
            [f"{source}: {reason}" for source, _, reason in problems],
            DataError,
            footer="Fix the records, or set eval.on_error=skip to leave them out (they are counted in the report).",
        )
    exam.skipped += [{"source": s, "dataset": d, "reason": r} for s, d, r in problems]
    _check_unique(exam)


def _check_unique(exam: Exam) -> None:
    """Give every question a uid of its own: reports and endpoint requests are keyed by it.

    Ids repeat across the files of one dataset and across hub splits (C-Eval numbers 0..N in every subject), which
    would merge rows in the report: a repeated uid falls back to ``dataset/file:index``, then to the file's path
    below the folder its files share (``dataset/one/exam.json:0``): never to the path as typed, so a relative and an
    absolute spelling give the same uids.
    """
    for spelled in (lambda q: f"{q.dataset}/{portable(q.source)}", _below_shared_folder(exam.questions)):
        counts = Counter(q.uid for q in exam.questions)
        if all(n == 1 for n in counts.values()):
            return
        exam.questions = [q if counts[q.uid] == 1 else _with_uid(q, spelled(q)) for q in exam.questions]


def _below_shared_folder(questions: list[Question]) -> Callable[[Question], str]:
    """``dataset/<path below the local files' shared folder>:index`` (hub sources as they are)."""
    local = {q.source.rpartition(":")[0] for q in questions if "://" not in q.source}
    absolute = {file: os.path.abspath(file) for file in local}
    shared = os.path.commonpath([os.path.dirname(a) for a in absolute.values()]) if absolute else ""

    def spelled(question: Question) -> str:
        file, _, index = question.source.rpartition(":")
        if file not in absolute:
            return f"{question.dataset}/{question.source}"
        return f"{question.dataset}/{Path(os.path.relpath(absolute[file], shared)).as_posix()}:{index}"

    return spelled


def _with_uid(question: Question, uid: str) -> Question:
    return replace(question, uid=uid)


def read_answer_file(path: str | Path) -> dict[str, Any]:
    """Answers published apart from the questions (CMB's test set): a JSON/JSONL list of ``{id, answer}``."""
    records = read_json_records(Path(path))
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a list of {{id, answer}} records")
    answers = {}
    for index, record in enumerate(records):
        _, key = first_field(record, ID_KEYS) if isinstance(record, Mapping) else (None, None)
        _, answer = first_field(record, ANSWER_KEYS) if isinstance(record, Mapping) else (None, None)
        if key is None or answer is None:
            raise DataError(f"{path}:{index}: expected an object with an id and an answer")
        answers[normalize_text(key)] = answer
    return answers


def with_answer(record: Any, answers: Mapping[str, Any] | None) -> Any:
    """The record with its answer taken from ``answers`` (by id) when the record has none."""
    if not answers or not isinstance(record, Mapping) or first_field(record, ANSWER_KEYS)[0] is not None:
        return record
    _, key = first_field(record, ID_KEYS)
    key = normalize_text(key)
    return {**record, "answer": answers[key]} if key in answers else record


def load_suite(ev: DictConfig, on_error: str | None = None) -> Exam:
    """The suite's questions: ``eval.data`` when set, else each hub split listed under ``eval.hub``.

    ``on_error`` overrides ``eval.on_error`` (``skip`` collects unreadable records for one error naming them all).
    """
    answers = read_answer_file(ev.answers) if ev.get("answers") else None
    common = {
        "on_error": on_error or ev.get("on_error", "raise"),
        "subject_field": ev.get("subject_field"),
        "cop_base": ev.get("cop_base"),
        "answers": answers,
    }
    # one normalised set for files and hub splits alike: "Ａ" in the config matches "A" in the records
    wanted = {normalize_text(s) for s in ev.subjects} if ev.get("subjects") else None
    data = None if OmegaConf.is_missing(ev, "data") else ev.get("data")
    if data is not None:
        exam = load_exam(data, dataset=ev.get("dataset"), subjects=wanted, **common)
    else:
        exam = Exam()
        for entry in OmegaConf.to_container(ev.hub, resolve=True):
            names = entry.get("name")
            for name in names if isinstance(names, list) else [names]:
                part = load_hub_exam(
                    entry["repo"],
                    entry.get("split", "test"),
                    name=name,
                    revision=entry.get("revision"),
                    dataset=entry.get("dataset"),
                    subject=name if isinstance(names, list) else entry.get("subject"),
                    **{**common, "cop_base": entry.get("cop_base", common["cop_base"])},
                )
                exam.extend(part)
        _check_unique(exam)  # each split's uids are unique on their own, not across splits (C-Eval's ids 0..N)
        if wanted is not None:
            kept = [q for q in exam.questions if normalize_text(q.subject) in wanted]
            exam.filtered += len(exam.questions) - len(kept)
            exam.questions = kept
    if ev.get("limit"):
        exam.filtered += max(0, len(exam.questions) - int(ev.limit))
        exam.questions = exam.questions[: int(ev.limit)]
    if not exam.questions and not exam.skipped:  # with skipped records, the caller names them first
        raise ConfigError(f"suite {ev.get('name')!r} has no questions left (check eval.data / eval.subjects)")
    return exam
