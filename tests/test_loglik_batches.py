"""Log-likelihood scores do not depend on the batch: every backbone family, batch sizes and batch compositions.

A question's scores at batch 1 must equal its scores at batch 16 and in three shuffled batch compositions (random
neighbours, random chunk sizes, a small candidate batch that mixes rows of different prompt lengths in one cache pass),
and a brute-force likelihood (the context and the candidate run alone, unpadded, no cache) must agree. The ALiBi
models failed this before the bias measured distance between token positions: padding between a short prompt and its
candidate counted as distance.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

import huatuo
from huatuo.evaluation.exam_files import load_exam
from huatuo.evaluation.loglik import LoglikSettings, score_loglik
from huatuo.evaluation.prompt import mcq_prompt
from huatuo.inference.loading import LoadedModel

TOLERANCE = 1e-5
BACKBONES = ["llama", "baichuan_rope", "alibi_5_heads", "alibi_8_heads"]


def build(kind: str, tokenizer) -> torch.nn.Module:
    """A random-init tiny model of one family, sized so a test takes seconds."""
    torch.manual_seed(0)
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
        )
        return LlamaForCausalLM(config).eval()
    from huatuo.models.baichuan.config import BaichuanConfig
    from huatuo.models.baichuan.modeling import BaichuanForCausalLM

    heads = {"baichuan_rope": 4, "alibi_5_heads": 5, "alibi_8_heads": 8}[kind]
    config = BaichuanConfig(
        vocab_size=len(tokenizer),
        hidden_size=8 * heads,
        intermediate_size=16 * heads,
        num_hidden_layers=2,
        num_attention_heads=heads,
        position_embedding="rope" if kind == "baichuan_rope" else "alibi",
        model_max_length=1024,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BaichuanForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(scope="module")
def questions():
    exam = load_exam(huatuo.asset_path("demo/exam_demo.json"), dataset="demo").questions
    single = [q for q in exam if not q.multi][:14]
    multi = [q for q in exam if q.multi][:6]
    # A question with a much shorter prompt than the rest: the layout that moved ALiBi scores most.
    written = replace(exam[0].written, question="选", question_type=None)
    short = replace(exam[0], uid="demo/short", question="选", question_type=None, written=written)
    return single + multi + [short]


def contexts(loaded: LoadedModel, questions) -> list[str]:
    return [loaded.render([{"role": "user", "content": mcq_prompt(q)}]) + "答案是" for q in questions]


def brute_force(loaded: LoadedModel, context: str, continuation_ids: list[int]) -> float:
    """Log-probability of the continuation after the context, from one unpadded forward pass without a cache."""
    context_ids = loaded.tokenizer(context, add_special_tokens=False).input_ids
    full = context_ids + continuation_ids
    with torch.no_grad():
        logits = loaded.model(torch.tensor([full]), use_cache=False).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return sum(float(logprobs[t - 1, full[t]]) for t in range(len(context_ids), len(full)))


def assert_same(reference, other, what: str) -> None:
    for i, (a, b) in enumerate(zip(reference, other, strict=True)):
        assert a.letters == b.letters, f"{what}: question {i} predicted {b.letters}, batch 1 predicted {a.letters}"
        worst = max(abs(a.scores[k] - b.scores[k]) for k in a.scores)
        assert worst <= TOLERANCE, f"{what}: question {i} scores moved by {worst:.2e}"


@pytest.mark.parametrize("kind", BACKBONES)
def test_scores_do_not_depend_on_batch_size_or_neighbours(kind, tokenizer, questions):
    loaded = LoadedModel(model=build(kind, tokenizer), tokenizer=tokenizer, device=torch.device("cpu"))
    ctx = contexts(loaded, questions)
    alone = score_loglik(loaded, questions, ctx, batch_size=1, settings=LoglikSettings(candidate_batch=1))
    assert_same(alone, score_loglik(loaded, questions, ctx, batch_size=16), "batch 16")
    for seed in range(3):
        rng = random.Random(seed)
        order = list(range(len(questions)))
        rng.shuffle(order)
        shuffled: list = [None] * len(questions)
        start = 0
        while start < len(order):
            chunk = order[start : start + rng.randint(2, 9)]
            settings = LoglikSettings(candidate_batch=rng.choice([5, 13, 64]))
            results = score_loglik(loaded, [questions[i] for i in chunk], [ctx[i] for i in chunk], len(chunk), settings)
            for i, result in zip(chunk, results, strict=True):
                shuffled[i] = result
            start += len(chunk)
        assert_same(alone, shuffled, f"composition {seed}")

    # The same numbers as running each context and candidate alone: the tokens scored are the planner's.
    from huatuo.evaluation.loglik import _plan

    for item in _plan(loaded, questions, ctx, LoglikSettings()):
        result = alone[item.index]
        for letters, continuation in list(zip(item.candidates, item.continuations, strict=True))[:6]:
            expected = brute_force(loaded, ctx[item.index], continuation)
            assert abs(result.scores[letters] - expected) <= 1e-4, (kind, item.index, letters)
