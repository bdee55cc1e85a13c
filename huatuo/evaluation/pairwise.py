"""Pairwise judging: both models' answers to the same open questions (from files, or generated), judged in both
orders by an LLM behind any OpenAI-compatible endpoint; ``results.json``, ``results.md``, ``judgments.jsonl``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from huatuo.core.errors import ConfigError, raise_problems
from huatuo.core.jsonl import write_json
from huatuo.core.logs import get_logger
from huatuo.evaluation.answers import (
    Answers,
    OpenQuestion,
    generate_answers,
    read_answers,
    read_questions,
    write_answers,
)
from huatuo.evaluation.judge import (
    JudgeItem,
    JudgeSettings,
    Rubric,
    judge_markdown,
    judge_pairs,
    summarize_judgments,
)
from huatuo.evaluation.loading import load_evaluated_model, progress_bar, release_memory
from huatuo.evaluation.serving import (
    JUDGE_EXTRAS,
    endpoint_settings,
    request_params,
    serve_answers,
    split_endpoint_block,
)
from huatuo.evaluation.tracking import log_to_loggers
from huatuo.unify.endpoint import FATAL_KINDS, ChatClient

log = get_logger(__name__)


def _side_answers(cfg: DictConfig, side: str, questions: list[OpenQuestion], run_dir: Path) -> Answers:
    """One side's answers: its answer file, answers generated earlier in this run folder, or generated now.

    With ``eval.backend=endpoint`` model A's answers come from the server (``eval.endpoint``), resumably.
    """
    spec = cfg.eval[side]
    name = spec.get("name") or side
    if spec.get("answers"):
        return read_answers(spec.answers, model_name=name)
    if side == "model_a" and cfg.eval.get("backend", "local") == "endpoint":
        return _served_answers(cfg, questions, run_dir, name)
    cache = run_dir / f"answers_{side}.jsonl"
    if cache.is_file():  # a resumed run (same hydra.run.dir) keeps the answers it already judged
        cached = read_answers(cache, model_name=name)
        if all(len(cached.replies.get(q.id, [])) == len(q.turns) for q in questions):
            log.info("reusing %s answers from %s", side, cache)
            return cached
    loaded, _ = load_evaluated_model(cfg, spec.get("model_path"))  # no model_path: the evaluated model
    total = sum(len(q.turns) for q in questions)
    generation = OmegaConf.to_container(cfg.eval.generation, resolve=True)
    with progress_bar(cfg, total, f"answers {name}") as bar:
        answers = generate_answers(
            loaded, questions, cfg.batch_size, generation, model_name=name, seed=cfg.seed, progress=bar.update
        )
    del loaded
    release_memory()  # the other side's model may need the memory next
    write_answers(answers, cache)
    return answers


def _served_answers(cfg: DictConfig, questions: list[OpenQuestion], run_dir: Path, name: str) -> Answers:
    settings, penalty_field = endpoint_settings(OmegaConf.to_container(cfg.eval.endpoint, resolve=True))
    params = request_params(OmegaConf.to_container(cfg.eval.generation, resolve=True), penalty_field, cfg.seed)
    total = sum(len(q.turns) for q in questions)
    with progress_bar(cfg, total, f"answers {name} ({settings.model})") as bar:
        answers, errors = serve_answers(
            settings, questions, params, run_dir / "replies_model_a.jsonl", name, bar.update
        )
    for qid, error in errors.items():  # the question is reported as unmatched, with its turns and replies counted
        log.warning("model A gave no complete answer to %s (%s); rerun to ask again", qid, error)
    write_answers(answers, run_dir / "answers_model_a.jsonl")
    return answers


def build_items(
    questions: list[OpenQuestion] | None, a: Answers, b: Answers
) -> tuple[list[JudgeItem], list[dict[str, str]]]:
    """Pair the two answer sets by question id; returns (items, unmatched ids with the reason)."""
    if questions is None:
        questions = [OpenQuestion(id=qid, turns=a.turns[qid]) for qid in a.replies]
    items, unmatched = [], []
    for q in questions:
        ra, rb = a.replies.get(q.id), b.replies.get(q.id)
        if ra is None or rb is None:
            unmatched.append({"id": q.id, "reason": f"no answer from {a.model if ra is None else b.model}"})
        elif not (len(ra) == len(rb) == len(q.turns)):
            unmatched.append({"id": q.id, "reason": f"{len(q.turns)} turns but {len(ra)} / {len(rb)} replies"})
        else:
            items.append(JudgeItem(id=q.id, turns=list(q.turns), replies_a=list(ra), replies_b=list(rb)))
    return items, unmatched


def evaluate_judge(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Get both answer sets, judge them in both orders, write the reports."""
    ev = cfg.eval
    endpoint, extras, problems = split_endpoint_block(
        OmegaConf.to_container(ev.judge, resolve=True), JUDGE_EXTRAS, "eval.judge"
    )
    raise_problems("bad eval.judge", problems)  # before either model generates (check_eval_config says so first)
    prompt_file = extras["prompt_file"]
    questions = read_questions(ev.questions, turns=ev.turns) if ev.get("questions") else None
    if questions is not None and ev.get("limit"):
        questions = questions[: int(ev.limit)]
    generated = questions or []
    answers_a = _side_answers(cfg, "model_a", generated, run_dir)
    answers_b = _side_answers(cfg, "model_b", generated, run_dir)
    items, unmatched = build_items(questions, answers_a, answers_b)
    if not items:
        raise ConfigError(f"no question has answers from both models ({len(unmatched)} unmatched); check the files")
    rubric = Rubric.from_file(prompt_file) if prompt_file else Rubric()
    settings = JudgeSettings(rule=ev.rule, parse_retries=ev.parse_retries, rubric=rubric)
    judgments_path = Path(ev.judgments) if ev.get("judgments") else run_dir / "judgments.jsonl"

    async def run() -> dict:
        client = ChatClient(endpoint)
        try:
            with progress_bar(cfg, 2 * len(items), f"judge {endpoint.model}") as bar:
                return await judge_pairs(items, client, settings, judgments_path, progress=bar.update)
        finally:
            await client.close()

    judgments = asyncio.run(run())
    summary = summarize_judgments(items, judgments, ev.rule)
    summary["unmatched"] = unmatched
    refused = any(reason.removeprefix("endpoint: ") in FATAL_KINDS for reason in summary["failures"])
    # Nothing judged because the endpoint refused (key, URL, model): an error, not a win rate of 0.0. Replies without
    # a verdict and requests the judge could not take (a weak or small judge) are a result: reported as incomplete.
    if not summary["judged"] and refused:
        failures = ", ".join(f"{reason} x{count}" for reason, count in summary["failures"].items())
        raise ConfigError(
            f"suite {ev.name!r}: the judge {endpoint.model!r} judged none of the {len(items)} question(s) in both "
            f"orders ({failures}); every request and its error is in {judgments_path}. Check eval.judge (base_url, "
            f"model, the key in ${endpoint.api_key_env}) and rerun: the judgments made are reused"
        )
    results = {
        "kind": "judge",
        "suite": ev.name,
        "model_a": ev.model_a.get("name") or answers_a.model,
        "model_b": ev.model_b.get("name") or answers_b.model,
        "judge_model": endpoint.model,
        "rubric": rubric.source,
        "summary": summary,
        "files": {"judgments": str(judgments_path)},
    }
    write_json(results, run_dir / "results.json")
    (run_dir / "results.md").write_text(judge_markdown(results), encoding="utf-8")
    log.info(
        "%s: %s vs %s: win %d / tie %d / loss %d over %d questions (%d incomplete)",
        ev.name, results["model_a"], results["model_b"], summary["win"], summary["tie"], summary["loss"],
        summary["judged"], len(summary["incomplete"]),
    )  # fmt: skip
    log_to_loggers(cfg, results, summary["per_item"])
    return results
