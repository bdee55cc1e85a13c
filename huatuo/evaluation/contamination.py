"""Exam questions against training data: which questions share an n-gram span with which training documents.

The exam side is small (thousands of questions), so it becomes the index (``huatuo.data.contamination``); every
training document streams through it once. Each question is indexed twice, as its stem followed by its options with
their letters (``A. ...``: the layout of exam dumps) and without them (options run together), so a copy is found
whichever way it was written. Used by ``python -m huatuo.decontaminate`` (the report), by ``data.decontaminate``
in prepare (the documents dropped) and by ``evaluate.py contamination=...`` (accuracy on the clean questions).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from huatuo.core.errors import ConfigError, DataError
from huatuo.core.jsonl import dumps, iter_jsonl, write_json
from huatuo.core.logs import get_logger
from huatuo.data.contamination import DEFAULT_N, NORMALIZATION, NgramIndex, conversation_text
from huatuo.data.sources import LoadReport, SourceSpec, forget_parsed_json, iter_conversations
from huatuo.evaluation.configs import suite_config, suite_problem
from huatuo.evaluation.exams import Exam, Question

log = get_logger(__name__)

REPORT = "contamination.json"
HITS = "contamination_hits.jsonl"
SUMMARY = "contamination.md"
PLOT = "contamination.png"
MIN_N = 4  # below this a "shared span" is an ordinary word or two


@dataclass
class ExamIndex:
    """The n-gram index of some suites' questions, and which question each reference of the index is."""

    index: NgramIndex
    questions: list[tuple[str, Question]]  # (suite, question) per reference
    sizes: dict[str, int]  # questions per suite


def question_texts(question: Question) -> list[str]:
    """The texts a question is indexed as: stem + lettered options, stem + bare options."""
    lettered = "\n".join(f"{letter}. {text}" for letter, text in question.options.items())
    bare = "\n".join(question.options.values())
    return [f"{question.question}\n{lettered}", f"{question.question}\n{bare}"]


def is_path(entry: str) -> bool:
    """A ``suites``/``data.decontaminate`` entry naming an exam file or folder rather than a conf/eval suite."""
    return "/" in entry or "\\" in entry or Path(entry).exists()


def entry_problems(entries: Any, n: Any, key: str, n_key: str) -> list[str]:
    """Every problem of a list of suite entries and an n-gram size, without reading any exam."""
    problems = []
    if entries is None or isinstance(entries, str) or not isinstance(entries, Sequence):
        return [f"{key}={entries!r} must be a list of suite names or exam paths, e.g. {key}=[demo]"]
    for entry in entries:
        if not isinstance(entry, str) or not entry:
            problems.append(f"{key}: {entry!r} is not a suite name or an exam path")
        elif is_path(entry):
            if not Path(entry).exists():
                problems.append(f"{key}: exam file {entry!r} does not exist; fix the path")
        elif problem := suite_problem(entry, key):
            problems.append(problem)
    if isinstance(n, bool) or not isinstance(n, int) or n < MIN_N:
        problems.append(
            f"{n_key}={n!r} must be an integer >= {MIN_N} (units per shared span: Chinese characters or English "
            f"words; the default {DEFAULT_N} is measured in docs/research.md)"
        )
    return problems


def load_suites(entries: Sequence[str]) -> dict[str, Exam]:
    """The questions of each entry: a conf/eval suite (its own data, hub splits, subjects and limit) or a path."""
    from huatuo.evaluation.exam_files import load_exam, load_suite

    suites: dict[str, Exam] = {}
    for entry in entries:
        if is_path(entry):
            suites[Path(entry).stem] = load_exam(entry)
            continue
        ev = suite_config(entry)
        if ev.get("kind") != "mcq":
            raise ConfigError(f"suite {entry!r} is a judged comparison (kind {ev.get('kind')}); name exam suites")
        suites[str(ev.get("name") or entry)] = load_suite(ev)
    return suites


def build_exam_index(suites: Mapping[str, Exam], n: int = DEFAULT_N) -> ExamIndex:
    """Index every question of every suite (each question's stem with its options, both ways)."""
    questions = [(name, q) for name, exam in suites.items() for q in exam.questions]
    sizes = {name: len(exam.questions) for name, exam in suites.items()}
    meta = {"label": ", ".join(suites), "suites": sizes, "n": n, "normalization": NORMALIZATION}
    index = NgramIndex.build([question_texts(q) for _, q in questions], n, meta)
    if index.too_short:
        log.warning(
            "%d question(s) have fewer than n=%d units with their options and can never be found (first: %s)",
            len(index.too_short),
            n,
            questions[index.too_short[0]][1].uid,
        )
    return ExamIndex(index, questions, sizes)


