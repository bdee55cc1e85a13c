"""``evaluate(cfg)``: exams (loglik / generate) and pairwise judging, as a plain function for evaluate.py and tests.

The suite comes from the ``eval`` config group: ``kind: mcq`` suites read an exam (local ``eval.data`` or the
suite's hub splits) and score a model on it; ``kind: judge`` suites compare two models' answers to open
questions with an LLM judge behind any OpenAI-compatible endpoint. Results land in the Hydra run folder:
``results.json``, ``results.md`` and the per-question files; with ``logger=wandb`` also W&B tables.
"""

from __future__ import annotations

import asyncio
import gc
import math
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from huatuo.answers import (
    Answers,
    OpenQuestion,
    generate_answers,
    generate_texts,
    read_answers,
    read_questions,
    write_answers,
)
from huatuo.exams import Exam, Question, load_exam, load_hub_exam, mcq_prompt, read_answer_file
from huatuo.inference import LoadedModel, load_for_inference, pick_device
from huatuo.judge import JudgeItem
from huatuo.logs import get_logger
from huatuo.mcq import LoglikSettings, score_loglik
from huatuo.readback import read_answer
from huatuo.reports import markdown, plot_subjects, summarize, write_json, write_jsonl

log = get_logger(__name__)

MODES = ("loglik", "generate")
RULES = ("sum", "agree")


class EvalConfigError(ValueError):
    """An evaluate config that cannot run; the message lists every problem with its key and the fix."""


# ---------------------------------------------------------------------------------------------------------------
# Config checks (before any model or data loads)
# ---------------------------------------------------------------------------------------------------------------


