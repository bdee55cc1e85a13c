"""Multiple-choice suites: read the questions (files or hub splits), answer them in loglik or generate mode, and write
``results.json``, ``results.md``, ``predictions.jsonl`` and the per-subject plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from huatuo.core.errors import ConfigError, DataError, problem_list
from huatuo.core.jsonl import write_json, write_jsonl
from huatuo.core.logs import get_logger
from huatuo.evaluation.contamination import flagged_questions
from huatuo.evaluation.exam_files import load_suite
from huatuo.evaluation.exams import Exam, Question
from huatuo.evaluation.generation import cut_at_next_turn, generate_texts
from huatuo.evaluation.loading import load_evaluated_model, progress_bar
from huatuo.evaluation.loglik import LoglikSettings, score_loglik
from huatuo.evaluation.prompt import mcq_prompt
from huatuo.evaluation.replies import read_reply
from huatuo.evaluation.reports import add_skipped, clean_subset, markdown, plot_subjects, summarize
from huatuo.evaluation.serving import ServedReplies, ServedRequest, endpoint_settings, request_params, serve_replies
from huatuo.evaluation.skips import after_loading, before_loading, settle
from huatuo.evaluation.tracking import log_to_loggers
from huatuo.inference.loading import LoadedModel

log = get_logger(__name__)


def run_exam(cfg: DictConfig, loaded: LoadedModel | None, exam: Exam, run_dir: Path) -> list[dict[str, Any]]:
    """Answer every question in the configured mode; one row per question scored for the reports.

    ``loaded`` is None with ``eval.backend=endpoint``: the server answers. Questions that cannot be scored raise, or
    with ``eval.on_error=skip`` are added to ``exam.skipped`` with their reason (``huatuo.evaluation.skips``).
    """
    ev = cfg.eval
    on_error = ev.get("on_error", "raise")
    normalize = bool(ev.get("normalize_text", False))
    messages = [[{"role": "user", "content": mcq_prompt(q, normalize)}] for q in exam.questions]
    prompts = [loaded.render(m) if loaded is not None else m[-1]["content"] for m in messages]
    kept = settle(exam, exam.questions, after_loading(ev, loaded, prompts), on_error)
    questions = [exam.questions[i] for i in kept]
    messages, prompts = [messages[i] for i in kept], [prompts[i] for i in kept]
    rows = []
    with progress_bar(cfg, len(questions), f"{ev.name} ({ev.mode})") as bar:
        if ev.mode == "loglik":
            settings = LoglikSettings(**OmegaConf.to_container(ev.loglik, resolve=True))
            contexts = [p + settings.answer_prefix for p in prompts]
            results = score_loglik(loaded, questions, contexts, cfg.batch_size, settings, progress=bar.update)
            for q, context, result in zip(questions, contexts, results, strict=True):
                top = dict(sorted(result.scores.items(), key=lambda kv: -kv[1])[:5])
                rows.append(_row(q, context, None, result.letters, "loglik", {k: round(v, 4) for k, v in top.items()}))
        else:
            generation = OmegaConf.to_container(ev.generate, resolve=True)
            if loaded is None:
                served = _served_replies(cfg, questions, messages, generation, run_dir, bar.update)
                failed = {i: served.errors[q.uid] for i, q in enumerate(questions) if q.uid not in served.texts}
                kept = settle(exam, questions, failed, on_error)  # the replies that came back stay for a rerun
                questions, prompts = [questions[i] for i in kept], [prompts[i] for i in kept]
                replies = [cut_at_next_turn(served.texts[q.uid]) for q in questions]
            else:
                replies = generate_texts(
                    loaded, prompts, cfg.batch_size, generation, seed=cfg.seed, progress=bar.update
                )
            for q, prompt, reply in zip(questions, prompts, replies, strict=True):
                readback = read_reply(reply, q.options, q.multi)
                rows.append(_row(q, prompt, reply, readback.letters, readback.rule, None, readback.reason))
    return rows


def _served_replies(cfg: DictConfig, questions, messages, generation, run_dir: Path, progress) -> ServedReplies:
    """The server's replies by question uid (and the errors of those that failed), resuming from the replies file."""
    settings, penalty_field = endpoint_settings(OmegaConf.to_container(cfg.eval.endpoint, resolve=True))
    params = request_params(generation, penalty_field, cfg.seed)
    requests = [ServedRequest(q.uid, m) for q, m in zip(questions, messages, strict=True)]
    path = Path(cfg.eval.get("replies") or run_dir / "replies.jsonl")
    return serve_replies(settings, requests, params, path, progress)


