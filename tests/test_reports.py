"""Report numbers pinned on hand-made per-question rows."""

from __future__ import annotations

import pytest

from huatuo.evaluation.reports import markdown, plot_subjects, summarize, tally, wilson_interval


def row(dataset, subject, qtype, gold, extracted, rule):
    return {
        "dataset": dataset,
        "subject": subject,
        "question_type": qtype,
        "answer_count": len(gold),
        "gold": gold,
        "extracted": extracted,
        "rule": rule,
        "correct": bool(extracted) and extracted == gold,
        "miss": rule is None,
    }


ROWS = [
    row("pharmacy", "药理学", "最佳选择题", "B", "B", "phrase"),
    row("pharmacy", "药理学", "最佳选择题", "C", "", None),  # a miss: wrong, and counted
    row("pharmacy", "药剂学", "多项选择题", "ACD", "ACD", "option_text"),
    row("pharmacy", "药剂学", "多项选择题", "ABE", "AB", "phrase"),  # a subset is wrong (exact set match)
    row("tcm", "中药学", "最佳选择题", "A", "A", "letters"),
    row("tcm", "中药学", None, "D", "E", "phrase"),
]


def test_wilson_interval_known_values():
    assert wilson_interval(0, 0) == (0.0, 0.0)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


def test_summary_counts_every_level_with_its_n():
    s = summarize(ROWS)
    assert (s["n"], s["correct"], s["misses"]) == (6, 3, 1)
    assert s["accuracy"] == pytest.approx(0.5) and s["miss_rate"] == pytest.approx(1 / 6)
    assert s["by_dataset"]["pharmacy"]["n"] == 4 and s["by_dataset"]["pharmacy"]["accuracy"] == pytest.approx(0.5)
    assert s["by_dataset"]["tcm"]["accuracy"] == pytest.approx(0.5)
    assert s["macro_accuracy"] == pytest.approx(0.5)
    assert set(s["by_subject"]) == {"pharmacy/药理学", "pharmacy/药剂学", "tcm/中药学"}  # several datasets: prefixed
    assert s["by_question_type"]["(none)"]["n"] == 1
    assert {k: (v["n"], v["correct"]) for k, v in s["by_answer_count"].items()} == {"1": (4, 2), "3": (2, 1)}
    assert s["read_back_rules"] == {"None": 1, "letters": 1, "option_text": 1, "phrase": 3}
    assert tally([])["accuracy"] == 0.0


def test_markdown_and_plot(tmp_path):
    summary = summarize(ROWS)
    results = {
        "suite": "pharmacist",
        "mode": "generate",
        "model": "m",
        "skipped": 2,
        "open_items": 0,
        "summary": summary,
        "files": {"predictions": "predictions.jsonl"},
    }
    text = markdown(results)
    assert (
        "**accuracy: 50.0%**" in text
        and "miss rate: 16.7%" in text
        and "skipped (unreadable or unscorable, listed in results.json): 2" in text
    )
    assert "| 1 | pharmacy | 4 | 2 | 50.0 |" in text
    path = plot_subjects(summary["by_subject"], tmp_path / "subjects.png", "pharmacist")
    assert path.stat().st_size > 1000


def test_the_report_says_which_rule_read_how_many_replies_and_why_the_misses_are_misses():
    rows = [
        {**row("d", "s", None, "B", "B", "phrase"), "miss_reason": None},
        {**row("d", "s", None, "B", "BD", "choice_phrase"), "miss_reason": None},
        {**row("d", "s", None, "B", "", None), "miss_reason": "hedge"},
        {**row("d", "s", None, "B", "", None), "miss_reason": "hedge"},
        {**row("d", "s", None, "B", "", None), "miss_reason": "no_answer"},
    ]
    s = summarize(rows)
    assert s["read_back_rules"] == {"None": 3, "choice_phrase": 1, "phrase": 1}
    assert s["miss_reasons"] == {"hedge": 2, "no_answer": 1} and s["misses"] == 3
    text = markdown({"suite": "x", "mode": "generate", "model": "m", "skipped": 0, "open_items": 0, "summary": s,
                     "files": {"predictions": "p"}})  # fmt: skip
    assert "| miss | 3 |" in text and "| miss: hedge | 2 |" in text and "| choice_phrase | 1 |" in text