def eval_config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of a composed ``evaluate.yaml`` config that can be found without loading anything."""
    problems: list[str] = []
    ev = cfg.eval
    batch = cfg.get("batch_size")
    if not isinstance(batch, int) or batch < 1:
        problems.append(f"batch_size={batch!r} must be an integer >= 1")
    if cfg.get("device") not in (None, "auto") and str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"device={cfg.device} but no CUDA device is visible; use device=cpu or device=auto")
    kind = ev.get("kind")
    if kind == "mcq":
        problems += _mcq_problems(ev)
    elif kind == "judge":
        problems += _judge_problems(ev)
    else:
        problems.append(f"eval.kind={kind!r}: use mcq or judge (choose a suite with eval=<name>)")
    return problems


def _mcq_problems(ev: DictConfig) -> list[str]:
    problems = []
    if ev.get("mode") not in MODES:
        problems.append(f"eval.mode={ev.get('mode')!r}: use loglik (fast, likelihoods) or generate (the paper's)")
    data = ev.get("data") if not OmegaConf.is_missing(ev, "data") else None
    if data is None and not ev.get("hub"):
        problems.append("eval.data is not set and the suite names no hub splits; pass eval.data=FILE_OR_FOLDER")
    elif data is not None and not Path(str(data)).exists():
        problems.append(f"eval.data={data!r}: no such file or folder; fix the path")
    if ev.get("on_error") not in ("raise", "skip"):
        problems.append(f"eval.on_error={ev.get('on_error')!r}: use raise or skip")
    if ev.get("answers") and not Path(str(ev.answers)).is_file():
        problems.append(f"eval.answers={ev.answers!r}: no such file (a JSON/JSONL list of {{id, answer}})")
    if ev.get("cop_base") not in (None, 0, 1):
        problems.append(f"eval.cop_base={ev.get('cop_base')!r}: use 0, 1 or null (detect per file)")
    loglik = ev.get("loglik") or {}
    if int(loglik.get("multi_min_letters", 1)) < 1:
        problems.append("eval.loglik.multi_min_letters must be >= 1")
    if int(loglik.get("candidate_batch", 1)) < 1:
        problems.append("eval.loglik.candidate_batch must be >= 1")
    return problems


def _judge_problems(ev: DictConfig) -> list[str]:
    problems = []
    if ev.get("rule") not in RULES:
        problems.append(f"eval.rule={ev.get('rule')!r}: use sum (the paper's) or agree (FastChat's)")
    if not isinstance(ev.get("parse_retries"), int) or ev.parse_retries < 0:
        problems.append(f"eval.parse_retries={ev.get('parse_retries')!r} must be an integer >= 0")
    questions = ev.get("questions")
    if questions is not None and not Path(str(questions)).is_file():
        problems.append(f"eval.questions={questions!r}: no such file")
    for side in ("model_a", "model_b"):
        spec = ev.get(side) or {}
        answers, model_path = spec.get("answers"), spec.get("model_path")
        if answers is not None and not Path(str(answers)).is_file():
            problems.append(f"eval.{side}.answers={answers!r}: no such file")
        if answers is not None and model_path is not None:
            problems.append(f"eval.{side}: set answers or model_path, not both")
        if side == "model_b" and answers is None and model_path is None:
            problems.append(
                "eval.model_b needs answers=FILE (e.g. a reference model's replies) or model_path=DIR to generate them"
            )
        if (answers is None) and questions is None:
            problems.append(f"eval.{side} generates answers but eval.questions is null; give a question file")
    if ev.get("turns") not in ("single", "multi", "any"):
        problems.append(f"eval.turns={ev.get('turns')!r}: use single, multi or any")
    judge = ev.get("judge") or {}
    if not judge.get("model"):
        problems.append("eval.judge.model is empty; name the judge model the endpoint serves")
    return problems


def check_eval_config(cfg: DictConfig) -> None:
    """Raise one EvalConfigError listing every problem, or return quietly."""
    problems = eval_config_problems(cfg)
    if problems:
        raise EvalConfigError("the evaluate config cannot run:\n  - " + "\n  - ".join(problems))


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def load_evaluated_model(cfg: DictConfig, path: str | None = None) -> tuple[LoadedModel, str]:
    """The model to evaluate: ``path`` or ``model_path`` (any folder or hub name), else the ``backbone`` group."""
    path = path or cfg.get("model_path")
    options = {
        "quantize": cfg.get("quantize"),
        "dtype": cfg.get("dtype", "auto"),
        "device": cfg.get("device", "auto"),
        "trust_remote_code": bool(cfg.get("trust_remote_code", False)),
        "revision": cfg.get("revision"),
    }
    if path:
        return load_for_inference(str(path), **options), str(path)
    backbone = cfg.backbone
    if backbone.model.get("path"):
        options["trust_remote_code"] = bool(backbone.model.get("trust_remote_code", False))
        options["revision"] = backbone.model.get("revision")
        loaded = load_for_inference(str(backbone.model.path), **options)
        if backbone.tokenizer.get("path") and backbone.tokenizer.path != backbone.model.path:
            loaded.tokenizer = instantiate(backbone.tokenizer)
        return loaded, str(backbone.model.path)
    torch.manual_seed(cfg.seed)  # random init (the tiny demo backbone): the same weights for the same seed
    tokenizer = instantiate(backbone.tokenizer)
    model = instantiate(backbone.model)()
    device = pick_device(options["device"])
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, device=device), f"{backbone.get('name')} (random init)"


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _progress(cfg: DictConfig, total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="q", disable=not cfg.get("progress", True), dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------------------------
# Exams
# ---------------------------------------------------------------------------------------------------------------


def load_suite(ev: DictConfig) -> Exam:
    """The suite's questions: ``eval.data`` when set, else each hub split listed under ``eval.hub``."""
    answers = read_answer_file(ev.answers) if ev.get("answers") else None
    common = {
        "on_error": ev.get("on_error", "raise"),
        "subject_field": ev.get("subject_field"),
        "cop_base": ev.get("cop_base"),
        "answers": answers,
    }
    subjects = list(ev.subjects) if ev.get("subjects") else None
    data = None if OmegaConf.is_missing(ev, "data") else ev.get("data")
    if data is not None:
        exam = load_exam(data, dataset=ev.get("dataset"), subjects=subjects, **common)
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
        if subjects:
            kept = [q for q in exam.questions if q.subject in set(subjects)]
            exam.filtered += len(exam.questions) - len(kept)
            exam.questions = kept
    if ev.get("limit"):
        exam.filtered += max(0, len(exam.questions) - int(ev.limit))
        exam.questions = exam.questions[: int(ev.limit)]
    if not exam.questions:
        raise EvalConfigError(f"suite {ev.get('name')!r} has no questions left (check eval.data / eval.subjects)")
    return exam