def exclusion_index(entries: Sequence[str], n: int) -> NgramIndex | None:
    """The index that ``data.decontaminate`` passes to prepare: the listed suites' questions, or None for none."""
    if not entries:
        return None
    exams = build_exam_index(load_suites(list(entries)), n)
    log.info(
        "data.decontaminate: training documents sharing a %d-unit span with any of %d questions (%s) are dropped",
        n,
        len(exams.questions),
        exams.index.meta["label"],
    )
    return exams.index


def scan_sources(
    specs: Sequence[SourceSpec], exams: ExamIndex, out_dir: Path, on_error: str = "raise", progress: bool = True
) -> dict[str, Any]:
    """Stream every training document of every source through the exam index; write the hits and the report."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    hit_questions: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # source -> suite -> uids
    sources: dict[str, dict[str, Any]] = {}
    hits = 0
    with (out_dir / HITS).open("w", encoding="utf-8") as out:
        for spec in specs:
            report, documents, overlapping = LoadReport(), 0, 0
            bar = tqdm(desc=f"scan {spec.name}", unit=" docs", disable=not progress or None, mininterval=1.0)
            stream = iter_conversations(spec, on_error, report)
            for (location, _), overlaps in exams.index.stream(stream, conversation_text):
                documents += 1
                bar.update()
                overlapping += bool(overlaps)
                for overlap in overlaps:
                    suite, question = exams.questions[overlap.reference]
                    hit_questions[spec.name][suite].add(question.uid)
                    hits += 1
                    out.write(dumps(_hit_row(suite, question, spec.name, location, overlap.span, overlap.units)) + "\n")
            bar.close()
            sources[spec.name] = {
                "files": [str(p) for p in spec.files()] if spec.format != "hf" else [spec.hf_name],
                "documents": documents,
                "overlapping_documents": overlapping,
                "skipped": dict(report.skipped),
            }
    forget_parsed_json()
    seconds = time.perf_counter() - started
    documents = sum(s["documents"] for s in sources.values())
    result = {
        "n": exams.index.n,
        "normalization": NORMALIZATION,
        "suites": _suite_shares(exams, hit_questions, list(sources)),
        "sources": sources,
        "hits": hits,
        "documents": documents,
        "seconds": round(seconds, 2),
        "documents_per_second": round(documents / seconds, 1) if seconds else None,
        "files": {"hits": str(out_dir / HITS), "summary": str(out_dir / SUMMARY), "plot": str(out_dir / PLOT)},
    }
    write_json(result, out_dir / REPORT)
    (out_dir / SUMMARY).write_text(markdown(result, _first_hits(out_dir / HITS)), encoding="utf-8")
    plot_shares(result, out_dir / PLOT)
    return result


def _hit_row(suite: str, question: Question, source: str, location: str, span: str, units: int) -> dict[str, Any]:
    return {
        "suite": suite,
        "question": question.uid,
        "exam_source": question.source,
        "source": source,
        "document": location,
        "span": span,
        "span_units": units,
        "question_text": question.question[:120],
    }


def _suite_shares(exams: ExamIndex, hit: Mapping[str, Mapping[str, set[str]]], sources: list[str]) -> dict[str, Any]:
    too_short: dict[str, int] = defaultdict(int)
    for reference in exams.index.too_short:
        too_short[exams.questions[reference][0]] += 1
    out = {}
    for suite, size in exams.sizes.items():
        any_source: set[str] = set()
        by_source = {}
        for source in sources:
            uids = hit.get(source, {}).get(suite, set())
            any_source |= uids
            by_source[source] = {"questions": len(uids), "share": len(uids) / size if size else 0.0}
        out[suite] = {
            "questions": size,
            "overlapping": len(any_source),
            "share": len(any_source) / size if size else 0.0,
            "too_short": too_short[suite],
            "by_source": by_source,
            "contaminated": sorted(any_source),
        }
    return out


def _first_hits(path: Path, limit: int = 20) -> list[dict[str, Any]]:
    rows = []
    for _, row in iter_jsonl(path):
        rows.append(row)
        if len(rows) == limit:
            break
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(result: Mapping[str, Any], examples: Sequence[Mapping[str, Any]]) -> str:
    """``contamination.md``: the share of each suite's questions found in each source, and the first hits."""
    sources = list(result["sources"])
    lines = [
        f"# Contamination check: {result['documents']:,} training documents, n = {result['n']} units",
        "",
        f"Normalization: {result['normalization']}. A question counts as overlapping a source when one of that "
        f"source's documents shares a run of {result['n']} units with it (stem and options). "
        f"{result['hits']} hits in `{result['files']['hits']}`.",
        "",
        "| suite | questions | " + " | ".join(sources) + " | any source |",
        "| --- | ---: | " + " | ".join("---:" for _ in sources) + " | ---: |",
    ]
    for suite, s in result["suites"].items():
        cells = [f"{b['questions']} ({_pct(b['share'])})" for b in s["by_source"].values()]
        lines.append(f"| {suite} | {s['questions']} | " + " | ".join(cells) + f" | **{s['overlapping']} "
                     f"({_pct(s['share'])})** |")  # fmt: skip
    short = {k: s["too_short"] for k, s in result["suites"].items() if s["too_short"]}
    if short:
        lines += ["", f"Questions shorter than n units (never found): {short}."]
    lines += ["", "| source | documents | overlapping documents |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {s['documents']:,} | {s['overlapping_documents']:,} |" for k, s in result["sources"].items()]
    if examples:
        lines += ["", "## First hits", "", "| suite | question | document | shared span |", "| --- | --- | --- | --- |"]
        for row in examples:
            span = row["span"].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {row['suite']} | {row['question']} | `{row['document']}` | {span} |")
    return "\n".join(lines) + "\n"


