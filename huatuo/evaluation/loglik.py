"""Answering multiple-choice questions with a model, in two modes.

``generate`` is the paper's protocol: the prompt of ``prompt.mcq_prompt`` in the chat format, sampled replies
(temperature 0.5, top_p 0.7 by default; greedy available), letters read back by ``replies.read_reply``.

``loglik`` reads the model's own probabilities instead of its prose, after the same prompt and the start of an
answer, ``答案是`` (the phrase the paper's first read-back rule looks for):

- single-answer questions: one forward pass; the prediction is the option letter whose token is most likely
  next. (When a tokenizer would merge a letter with the text before it, or spell it in several tokens, the
  question falls back to the rule below with single letters as candidates.)
- multi-answer questions (多项选择题): every candidate letter set (all sets of ``multi_min_letters`` or more
  letters, in alphabetical order, e.g. ``ACD``) is scored by the log-probability of the whole continuation
  ``ACD。``, tokenized as the model would write it; the closing ``。`` makes a set compete fairly with its own
  prefixes (without it ``AC`` would always beat ``ACD``). The prompt is run once per question and its key/value
  cache is shared by all candidates, so a 5-option question costs one prompt pass plus one short pass over its
  26 candidates. The prediction is the most probable set: an exact-set match is the same bar as in generate mode.

Both paths are deterministic and batched: rows are right-padded (a causal model never looks right, so padding
changes nothing), grouped by length, and scored in batches of ``batch_size`` questions (``candidate_batch``
candidate continuations at a time). A candidate follows its prompt's padding in the cache, so the continuation pass
gives the model explicit positions and a mask: RoPE models read the positions, and the ALiBi bias (Baichuan2-13B)
measures distance between positions taken from the mask, so the padding gap counts for nothing in either. Batch size
and the other questions of a batch change only float rounding, not predictions (``tests/test_loglik_batches.py``).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import torch

from huatuo.core.errors import ConfigError
from huatuo.evaluation.exams import Question
from huatuo.inference.loading import LoadedModel


@dataclass
class LoglikSettings:
    """Knobs of the log-likelihood mode (``eval.loglik`` in YAML)."""

    answer_prefix: str = "答案是"  # appended after the chat prompt; the model's answer starts here
    terminator: str = "。"  # closes a multi-answer candidate so that longer sets can win
    multi_min_letters: int = 2  # smallest letter set scored for a multi-answer question
    candidate_batch: int = 64  # candidate continuations per forward pass (memory: this many copies of the cache)
    max_candidates: int = 256  # refuse questions with more candidate sets than this (7 options: 120)


@dataclass
class LoglikResult:
    """The predicted letters, the log-probability of each candidate, and which path scored them."""

    letters: str
    scores: dict[str, float] = field(default_factory=dict)
    path: str = "next_token"  # "next_token" | "continuation"


def candidate_sets(letters: str, multi: bool, min_letters: int = 2) -> list[str]:
    """Answers a question admits: each letter, or every alphabetical set of ``min_letters``+ letters."""
    if not multi:
        return list(letters)
    sizes = range(max(1, min_letters), len(letters) + 1)
    return ["".join(c) for size in sizes for c in combinations(sorted(letters), size)]


def unscorable_reason(question: Question, settings: LoglikSettings) -> str | None:
    """Why this mode cannot score a question (None when it can): too many candidate letter sets."""
    count = len(candidate_sets("".join(question.options), question.multi, settings.multi_min_letters))
    if count > settings.max_candidates:
        return (
            f"{count} candidate answers exceed eval.loglik.max_candidates={settings.max_candidates}; raise it or "
            "evaluate this exam with eval.mode=generate"
        )
    return None


def _encode_all(tokenizer, texts: list[str]) -> list[list[int]]:
    # One call for every text: the Rust tokenizer encodes a list in parallel, hundreds of times faster than a loop.
    return tokenizer(texts, add_special_tokens=False).input_ids if texts else []


SEAM_CHARS = 16  # context characters re-tokenized together with each candidate


def _continuations(tokenizer, contexts, context_ids, all_candidates) -> list[list[list[int]]]:
    """Each candidate's token ids as the model would write it after its context.

    Appending a candidate changes the tokenization only at the end of the context, and every exam prompt ends the
    same way (``\n<答>：答案是``), so each distinct (context tail, candidate) pair is tokenized once instead of
    every context + candidate string. A context is tokenized in full with its candidates when its tail does not
    reproduce its own last tokens, and each (tail, candidate list) is checked once against the full tokenization.
    """
    tails = [context[-SEAM_CHARS:] for context in contexts]
    distinct = sorted(set(tails))
    tail_ids = dict(zip(distinct, _encode_all(tokenizer, distinct), strict=True))
    pairs = sorted({(tail, c) for tail, cands in zip(tails, all_candidates, strict=True) for c in cands})
    seam = dict(zip(pairs, _encode_all(tokenizer, [tail + c for tail, c in pairs]), strict=True))

    def from_seam(i: int) -> list[list[int]] | None:
        ids, ctx = tail_ids[tails[i]], context_ids[i]
        if not ids or ctx[len(ctx) - len(ids) :] != ids:
            return None
        out = []
        for c in all_candidates[i]:
            joined = seam[(tails[i], c)]
            if joined[: len(ids)] != ids or len(joined) == len(ids):
                return None
            out.append(joined[len(ids) :])
        return out

    def in_full(indices: list[int]) -> dict[int, list[list[int]]]:
        texts = [contexts[i] + c for i in indices for c in all_candidates[i]]
        encoded, cursor, out = _encode_all(tokenizer, texts), 0, {}
        for i in indices:
            prefix, conts = context_ids[i], []
            for c in all_candidates[i]:
                full = encoded[cursor]
                cursor += 1
                if full[: len(prefix)] == prefix and len(full) > len(prefix):
                    conts.append(full[len(prefix) :])
                else:  # the candidate merged into the context's last token: score its own tokens
                    conts.append(_encode_all(tokenizer, [c])[0])
            out[i] = conts
        return out

    result = [from_seam(i) for i in range(len(contexts))]
    keys = [(tails[i], tuple(all_candidates[i])) for i in range(len(contexts))]
    first = {key: keys.index(key) for key in set(keys)}  # one full check per tail and candidate list
    checked = in_full([i for i in first.values() if result[i] is not None])
    trusted = {key for key, i in first.items() if result[i] is not None and checked[i] == result[i]}
    fallback = in_full([i for i in range(len(contexts)) if result[i] is None or keys[i] not in trusted])
    return [fallback.get(i, result[i]) for i in range(len(contexts))]


@dataclass
class _Item:
    index: int
    context_ids: list[int]
    candidates: list[str]
    continuations: list[list[int]]
    fast: bool


def _plan(loaded: LoadedModel, questions: Sequence[Question], contexts: Sequence[str], settings: LoglikSettings):
    tokenizer = loaded.tokenizer
    all_candidates = []
    for question in questions:
        if reason := unscorable_reason(question, settings):  # callers leave such questions out first (suites)
            raise ConfigError(f"{question.source}: {reason}")
        candidates = candidate_sets("".join(question.options), question.multi, settings.multi_min_letters)
        suffix = settings.terminator if question.multi else ""
        all_candidates.append([c + suffix for c in candidates])
    context_ids = _encode_all(tokenizer, list(contexts))
    all_continuations = _continuations(tokenizer, contexts, context_ids, all_candidates)
    items = []
    for i, (question, candidates) in enumerate(zip(questions, all_candidates, strict=True)):
        prefix, continuations = context_ids[i], all_continuations[i]
        fast = (
            not question.multi
            and all(len(c) == 1 for c in continuations)
            and len({c[0] for c in continuations}) == len(continuations)
        )
        letters = [c.removesuffix(settings.terminator) if question.multi else c for c in candidates]
        items.append(_Item(i, prefix, letters, continuations, fast))
    return items


def _pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, : len(row)] = 1
    return ids, mask


def _result(item: _Item, scores: list[float], path: str) -> LoglikResult:
    best = max(range(len(scores)), key=lambda k: (scores[k], -k))  # ties: the first candidate, deterministic
    return LoglikResult(item.candidates[best], dict(zip(item.candidates, scores, strict=True)), path)


@torch.inference_mode()
def score_loglik(
    loaded: LoadedModel,
    questions: Sequence[Question],
    contexts: Sequence[str],
    batch_size: int = 16,
    settings: LoglikSettings | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[LoglikResult]:
    """Score every question's candidates after its context (chat prompt + answer prefix); see the module doc."""
    settings = settings or LoglikSettings()
    model, device = loaded.model, loaded.device
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    items = _plan(loaded, questions, contexts, settings)
    results: list[LoglikResult | None] = [None] * len(items)
    for fast in (True, False):
        group = sorted((it for it in items if it.fast == fast), key=lambda it: len(it.context_ids))
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            ids, mask = _pad_right([it.context_ids for it in batch], pad_id)
            last, cache = _prompt_pass(model, device, ids, mask, use_cache=not fast)
            if fast:
                for r, it in enumerate(batch):
                    scores = [float(last[r, c[0]]) for c in it.continuations]
                    results[it.index] = _result(it, scores, "next_token")
            else:
                totals = _score_continuations(model, device, cache, batch, mask, last, settings, pad_id)
                for r, it in enumerate(batch):
                    results[it.index] = _result(it, totals[r], "continuation")
            if progress:
                progress(len(batch))
    return [r for r in results if r is not None]


