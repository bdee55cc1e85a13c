"""The HuatuoGPT-II prompt format and training token layout, pinned byte for byte."""

from __future__ import annotations

import random

import numpy as np
import pytest

from huatuo.core.errors import ConversationError
from huatuo.core.template import CHAT_TEMPLATE, GENERATION_MARKER, IGNORE_INDEX, build_prompt
from huatuo.data.encoder import ConversationEncoder


def test_single_turn_prompt_bytes():
    prompt = build_prompt([{"role": "user", "content": "肚子疼怎么办？"}])
    assert prompt == "<问>：肚子疼怎么办？\n<答>："
    assert (
        prompt.encode() == b"<\xe9\x97\xae>\xef\xbc\x9a\xe8\x82\x9a\xe5\xad\x90\xe7\x96\xbc\xe6\x80\x8e\xe4\xb9\x88"
        b"\xe5\x8a\x9e\xef\xbc\x9f\n<\xe7\xad\x94>\xef\xbc\x9a"
    )  # full-width colon U+FF1A, no trailing space


def test_multi_turn_prompt_and_turn_lists():
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert build_prompt(messages) == "<问>：q1\n<答>：a1\n<问>：q2\n<答>："
    assert build_prompt(["q1", "a1", "q2"]) == build_prompt(messages)
    assert build_prompt(["q1", "a1"], add_generation_prompt=False) == "<问>：q1\n<答>：a1"


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "be nice"}, {"role": "user", "content": "q"}],
        [{"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}],
    ],
)
def test_bad_roles_are_rejected_by_builder_and_template(messages, tiny_tokenizer):
    with pytest.raises(ConversationError):
        build_prompt(messages)
    tiny_tokenizer.chat_template = CHAT_TEMPLATE
    with pytest.raises(Exception, match="system prompt|alternate"):
        tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _random_text(rng: random.Random) -> str:
    alphabet = "患者发热咳嗽三天体温多少度需要吃药吗 abcXYZ0123456789？。！,.\n\t:：<>{}%'\"\\"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))


def test_chat_template_renders_exactly_what_the_builder_renders(tiny_tokenizer):
    tiny_tokenizer.chat_template = CHAT_TEMPLATE
    rng = random.Random(0)
    for _ in range(300):
        rounds = rng.randint(1, 4)
        messages = []
        for i in range(2 * rounds - rng.randint(0, 1)):
            content = _random_text(rng)
            if rng.random() < 0.2:  # OpenAI content parts
                content = [{"type": "text", "text": content}, {"type": "text", "text": _random_text(rng)}]
            messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": content})
        for generation in (True, False):
            rendered = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            assert rendered == build_prompt(messages, add_generation_prompt=generation)


def _enc(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_single_turn_token_layout(tiny_tokenizer):
    encoder = ConversationEncoder(tiny_tokenizer, max_len=256)
    sample = encoder.encode(["头痛怎么办？", "多休息，必要时就医。"])
    user, marker, answer = (
        _enc(tiny_tokenizer, "<问>：头痛怎么办？"),
        _enc(tiny_tokenizer, GENERATION_MARKER),
        _enc(tiny_tokenizer, "多休息，必要时就医。"),
    )
    eos = tiny_tokenizer.eos_token_id
    assert sample.input_ids.tolist() == user + marker + answer + [eos]
    assert sample.labels.tolist() == [IGNORE_INDEX] * (len(user) + len(marker)) + answer + [eos]
    assert tiny_tokenizer.decode(sample.input_ids.tolist()) == "<问>：头痛怎么办？\n<答>：多休息，必要时就医。</s>"
    assert not sample.truncated


def test_multi_turn_token_layout_puts_eos_label_after_every_answer(tiny_tokenizer):
    encoder = ConversationEncoder(tiny_tokenizer, max_len=512)
    turns = ["咳嗽一周了", "有发热吗？", "没有发热", "可以先观察，多喝水。"]
    sample = encoder.encode(turns)
    enc = lambda text: _enc(tiny_tokenizer, text)  # noqa: E731
    eos = tiny_tokenizer.eos_token_id
    q1, m, a1, q2, a2 = (
        enc("<问>：咳嗽一周了"),
        enc(GENERATION_MARKER),
        enc("有发热吗？"),
        enc("\n<问>：没有发热"),
        enc("可以先观察，多喝水。"),
    )
    assert sample.input_ids.tolist() == q1 + m + a1 + q2 + m + a2 + [eos]
    expected = (
        [IGNORE_INDEX] * (len(q1) + len(m))
        + a1
        + [eos]
        + [IGNORE_INDEX] * (len(q2) - 1)  # end-of-answer label on the first token of the next question
        + [IGNORE_INDEX] * len(m)
        + a2
        + [eos]
    )
    assert sample.labels.tolist() == expected
    # the text the model reads is exactly the chat prompt followed by the answer
    assert tiny_tokenizer.decode(sample.input_ids.tolist()) == build_prompt(turns[:3]) + turns[3] + "</s>"


def test_overlong_samples_are_truncated_and_flagged(tiny_tokenizer):
    encoder = ConversationEncoder(tiny_tokenizer, max_len=32)
    sample = encoder.encode(["问" * 10, "答" * 200])
    assert sample.truncated and len(sample.input_ids) == len(sample.labels) == 32


def test_batch_encoding_equals_one_by_one(tiny_tokenizer):
    encoder = ConversationEncoder(tiny_tokenizer, max_len=128)
    rng = random.Random(1)
    conversations = [[_random_text(rng) for _ in range(2 * rng.randint(1, 3))] for _ in range(40)]
    batch = encoder.encode_batch(conversations)
    for conversation, sample in zip(conversations, batch, strict=True):
        single = encoder.encode(conversation)
        np.testing.assert_array_equal(single.input_ids, sample.input_ids)
        np.testing.assert_array_equal(single.labels, sample.labels)


def test_max_len_too_small_for_the_template_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="raise data.max_len"):
        ConversationEncoder(tiny_tokenizer, max_len=4)