def run_exam(cfg: DictConfig, loaded: LoadedModel, exam: Exam) -> list[dict[str, Any]]:
    """Answer every question in the configured mode; one row per question for the reports."""
    ev = cfg.eval
    questions = exam.questions
    prompts = [loaded.render([{"role": "user", "content": mcq_prompt(q)}]) for q in questions]
    rows = []
    with _progress(cfg, len(questions), f"{ev.name} ({ev.mode})") as bar:
        if ev.mode == "loglik":
            settings = LoglikSettings(**OmegaConf.to_container(ev.loglik, resolve=True))
            contexts = [p + settings.answer_prefix for p in prompts]
            results = score_loglik(loaded, questions, contexts, cfg.batch_size, settings, progress=bar.update)
            for q, context, result in zip(questions, contexts, results, strict=True):
                top = dict(sorted(result.scores.items(), key=lambda kv: -kv[1])[:5])
                rows.append(_row(q, context, None, result.letters, "loglik", {k: round(v, 4) for k, v in top.items()}))
        else:
            generation = OmegaConf.to_container(ev.generate, resolve=True)
            replies = generate_texts(loaded, prompts, cfg.batch_size, generation, seed=cfg.seed, progress=bar.update)
            for q, prompt, reply in zip(questions, prompts, replies, strict=True):
                readback = read_answer(reply, q.options, q.multi)
                rows.append(_row(q, prompt, reply, readback.letters, readback.rule, None))
    return rows


def _row(
    question: Question, prompt: str, reply: str | None, letters: str, rule: str | None, scores: dict | None
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
    }


