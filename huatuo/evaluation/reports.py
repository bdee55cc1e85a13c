"""Exam reports: accuracy with its n at every level, the miss rate, per-question JSONL, markdown, a subject plot.

Every accuracy comes with the number of questions behind it and a 95% Wilson interval, so a reader sees at once
that 3 of 4 right in one subject is not 75% of anything. A miss (a generated reply no rule could read) counts as
wrong and is reported on its own as the miss rate.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from huatuo.core.logs import get_logger

log = get_logger(__name__)


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (stays inside [0, 1] for small n)."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def tally(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """n, correct, accuracy, its 95% interval, misses and miss rate of some per-question rows."""
    rows = list(rows)
    n = len(rows)
    correct = sum(bool(r["correct"]) for r in rows)
    misses = sum(bool(r["miss"]) for r in rows)
    low, high = wilson_interval(correct, n)
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "ci95": [round(low, 4), round(high, 4)],
        "misses": misses,
        "miss_rate": misses / n if n else 0.0,
    }


def _grouped(rows: Sequence[Mapping[str, Any]], key) -> dict[str, dict[str, Any]]:
    groups: dict[str, list] = defaultdict(list)
    for row in rows:
        groups[str(key(row))].append(row)
    return {name: tally(groups[name]) for name in sorted(groups)}


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy overall, per dataset, subject, question type and answer count; read-back rules used."""
    several = len({r["dataset"] for r in rows}) > 1
    summary = tally(rows)
    summary["by_dataset"] = _grouped(rows, lambda r: r["dataset"])
    datasets = summary["by_dataset"].values()
    summary["macro_accuracy"] = sum(d["accuracy"] for d in datasets) / len(datasets) if datasets else 0.0
    summary["by_subject"] = _grouped(rows, lambda r: f"{r['dataset']}/{r['subject']}" if several else r["subject"])
    summary["by_question_type"] = _grouped(rows, lambda r: r["question_type"] or "(none)")
    summary["by_answer_count"] = _grouped(rows, lambda r: r["answer_count"])
    rules: dict[str, int] = defaultdict(int)
    for row in rows:
        rules[str(row.get("rule"))] += 1
    summary["read_back_rules"] = dict(sorted(rules.items()))
    reasons: dict[str, int] = defaultdict(int)
    for row in rows:
        if row.get("miss"):
            reasons[str(row.get("miss_reason") or "unread")] += 1
    summary["miss_reasons"] = dict(sorted(reasons.items()))  # why the misses are misses: hedge, ambiguous...
    return summary


