"""Every problem of a composed ``evaluate.yaml`` config, found before any model or data loads."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from huatuo.core.errors import raise_problems
from huatuo.models.loading import model_folder_problem

MODES = ("loglik", "generate")
RULES = ("sum", "agree")
BACKENDS = ("local", "endpoint")


def _cuda_available() -> bool:
    import torch  # only for a cuda device setting: torch takes a second or two to import

    return torch.cuda.is_available()


def eval_config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of a composed ``evaluate.yaml`` config that can be found without loading anything."""
    problems: list[str] = []
    ev = cfg.eval
    batch = cfg.get("batch_size")
    if not isinstance(batch, int) or batch < 1:
        problems.append(f"batch_size={batch!r} must be an integer >= 1")
    if str(cfg.get("device")).startswith("cuda") and not _cuda_available():
        problems.append(f"device={cfg.device} but no CUDA device is visible; use device=cpu or device=auto")
    model_path = cfg.get("model_path")
    if model_path is not None and (problem := model_folder_problem(str(model_path), "model_path")):
        problems.append(problem)
    contamination = cfg.get("contamination")
    if contamination is not None and not Path(str(contamination)).is_file():
        problems.append(f"contamination={contamination!r}: no such file; give a contamination.json of decontaminate")
    kind = ev.get("kind")
    problems += _backend_problems(ev)
    if kind == "mcq":
        problems += _mcq_problems(ev)
    elif kind == "judge":
        problems += _judge_problems(ev)
    else:
        problems.append(f"eval.kind={kind!r}: use mcq or judge (choose a suite with eval=<name>)")
    return problems


def _backend_problems(ev: DictConfig) -> list[str]:
    backend = ev.get("backend", "local")
    if backend not in BACKENDS:
        return [f"eval.backend={backend!r}: use local (generate in this process) or endpoint (a server, eval.endpoint)"]
    if backend == "local":
        return []
    from huatuo.evaluation.serving import endpoint_problems

    spec = ev.get("endpoint")
    problems = endpoint_problems(OmegaConf.to_container(spec, resolve=True) if spec is not None else None)
    if ev.get("kind") == "mcq" and ev.get("mode") == "loglik":
        problems.append(
            "eval.backend=endpoint answers by generating: set eval.mode=generate (loglik needs the model's "
            "probabilities, in this process)"
        )
    if ev.get("kind") == "judge" and (ev.get("model_a") or {}).get("model_path"):
        problems.append(
            "eval.model_a.model_path is set but eval.backend=endpoint generates model A's answers; drop one"
        )
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
    if not isinstance(ev.get("normalize_text", False), bool):
        problems.append(f"eval.normalize_text={ev.get('normalize_text')!r}: use false (the record's text) or true")
    if ev.get("cop_base") not in (None, 0, 1):
        problems.append(f"eval.cop_base={ev.get('cop_base')!r}: use 0, 1 or null (detect per file)")
    loglik = ev.get("loglik") or {}
    if int(loglik.get("multi_min_letters", 1)) < 1:
        problems.append("eval.loglik.multi_min_letters must be >= 1")
    if int(loglik.get("candidate_batch", 1)) < 1:
        problems.append("eval.loglik.candidate_batch must be >= 1")
    return problems


def _judge_problems(ev: DictConfig) -> list[str]:
    from huatuo.evaluation.serving import JUDGE_EXTRAS, split_endpoint_block

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
    judge = ev.get("judge")
    if not OmegaConf.is_dict(judge):
        return [*problems, f"eval.judge={judge!r}: give the judge's endpoint as a mapping (model, base_url, ...)"]
    _, extras, found = split_endpoint_block(OmegaConf.to_container(judge, resolve=True), JUDGE_EXTRAS, "eval.judge")
    problems += found
    if extras["prompt_file"]:
        problems += _rubric_file_problems(str(extras["prompt_file"]), single_turn=ev.get("turns") != "multi")
    return problems


def _rubric_file_problems(path: str, single_turn: bool) -> list[str]:
    from huatuo.evaluation.rubric import rubric_problems

    where = f"eval.judge.prompt_file={path!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return [f"{where}: no such file; give a rubric file with {{question}}, {{answer_1}} and {{answer_2}}"]
    except (OSError, UnicodeDecodeError) as err:
        return [f"{where}: cannot be read as UTF-8 text ({err})"]
    return rubric_problems(text, where, single_turn)


def check_eval_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem, or return quietly."""
    raise_problems("the evaluate config cannot run", eval_config_problems(cfg))