def _row(
    question: Question,
    prompt: str,
    reply: str | None,
    letters: str,
    rule: str | None,
    scores: dict | None,
    miss_reason: str | None = None,
) -> dict[str, Any]:
    return {
        "uid": question.uid,
        "dataset": question.dataset,
        "subject": question.subject,
        "question_type": question.question_type,
        "answer_count": question.answer_count,
        "multi": question.multi,
        "source": question.source,
        "prompt": prompt,
        "reply": reply,
        "scores": scores,
        "extracted": letters,
        "rule": rule,
        "gold": question.answer,
        "correct": bool(letters) and letters == question.answer,
        "miss": rule is None,
        "miss_reason": miss_reason,  # empty | hedge | ambiguous | no_answer (huatuo.evaluation.replies)
    }


def _raise_nothing_scored(cfg: DictConfig, exam: Exam, run_dir: Path) -> None:
    """One error for a run that scored no question (with eval.on_error=skip): what happened and where it is listed."""
    ev = cfg.eval
    footer = f"Each is listed with its reason in {write_jsonl(exam.skipped, run_dir / 'skipped.jsonl')}."
    if ev.get("backend", "local") == "endpoint":
        replies = ev.get("replies") or run_dir / "replies.jsonl"
        footer += (
            f" The server's errors are in {replies}: check eval.endpoint, then rerun (replies received are reused)."
        )
    raise DataError(
        problem_list(
            f"suite {ev.name!r}: no question was scored (all {len(exam.skipped)} skipped), so there is no accuracy",
            [f"{e['source']}" + (f" ({e['uid']})" if e.get("uid") else "") + f": {e['reason']}" for e in exam.skipped],
            footer=footer,
        )
    )


def evaluate_exam(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Load the suite and the model, answer, and write the reports."""
    ev = cfg.eval
    exam = load_suite(ev, on_error="skip")  # unreadable records wait in exam.skipped: one error names them all
    kept = settle(exam, exam.questions, before_loading(ev, exam.questions), ev.get("on_error", "raise"))
    exam.questions = [exam.questions[i] for i in kept]
    if not exam.questions:
        raise ConfigError(f"suite {ev.get('name')!r}: no question can be scored ({len(exam.skipped)} skipped)")
    log.info(
        "suite %s: %d questions (%d multi-answer), %d skipped, %d open items",
        ev.name,
        len(exam.questions),
        sum(q.multi for q in exam.questions),
        len(exam.skipped),
        exam.open_items,
    )
    flagged = flagged_questions(cfg.contamination, ev.name) if cfg.get("contamination") else None  # before the model
    if ev.get("backend", "local") == "endpoint":
        loaded, model_name = None, f"{ev.endpoint.model} (endpoint {ev.endpoint.base_url})"
    else:
        loaded, model_name = load_evaluated_model(cfg)
    rows = run_exam(cfg, loaded, exam, run_dir)
    if not rows:  # every question skipped while scoring: an accuracy of 0.0 would read as a score to a sweeper
        _raise_nothing_scored(cfg, exam, run_dir)
    summary = add_skipped(summarize(rows), exam.skipped)
    clean = clean_subset(rows, flagged, str(cfg.contamination)) if flagged is not None else None
    files = {
        "predictions": str(write_jsonl(rows, run_dir / "predictions.jsonl")),
        "plot": str(plot_subjects(summary["by_subject"], run_dir / "subject_accuracy.png", f"{ev.name} ({ev.mode})")),
    }
    if exam.skipped:
        files["skipped"] = str(write_jsonl(exam.skipped, run_dir / "skipped.jsonl"))
    results = {
        "kind": "mcq",
        "suite": ev.name,
        "mode": ev.mode,
        "model": model_name,
        "backend": ev.get("backend", "local"),
        "skipped": len(exam.skipped),
        "skipped_records": exam.skipped,  # {source, dataset, reason} (and uid when found while scoring)
        "open_items": exam.open_items,
        "filtered": exam.filtered,
        "summary": summary,
        "settings": OmegaConf.to_container(ev.loglik if ev.mode == "loglik" else ev.generate, resolve=True),
        "normalize_text": bool(ev.get("normalize_text", False)),
        "files": files,
    }
    if clean is not None:  # the questions a contamination report does not flag, scored beside the full suite
        results["clean"] = clean
    if results["backend"] == "endpoint":
        server = OmegaConf.to_container(ev.endpoint, resolve=True)
        results["endpoint"] = {k: server.get(k) for k in ("base_url", "model", "penalty_field", "max_concurrency")}
    write_json(results, run_dir / "results.json")
    (run_dir / "results.md").write_text(markdown(results), encoding="utf-8")
    log.info("%s: accuracy %.1f%% over %d questions, miss rate %.1f%%", ev.name, 100 * summary["accuracy"],
             summary["n"], 100 * summary["miss_rate"])  # fmt: skip
    log_to_loggers(cfg, results, rows)
    return results