def add_skipped(summary: dict[str, Any], skipped: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary with the questions left out unscored counted beside the accuracy, overall and per dataset."""
    summary["skipped"] = len(skipped)
    for record in skipped:
        name = str(record.get("dataset") or "")
        # every record of a dataset may be unscorable: its group has n == 0, which readers show as no accuracy
        group = summary["by_dataset"].setdefault(name, tally([]))
        group["skipped"] = group.get("skipped", 0) + 1
    for group in summary["by_dataset"].values():
        group.setdefault("skipped", 0)
    return summary


def clean_subset(rows: Sequence[dict[str, Any]], flagged: set[str], report: str) -> dict[str, Any]:
    """Accuracy on the questions a contamination report does not flag (and on those it does); marks each row."""
    for row in rows:
        row["contaminated"] = row["uid"] in flagged
    clean = tally(r for r in rows if not r["contaminated"])
    contaminated = tally(r for r in rows if r["contaminated"])
    if flagged and not contaminated["n"]:
        log.warning(
            "contamination report %s flags %d question(s) of this suite but none of them is among the %d scored here: "
            "is it a report for another suite, or were the questions renumbered?",
            report,
            len(flagged),
            len(rows),
        )
    return {
        **clean,
        "report": report,
        "flagged": contaminated["n"],
        "flagged_accuracy": contaminated["accuracy"],
        "flagged_elsewhere": len(flagged - {r["uid"] for r in rows}),  # flags for questions this run did not score
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _table(title: str, groups: Mapping[str, Mapping[str, Any]], label: str) -> list[str]:
    skipped = any("skipped" in g for g in groups.values())  # the dataset table: questions left out unscored
    lines = [
        f"## {title}",
        "",
        f"| # | {label} | n | correct | accuracy % | 95% CI | miss % |" + (" skipped |" if skipped else ""),
        "| ---: | --- | ---: | ---: | ---: | --- | ---: |" + (" ---: |" if skipped else ""),
    ]
    for i, (name, g) in enumerate(groups.items(), start=1):
        low, high = g["ci95"]
        # a dataset whose every question was skipped (add_skipped) has no accuracy: a dash, not 0.0
        scores = f"{_pct(g['accuracy'])} | {_pct(low)}–{_pct(high)} | {_pct(g['miss_rate'])}" if g["n"] else "– | – | –"
        lines.append(
            f"| {i} | {name} | {g['n']} | {g['correct']} | {scores} |"
            + (f" {g.get('skipped', 0)} |" if skipped else "")
        )
    return lines + [""]


def markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: the headline, then one table per grouping."""
    s = results["summary"]
    low, high = s["ci95"]
    lines = [
        f"# {results['suite']} ({results['mode']} mode)",
        "",
        f"- model: `{results['model']}`",
        f"- questions scored: {s['n']}; skipped (unreadable or unscorable, listed in results.json): "
        f"{results['skipped']}; "
        f"open items not scored: {results['open_items']}; "
        f"left out by eval.subjects/limit: {results.get('filtered', 0)}",
        f"- **accuracy: {_pct(s['accuracy'])}%** (95% CI {_pct(low)}–{_pct(high)}; "
        f"macro over datasets {_pct(s['macro_accuracy'])}%)",
        f"- miss rate: {_pct(s['miss_rate'])}% ({s['misses']} replies no rule could read; scored wrong, never guessed)",
        "",
    ]
    if clean := results.get("clean"):
        low, high = clean["ci95"]
        lines[-1:-1] = [
            f"- **clean subset: {_pct(clean['accuracy'])}%** (95% CI {_pct(low)}–{_pct(high)}) over the {clean['n']} "
            f"questions `{clean['report']}` does not flag; the {clean['flagged']} it flags score "
            f"{_pct(clean['flagged_accuracy'])}%"
        ]
    lines += _table("By dataset", s["by_dataset"], "dataset")
    lines += _table("By subject", s["by_subject"], "subject")
    lines += _table("By question type", s["by_question_type"], "question type")
    lines += _table("By number of right letters", s["by_answer_count"], "letters")
    lines += ["## Read-back rules", "", "| rule | questions |", "| --- | ---: |"]
    lines += [f"| {'miss' if rule == 'None' else rule} | {count} |" for rule, count in s["read_back_rules"].items()]
    lines += [f"| miss: {reason} | {count} |" for reason, count in s.get("miss_reasons", {}).items()]
    lines += ["", f"Per-question details: `{results['files']['predictions']}`.", ""]
    return "\n".join(lines)


def _cjk_font() -> list[str]:
    from matplotlib import font_manager

    fonts = {f.name for f in font_manager.fontManager.ttflist}
    wanted = (
        "Noto Sans CJK SC",
        "Noto Sans SC",
        "Source Han Sans SC",
        "WenQuanYi Zen Hei",
        "SimHei",
        "Microsoft YaHei",
    )
    return [name for name in wanted if name in fonts]


def plot_subjects(by_subject: Mapping[str, Mapping[str, Any]], path: str | Path, title: str) -> Path:
    """Horizontal bars of per-subject accuracy with 95% intervals and n (matplotlib, Agg backend).

    Without a CJK font, Chinese subject names would draw as empty boxes: the bars are then labelled ``#1``, ``#2``...
    in the order of the subject table of ``results.md``.
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(by_subject)
    fonts = _cjk_font()
    readable = bool(fonts) or all(name.isascii() for name in names)
    labels = [f"{name if readable else '#' + str(i + 1)} (n={by_subject[name]['n']})" for i, name in enumerate(names)]
    accuracy = [100 * by_subject[n]["accuracy"] for n in names]
    low = [100 * (by_subject[n]["accuracy"] - by_subject[n]["ci95"][0]) for n in names]
    high = [100 * (by_subject[n]["ci95"][1] - by_subject[n]["accuracy"]) for n in names]
    with matplotlib.rc_context({"font.sans-serif": fonts + list(plt.rcParams["font.sans-serif"])}):
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
        y = list(range(len(names)))
        ax.barh(y, accuracy, xerr=[low, high], color="#4C72B0", ecolor="#333333", capsize=3)
        ax.set_yticks(y)
        ax.set_yticklabels(labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("accuracy % (bars: 95% CI)")
        ax.set_title(title if readable or title.isascii() else "per-subject accuracy")
        with warnings.catch_warnings():  # a glyph missing from every installed font: a box, not an error
            warnings.simplefilter("ignore")
            fig.tight_layout()
            path = Path(path)
            fig.savefig(path, dpi=120)
        plt.close(fig)
    return path