def plot_shares(result: Mapping[str, Any], path: Path) -> Path:
    """A suite x source heat map of the share of questions found (matplotlib, Agg), each cell labelled k/N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    suites, sources = list(result["suites"]), [*result["sources"], "any source"]
    shares = np.zeros((len(suites), len(sources)))
    labels = [["" for _ in sources] for _ in suites]
    for i, suite in enumerate(suites):
        s = result["suites"][suite]
        cells = [*s["by_source"].values(), {"questions": s["overlapping"], "share": s["share"]}]
        for j, cell in enumerate(cells):
            shares[i, j] = 100 * cell["share"]
            labels[i][j] = f"{cell['questions']}/{s['questions']}"
    fig, ax = plt.subplots(figsize=(1.1 * len(sources) + 2.5, 0.6 * len(suites) + 2.2))
    top = max(10.0, float(shares.max()))  # a few percent stays pale: dark red means a large share of the exam
    image = ax.imshow(shares, cmap="Reds", vmin=0, vmax=top, aspect="auto")
    for i in range(len(suites)):
        for j in range(len(sources)):
            color = "white" if shares[i, j] > 0.6 * top else "black"
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(sources)), sources, rotation=40, ha="right")
    ax.set_yticks(range(len(suites)), suites)
    ax.set_title(f"exam questions sharing a {result['n']}-unit span with the source (%)")
    fig.colorbar(image, ax=ax, label="% of the suite's questions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def flagged_questions(path: str | Path, suite: str | None = None) -> set[str]:
    """Question uids a contamination report (``contamination.json``) or hits file (``*.jsonl``) flags.

    Only the entries of ``suite`` when the report has any for it; else every flagged question (uids name their
    dataset, so questions of other exams never match).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"contamination={str(path)!r}: no such file; give the {REPORT} or {HITS} of a decontaminate run"
        )
    if path.suffix == ".jsonl":
        rows = [row for _, row in iter_jsonl(path) if isinstance(row, Mapping)]
        bad = [row for row in rows if "question" not in row]
        if bad:
            raise DataError(f"{path}: {len(bad)} line(s) without a 'question' field; is it a {HITS}?")
        own = [row for row in rows if row.get("suite") == suite]
        return {str(row["question"]) for row in (own or rows)}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        suites = report["suites"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(
            f"{path}: not a contamination report (no 'suites'); give the {REPORT} of a decontaminate run"
        ) from None
    if suite in suites:
        return set(suites[suite].get("contaminated", []))
    return {uid for entry in suites.values() for uid in entry.get("contaminated", [])}


def data_exclusion_problems(cfg: DictConfig) -> list[str]:
    """The problems of ``data.decontaminate`` and ``data.decontaminate_n`` in a train/prepare config."""
    entries = cfg.data.get("decontaminate") or []
    entries = OmegaConf.to_container(entries) if OmegaConf.is_list(entries) else entries
    if entries == []:
        return []
    n = cfg.data.get("decontaminate_n", DEFAULT_N)
    return entry_problems(entries, n, "data.decontaminate", "data.decontaminate_n")


def data_exclusion(cfg: DictConfig) -> NgramIndex | None:
    """The exam index of ``data.decontaminate`` (None when it is empty) for ``prepare(..., exclude=...)``."""
    entries = list(cfg.data.get("decontaminate") or [])
    return exclusion_index(entries, cfg.data.get("decontaminate_n", DEFAULT_N)) if entries else None