def _cache_argument(model) -> str:
    # transformers 5 renamed past_key_values to cache; older releases (and remote code) know only the old name.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _prompt_pass(model, device, ids: torch.Tensor, mask: torch.Tensor, use_cache: bool):
    """Log-probabilities of the next token after each row's last real token (and the cache when asked)."""
    last_index = mask.sum(dim=1) - 1
    keep, where = torch.unique(last_index, return_inverse=True)  # the LM head runs on these positions only
    # No attention mask: pads sit to the right of every real token and causal attention never looks right, so
    # the mask would change nothing here, while leaving it out keeps the fused causal attention kernel.
    kwargs = {"input_ids": ids.to(device), "use_cache": use_cache}
    try:
        out = model(**kwargs, logits_to_keep=keep.to(device), return_dict=True)
        logits = out.logits[torch.arange(len(ids)), where.to(device)]
    except TypeError:  # a model without logits_to_keep: compute every position
        out = model(**kwargs, return_dict=True)
        logits = out.logits[torch.arange(len(ids)), last_index.to(device)]
    cache = (out.get("cache") or out.get("past_key_values")) if use_cache else None  # the name depends on the release
    return torch.log_softmax(logits.float(), dim=-1), cache


def _score_continuations(model, device, cache, batch, prompt_mask, last, settings, pad_id) -> list[list[float]]:
    """Sum of log-probabilities of each candidate continuation, reusing the prompt's key/value cache."""
    lengths = prompt_mask.sum(dim=1)
    flat = [(r, k) for r, it in enumerate(batch) for k in range(len(it.candidates))]
    totals = [[0.0] * len(it.candidates) for it in batch]
    for start in range(0, len(flat), settings.candidate_batch):
        chunk = flat[start : start + settings.candidate_batch]
        rows = torch.tensor([r for r, _ in chunk])
        conts = [batch[r].continuations[k] for r, k in chunk]
        first = [float(last[r, cont[0]]) for (r, _), cont in zip(chunk, conts, strict=True)]
        if max(len(c) for c in conts) == 1:
            for (r, k), score in zip(chunk, first, strict=True):
                totals[r][k] = score
            continue
        ids, cont_mask = _pad_right(conts, pad_id)
        shared = copy.deepcopy(cache)
        shared.batch_select_indices(rows.to(device))
        mask = torch.cat([prompt_mask[rows], cont_mask], dim=1)
        positions = lengths[rows, None] + torch.arange(ids.shape[1])[None, :]
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            return_dict=True,
            **{_cache_argument(model): shared},
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)
        following = ids[:, 1:].to(device)
        rest = logprobs[:, :-1].gather(-1, following.unsqueeze(-1)).squeeze(-1) * cont_mask[:, 1:].to(device)
        for j, (r, k) in enumerate(chunk):
            totals[r][k] = first[j] + float(rest[j].sum())
    return totals