def reference_encode(tokenizer, turns: list[str], max_len: int) -> tuple[list[int], list[int]]:
    """The token layout of the module docstring, one piece and one Python list at a time."""
    eos = tokenizer.eos_token_id
    marker = _enc(tokenizer, GENERATION_MARKER)
    ids: list[int] = []
    labels: list[int] = []
    for i, text in enumerate(turns):
        if i % 2 == 0:
            piece = _enc(tokenizer, ("\n" if i else "") + "<问>：" + text)
            ids += piece
            labels += ([eos] if i else [IGNORE_INDEX]) + [IGNORE_INDEX] * (len(piece) - 1)
        else:
            piece = _enc(tokenizer, text)
            ids += marker + piece
            labels += [IGNORE_INDEX] * len(marker) + piece
    return (ids + [eos])[:max_len], (labels + [eos])[:max_len]


@pytest.mark.parametrize("max_len", [24, 64, 4096])
def test_vectorised_batch_equals_a_plain_reference_implementation(tiny_tokenizer, max_len):
    encoder = ConversationEncoder(tiny_tokenizer, max_len=max_len)
    rng = random.Random(max_len)
    conversations = [[_random_text(rng) for _ in range(2 * rng.randint(1, 4))] for _ in range(150)]
    flat = encoder.encode_flat(conversations)
    assert len(flat) == 150
    for i, turns in enumerate(conversations):
        ids, labels = reference_encode(tiny_tokenizer, turns, max_len)
        sample = flat.sample(i)
        assert sample.input_ids.tolist() == ids
        assert sample.labels.tolist() == labels
        assert sample.truncated == (len(reference_encode(tiny_tokenizer, turns, 10**9)[0]) > max_len)
        assert flat.supervised[i] == sum(label != IGNORE_INDEX for label in labels)
    assert encoder.encode_flat([]).offsets.tolist() == [0]


def test_truncation_left_on_by_an_earlier_tokenizer_call_does_not_cut_pieces():
    # tokenizer(text, truncation=True, max_length=n) switches truncation on in the shared Rust backend and leaves it
    # there; the encoder must still see whole pieces, and must leave that state as it found it.
    from huatuo import asset_path
    from huatuo.data.fingerprint import tokenizer_digest
    from huatuo.models.loading import load_tokenizer

    tokenizer = load_tokenizer(asset_path("tiny_tokenizer"))
    encoder = ConversationEncoder(tokenizer, max_len=512)
    turns = ["头痛怎么办？" * 3, "多休息，必要时就医。" * 4]
    expected = encoder.encode(turns).input_ids.tolist()
    digest = tokenizer_digest(tokenizer)
    tokenizer("头痛", truncation=True, max_length=3)
    tokenizer.backend_tokenizer.enable_padding(length=7)
    state = (tokenizer.backend_tokenizer.truncation, tokenizer.backend_tokenizer.padding)
    assert state[0]["max_length"] == 3 and len(expected) > 20
    assert encoder.encode(turns).input_ids.tolist() == expected
    assert (tokenizer.backend_tokenizer.truncation, tokenizer.backend_tokenizer.padding) == state
    assert tokenizer_digest(tokenizer) == digest  # the prepared cache is keyed by the tokenizer, not by call state
