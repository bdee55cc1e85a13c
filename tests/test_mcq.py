"""Both exam modes on a tiny random-init model: loglik equals brute-force likelihoods, batching changes nothing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import huatuo
from huatuo.evaluation.exam_files import load_exam
from huatuo.evaluation.generation import cut_at_next_turn, generate_texts
from huatuo.evaluation.loglik import LoglikSettings, _continuations, candidate_sets, score_loglik
from huatuo.evaluation.prompt import mcq_prompt
from huatuo.inference.loading import load_for_inference
from tests.servers import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")
    return load_for_inference(str(folder), device="cpu")


@pytest.fixture(scope="module")
def exam():
    return load_exam(huatuo.asset_path("demo/exam_demo.json"), dataset="demo").questions


def contexts(loaded, questions, prefix="答案是"):
    return [loaded.render([{"role": "user", "content": mcq_prompt(q)}]) + prefix for q in questions]


def brute_force(loaded, context: str, continuation: str) -> float:
    """Log-probability of continuation after context from one full forward pass, no batching, no cache."""
    tokenizer = loaded.tokenizer
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    full = tokenizer(context + continuation, add_special_tokens=False).input_ids
    assert full[: len(context_ids)] == context_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(loaded.model(torch.tensor([full])).logits[0].float(), dim=-1)
    return sum(float(logprobs[t - 1, full[t]]) for t in range(len(context_ids), len(full)))


def test_candidate_sets():
    assert candidate_sets("ABCDE", multi=False) == ["A", "B", "C", "D", "E"]
    sets = candidate_sets("ABCDE", multi=True, min_letters=2)
    assert len(sets) == 26 and sets[:3] == ["AB", "AC", "AD"] and sets[-1] == "ABCDE"
    assert len(candidate_sets("ABCDE", multi=True, min_letters=1)) == 31
    assert candidate_sets("ABCD", multi=True, min_letters=2)[-1] == "ABCD"


def test_loglik_scores_are_the_models_likelihoods(tiny, exam):
    questions = [exam[0], exam[6], exam[7]]  # one single-answer, two multi-answer
    ctx = contexts(tiny, questions)
    results = score_loglik(tiny, questions, ctx, batch_size=3)
    single, multi, _ = results
    assert single.path == "next_token" and multi.path == "continuation"
    for letter in "ABCDE":
        assert single.scores[letter] == pytest.approx(brute_force(tiny, ctx[0], letter), abs=1e-4)
    assert len(multi.scores) == 26
    for letters in ("AB", "BDE", "ABCDE"):
        assert multi.scores[letters] == pytest.approx(brute_force(tiny, ctx[1], letters + "。"), abs=1e-4)
    assert single.letters == max(single.scores, key=single.scores.get)
    assert multi.letters == max(multi.scores, key=multi.scores.get)


def test_loglik_is_deterministic_and_batch_size_changes_nothing(tiny, exam):
    questions = exam[:16]  # 12 single-answer, 4 multi-answer
    ctx = contexts(tiny, questions)
    batched = score_loglik(tiny, questions, ctx, batch_size=16)
    again = score_loglik(tiny, questions, ctx, batch_size=16)
    one_by_one = score_loglik(tiny, questions, ctx, batch_size=1, settings=LoglikSettings(candidate_batch=7))
    assert [r.letters for r in batched] == [r.letters for r in again] == [r.letters for r in one_by_one]
    assert [r.scores for r in batched] == [r.scores for r in again]
    for a, b in zip(batched, one_by_one, strict=True):
        assert a.scores.keys() == b.scores.keys()
        assert max(abs(a.scores[k] - b.scores[k]) for k in a.scores) < 1e-3


def test_multi_answer_sets_respect_the_minimum_size(tiny, exam):
    multi = [q for q in exam if q.multi][:2]
    results = score_loglik(tiny, multi, contexts(tiny, multi), settings=LoglikSettings(multi_min_letters=3))
    assert all(len(k) >= 3 for r in results for k in r.scores)
    with pytest.raises(ValueError, match="max_candidates"):
        score_loglik(tiny, multi, contexts(tiny, multi), settings=LoglikSettings(max_candidates=10))


def test_generate_is_reproducible_and_greedy_does_not_depend_on_batch_size(tiny, exam):
    prompts = [tiny.render([{"role": "user", "content": mcq_prompt(q)}]) for q in exam[:4]]
    sampled = {"do_sample": True, "temperature": 0.5, "top_p": 0.7, "repetition_penalty": 1.1, "max_new_tokens": 6}
    first = generate_texts(tiny, prompts, batch_size=3, generation=sampled, seed=7)
    assert first == generate_texts(tiny, prompts, batch_size=3, generation=sampled, seed=7)
    assert all(isinstance(r, str) and r for r in first)
    greedy = {"do_sample": False, "temperature": 0.5, "max_new_tokens": 6}  # sampling knobs are dropped for greedy
    assert generate_texts(tiny, prompts, 4, greedy) == generate_texts(tiny, prompts, 1, greedy)


def test_a_reply_stops_where_the_model_starts_the_next_user_turn():
    assert cut_at_next_turn("答案是B。\n<问>：下一题") == "答案是B。"
    assert cut_at_next_turn("答案是B。<问>：") == "答案是B。"
    assert cut_at_next_turn("  答案是B。 ") == "答案是B。"


class CharTokenizer:
    """One token per character, with two non-local quirks that break the shortcut of tokenizing only the seam."""

    def __call__(self, texts, add_special_tokens=False):
        return SimpleNamespace(input_ids=[self.encode(t) for t in texts])

    @staticmethod
    def encode(text: str) -> list[int]:
        ids = [ord(c) for c in text]
        if text.startswith("#") and ids:  # the last token depends on the first character
            ids[-1] += 5 * 10**6
        if text.startswith("!") and text.endswith("A"):  # the candidate's token depends on the first character
            ids[-1] += 10**7
        return ids


def test_candidate_tokenization_matches_tokenizing_every_full_string():
    tokenizer = CharTokenizer()
    shared_tail = "x" * 20 + "答案是"
    contexts = ["!" + shared_tail, shared_tail, "#" + "y" * 20 + "答案是", "z" * 20 + "答案：", "w" * 25 + "答案："]
    candidates = [["A", "B"], ["A", "B"], ["A", "B"], ["A", "BC。"], ["A", "B"]]
    context_ids = [tokenizer.encode(c) for c in contexts]

    def full(context, candidate):
        prefix, ids = tokenizer.encode(context), tokenizer.encode(context + candidate)
        return ids[len(prefix) :] if ids[: len(prefix)] == prefix else tokenizer.encode(candidate)

    expected = [[full(ctx, c) for c in cands] for ctx, cands in zip(contexts, candidates, strict=True)]
    assert expected[0][0] == [ord("A") + 10**7]  # the shortcut alone would have said [ord("A")] here
    assert _continuations(tokenizer, contexts, context_ids, candidates) == expected
