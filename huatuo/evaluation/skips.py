"""Questions the evaluator cannot score: found before scoring (or, for a server, while asking), each listed with its
reason. ``eval.on_error=raise`` (the default) stops with one error naming every such question; ``skip`` leaves them
out, lists them in ``results.json`` and counts them in the reports' ``skipped`` column beside the accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from huatuo.core.errors import DataError, raise_problems
from huatuo.evaluation.exams import Exam, OnError, Question

if TYPE_CHECKING:
    from huatuo.inference.loading import LoadedModel


def before_loading(ev: DictConfig, questions: Sequence[Question]) -> dict[int, str]:
    """``{index: reason}`` of the questions this mode cannot score whatever the model (loglik: too many candidates)."""
    if ev.mode != "loglik":
        return {}
    from huatuo.evaluation.loglik import LoglikSettings, unscorable_reason

    settings = LoglikSettings(**OmegaConf.to_container(ev.loglik, resolve=True))
    return {i: reason for i, question in enumerate(questions) if (reason := unscorable_reason(question, settings))}


def after_loading(ev: DictConfig, loaded: LoadedModel | None, prompts: Sequence[str]) -> dict[int, str]:
    """``{index: reason}`` of the rendered prompts a model loaded here cannot score: longer than its context.

    Positions past the context are untrained, so the numbers would mean nothing. A server checks its own limit (its
    refusal comes back as a failed request).
    """
    context = loaded.context_length if loaded is not None else None
    if not context or not prompts:
        return {}
    if ev.mode == "loglik":
        prompts = [p + str(ev.loglik.answer_prefix) for p in prompts]
    room = 8 if ev.mode == "loglik" else 1  # a candidate answer (letters and 。), or at least one new token
    lengths = [len(ids) for ids in loaded.tokenizer(list(prompts), add_special_tokens=False).input_ids]
    return {
        i: f"the prompt's {n} tokens leave no room in the model's context of {context}"
        for i, n in enumerate(lengths)
        if n + room > context
    }


def settle(exam: Exam, questions: Sequence[Question], reasons: Mapping[int, str], on_error: OnError) -> list[int]:
    """The indices of ``questions`` to score; the others are listed in ``exam.skipped`` (``skip``) or raise.

    With ``raise``, the error names every question that cannot be scored at once, the unreadable records already in
    ``exam.skipped`` (the suite is read with ``skip`` so that they wait for this) included.
    """
    found = [
        {"source": questions[i].source, "uid": questions[i].uid, "dataset": questions[i].dataset, "reason": reason}
        for i, reason in sorted(reasons.items())
    ]
    if on_error != "skip" and (found or exam.skipped):
        entries = exam.skipped + found
        raise_problems(
            f"{len(entries)} record(s) cannot be scored",
            [f"{e['source']}" + (f" ({e['uid']})" if e.get("uid") else "") + f": {e['reason']}" for e in entries],
            DataError,
            footer="Fix what each line names, or set eval.on_error=skip to leave them out (listed in results.json).",
        )
    exam.skipped += found
    return [i for i in range(len(questions)) if i not in reasons]