def evaluate_exam(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Load the suite and the model, answer, and write the reports."""
    ev = cfg.eval
    exam = load_suite(ev)
    log.info(
        "suite %s: %d questions (%d multi-answer), %d skipped, %d open items",
        ev.name,
        len(exam.questions),
        sum(q.multi for q in exam.questions),
        len(exam.skipped),
        exam.open_items,
    )
    loaded, model_name = load_evaluated_model(cfg)
    rows = run_exam(cfg, loaded, exam)
    summary = summarize(rows)
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
        "skipped": len(exam.skipped),
        "open_items": exam.open_items,
        "filtered": exam.filtered,
        "summary": summary,
        "settings": OmegaConf.to_container(ev.loglik if ev.mode == "loglik" else ev.generate, resolve=True),
        "files": files,
    }
    write_json(results, run_dir / "results.json")
    (run_dir / "results.md").write_text(markdown(results), encoding="utf-8")
    log.info("%s: accuracy %.1f%% over %d questions, miss rate %.1f%%", ev.name, 100 * summary["accuracy"],
             summary["n"], 100 * summary["miss_rate"])  # fmt: skip
    _log_to_loggers(cfg, results, rows)
    return results


# ---------------------------------------------------------------------------------------------------------------
# Judge
# ---------------------------------------------------------------------------------------------------------------


def _side_answers(cfg: DictConfig, side: str, questions: list[OpenQuestion], run_dir: Path) -> Answers:
    """One side's answers: its answer file, answers generated earlier in this run folder, or generated now."""
    spec = cfg.eval[side]
    name = spec.get("name") or side
    if spec.get("answers"):
        return read_answers(spec.answers, model_name=name)
    cache = run_dir / f"answers_{side}.jsonl"
    if cache.is_file():  # a resumed run (same hydra.run.dir) keeps the answers it already judged
        cached = read_answers(cache, model_name=name)
        if all(len(cached.replies.get(q.id, [])) == len(q.turns) for q in questions):
            log.info("reusing %s answers from %s", side, cache)
            return cached
    loaded, _ = load_evaluated_model(cfg, spec.get("model_path"))  # no model_path: the evaluated model
    total = sum(len(q.turns) for q in questions)
    generation = OmegaConf.to_container(cfg.eval.generation, resolve=True)
    with _progress(cfg, total, f"answers {name}") as bar:
        answers = generate_answers(
            loaded, questions, cfg.batch_size, generation, model_name=name, seed=cfg.seed, progress=bar.update
        )
    del loaded
    _release_memory()  # the other side's model may need the memory next
    write_answers(answers, cache)
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
    from huatuo.endpoint import ChatClient, EndpointSettings
    from huatuo.judge import JudgeSettings, judge_markdown, judge_pairs, summarize_judgments

    ev = cfg.eval
    questions = read_questions(ev.questions, turns=ev.turns) if ev.get("questions") else None
    if questions is not None and ev.get("limit"):
        questions = questions[: int(ev.limit)]
    generated = questions or []
    answers_a = _side_answers(cfg, "model_a", generated, run_dir)
    answers_b = _side_answers(cfg, "model_b", generated, run_dir)
    items, unmatched = build_items(questions, answers_a, answers_b)
    if not items:
        raise EvalConfigError(f"no question has answers from both models ({len(unmatched)} unmatched); check the files")
    endpoint = EndpointSettings(**OmegaConf.to_container(ev.judge, resolve=True))
    settings = JudgeSettings(rule=ev.rule, parse_retries=ev.parse_retries)
    judgments_path = Path(ev.judgments) if ev.get("judgments") else run_dir / "judgments.jsonl"

    async def run() -> dict:
        client = ChatClient(endpoint)
        try:
            with _progress(cfg, 2 * len(items), f"judge {endpoint.model}") as bar:
                return await judge_pairs(items, client, settings, judgments_path, progress=bar.update)
        finally:
            await client.close()

    judgments = asyncio.run(run())
    summary = summarize_judgments(items, judgments, ev.rule)
    summary["unmatched"] = unmatched
    results = {
        "kind": "judge",
        "suite": ev.name,
        "model_a": ev.model_a.get("name") or answers_a.model,
        "model_b": ev.model_b.get("name") or answers_b.model,
        "judge_model": endpoint.model,
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
    _log_to_loggers(cfg, results, summary["per_item"])
    return results


# ---------------------------------------------------------------------------------------------------------------
# Loggers and the entry point
# ---------------------------------------------------------------------------------------------------------------


def _flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    s, prefix = results["summary"], f"eval/{results['suite']}"
    if results["kind"] == "judge":
        keys = ("win", "tie", "loss", "win_rate", "tie_rate", "loss_rate", "judged", "order_consistency")
        return {f"{prefix}/{k}": float(s[k]) for k in keys}
    metrics = {f"{prefix}/{k}": float(s[k]) for k in ("accuracy", "miss_rate", "n", "macro_accuracy")}
    for name, group in s["by_dataset"].items():
        metrics[f"{prefix}/{name}/accuracy"] = float(group["accuracy"])
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def _log_to_loggers(cfg: DictConfig, results: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    specs = [spec for spec in (cfg.get("logger") or {}).values() if spec is not None]
    if not specs:
        return
    from lightning.pytorch.loggers import WandbLogger

    for spec in specs:
        logger = instantiate(spec)
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        logger.log_metrics(_flat_metrics(results))
        if isinstance(logger, WandbLogger):
            _wandb_tables(logger, results, rows)
            logger.experiment.finish()
        else:
            logger.save()
            logger.finalize("success")


def _wandb_tables(logger, results: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    if results["kind"] == "judge":
        columns = ["id", "ab", "ba", "outcome"]
        logger.log_table("judge/items", columns=columns, data=[[r[c] for c in columns] for r in rows])
        return
    columns = ["uid", "dataset", "subject", "question_type", "gold", "extracted", "correct", "miss", "rule", "reply"]
    logger.log_table("exam/predictions", columns=columns, data=[[r[c] for c in columns] for r in rows])
    subjects = results["summary"]["by_subject"]
    logger.log_table(
        "exam/subjects",
        columns=["subject", "n", "correct", "accuracy", "ci_low", "ci_high", "miss_rate"],
        data=[[k, g["n"], g["correct"], g["accuracy"], *g["ci95"], g["miss_rate"]] for k, g in subjects.items()],
    )
    logger.log_image("exam/subject_accuracy", images=[results["files"]["plot"]])


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured suite; returns what ``results.json`` holds."""
    check_eval_config(cfg)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "resolved_config.yaml", resolve=True)
    torch.manual_seed(cfg.seed)
    if cfg.eval.kind == "judge":
        return evaluate_judge(cfg, run_dir)
    return evaluate_exam(cfg, run_dir)


class RunFolderError(ValueError):
    """``run=DIR`` names something that is not a finished train run folder."""


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def expand_run(argv: list[str]) -> list[str]:
    """Expand ``run=DIR`` (a train run folder) into ``model_path=DIR/export`` plus the run's ``evaluate_with``.

    ``evaluate_with`` (conf/train.yaml, set by each experiment) is the suite the run is meant to be scored on: the
    paper's experiments name the 2023 pharmacist exam in generate mode. The command line wins: an override of the
    same key is kept and the run's is left out, and choosing another suite (``eval=...``) drops all the run's
    ``eval`` settings. Other arguments pass through unchanged.
    """
    runs = [arg for arg in argv if arg.startswith("run=")]
    if not runs:
        return argv
    if len(runs) > 1 or "," in runs[0]:
        raise RunFolderError(f"{', '.join(runs)}: give one train run folder (loop in the shell for several)")
    folder = Path(runs[0].split("=", 1)[1]).expanduser()
    config_file = folder / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise RunFolderError(
            f"run={folder}: {config_file} not found; give the folder a train run wrote (outputs/train/<time>, or "
            "multirun/train/<time>/<n>), or use model_path=DIR for any other model"
        )
    export = folder / "export"
    if not (export / "config.json").is_file():
        raise RunFolderError(
            f"run={folder}: no export in {export} (the run did not finish, or ran with export.enabled=false); finish "
            f"it with its own overrides plus hydra.run.dir={folder} resume=auto, or pass model_path=DIR"
        )
    suite = OmegaConf.load(config_file).get("evaluate_with") or []
    given = {_override_key(arg) for arg in argv if "=" in arg}
    added = [] if "model_path" in given else [f"model_path={export}"]
    for override in suite:
        key = _override_key(str(override))
        if key in given or ("eval" in given and (key == "eval" or key.startswith("eval."))):
            continue
        added.append(str(override))
    if added:
        log.info("run=%s evaluates with %s", folder, " ".join(added))
    at = argv.index(runs[0]) + 1  # right after run=: Hydra's argument parser wants the overrides in one run
    return [*argv[:at], *added, *argv[at:]]


def main() -> float | None:
    """Hydra entry point (``python evaluate.py`` / ``huatuo-evaluate``); returns accuracy or win rate for sweepers."""
    import sys

    import hydra

    from huatuo import conf_dir

    try:
        sys.argv[1:] = expand_run(sys.argv[1:])
    except RunFolderError as err:
        raise SystemExit(f"error: {err}") from None

    @hydra.main(version_base="1.3", config_path=conf_dir(), config_name="evaluate")
    def _main(cfg: DictConfig) -> float | None:
        results = evaluate(cfg)
        summary = results["summary"]
        return summary.get("accuracy", summary.get("win_rate"))

    return _main()
