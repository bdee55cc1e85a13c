"""What an exam run hands to the loggers and the report when a dataset had every question skipped: no accuracy."""

from __future__ import annotations

from huatuo.evaluation.reports import add_skipped, markdown, summarize
from huatuo.evaluation.tracking import _flat_metrics


def _row(dataset: str, correct: bool) -> dict:
    return {"dataset": dataset, "subject": "s", "question_type": None, "answer_count": 1, "correct": correct,
            "miss": False, "rule": "letter"}  # fmt: skip


def test_a_fully_skipped_dataset_logs_no_accuracy_and_reports_a_dash():
    summary = add_skipped(
        summarize([_row("pharmacy", True), _row("pharmacy", False)]),
        [{"source": "tcm.json:0", "dataset": "tcm", "reason": "too long"}],
    )
    assert summary["by_dataset"]["tcm"]["n"] == 0 and summary["by_dataset"]["tcm"]["skipped"] == 1
    metrics = _flat_metrics({"kind": "mcq", "suite": "exam", "summary": summary})
    assert metrics["eval/exam/pharmacy/accuracy"] == 0.5
    assert "eval/exam/tcm/accuracy" not in metrics  # 0.0 here would read as a score
    results = {"suite": "exam", "mode": "generate", "model": "m", "skipped": 1, "open_items": 0, "summary": summary,
               "files": {"predictions": "predictions.jsonl"}}  # fmt: skip
    assert "| 2 | tcm | 0 | 0 | – | – | – | 1 |" in markdown(results)
