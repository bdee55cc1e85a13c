"""The HuatuoGPT-II conversation format: the one prompt builder shared by training, evaluation, chat and export.

Text layout (compatible with the released HuatuoGPT2 checkpoints; full-width colon U+FF1A, no system prompt)::

    <问>：q1\n<答>：a1\n<问>：q2\n<答>：          <- prompt for the second answer

Token layout of one training sample ``[q1, a1, q2, a2]`` (``|`` separates separately tokenized pieces)::

    text    <问>：q1 | \n<答>： | a1 | \n<问>：q2 | \n<答>： | a2 | </s>
    labels  -100..   | -100.. | a1 | </s> -100.. | -100.. | a2 | </s>

Loss falls on answer tokens only. The end-of-answer label of a non-final answer sits on the first token of the
next user piece (HF shifts labels by one, so the model learns to predict ``</s>`` right after each answer while
the input stream carries no ``</s>`` between rounds, exactly as at inference); the sample ends with a real
``</s>`` token. The ``\\n<答>：`` marker is tokenized on its own, as the chat prompt ends with it, so the first
answer token is learned in the same context in which it is generated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

USER_PREFIX = "<问>："
ASSISTANT_PREFIX = "<答>："
TURN_SEPARATOR = "\n"
GENERATION_MARKER = TURN_SEPARATOR + ASSISTANT_PREFIX
IGNORE_INDEX = -100

# Jinja twin of build_prompt for tokenizer_config/chat_template.jinja. Tests render random conversations through
# both and require identical bytes. Content may be a string or a list of {"type": "text", "text": ...} parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ raise_exception('HuatuoGPT-II has no system prompt: put instructions in the first user message') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('roles must alternate user/assistant starting with user') }}"
    "{%- endif -%}"
    "{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{ '<问>：' }}{%- else -%}{{ '<答>：' }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\n<答>：' }}{%- endif -%}"
)


class ConversationError(ValueError):
    """A conversation that does not fit the HuatuoGPT-II format."""


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(part["text"] for part in content if isinstance(part, Mapping) and part.get("type") == "text")
    raise ConversationError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def messages_to_turns(messages: Sequence[Mapping] | Sequence[str]) -> list[str]:
    """Normalise OpenAI-style messages (or an alternating list of strings) to ``[q1, a1, q2, ...]``."""
    if all(isinstance(m, str) for m in messages):
        return list(messages)  # type: ignore[arg-type]
    turns = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, Mapping) else None
        if role == "system":
            raise ConversationError("HuatuoGPT-II has no system prompt: put instructions in the first user message")
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise ConversationError(
                f"message {index} has role {role!r}, expected {expected!r}: roles must alternate, starting with user"
            )
        turns.append(_content_text(message.get("content")))
    return turns


def build_prompt(messages: Sequence[Mapping] | Sequence[str], add_generation_prompt: bool = True) -> str:
    """Render a conversation in the HuatuoGPT-II format; with a generation prompt it ends in ``\\n<答>：``."""
    turns = messages_to_turns(messages)
    pieces = [(USER_PREFIX if i % 2 == 0 else ASSISTANT_PREFIX) + text for i, text in enumerate(turns)]
    prompt = TURN_SEPARATOR.join(pieces)
    return prompt + GENERATION_MARKER if add_generation_prompt else prompt


@dataclass(frozen=True)
class EncodedSample:
    """One tokenized conversation: aligned ``input_ids``/``labels`` and whether it was cut to ``max_len``."""

    input_ids: np.ndarray
    labels: np.ndarray
    truncated: bool


class ConversationEncoder:
    """Tokenizes conversations into ``input_ids``/``labels`` with the layout in this module's docstring.

    Texts of many conversations go to the tokenizer in one batched call (the Rust backend uses every core),
    which is what makes the prepare stage fast; a single conversation is the same call with one item.
    """

    def __init__(self, tokenizer, max_len: int) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token: set backbone.tokenizer.eos_token")
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.eos_id = int(tokenizer.eos_token_id)
        self.marker_ids = np.asarray(self._encode([GENERATION_MARKER])[0], dtype=np.int32)
        first_user = self._encode([USER_PREFIX + "x"])[0]
        minimum = len(first_user) + len(self.marker_ids) + 2  # question, marker, one answer token, </s>
        if max_len < minimum:
            raise ValueError(
                f"max_len={max_len} cannot hold even a one-token exchange in the HuatuoGPT-II template "
                f"(needs at least {minimum} tokens); raise data.max_len"
            )

    def _encode(self, texts: list[str]) -> list[list[int]]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None) or getattr(self.tokenizer, "_tokenizer", None)
        if backend is not None:  # the Rust tokenizer directly: no per-call Python overhead, parallel batches
            return [enc.ids for enc in backend.encode_batch(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def encode(self, turns: Sequence[str]) -> EncodedSample:
        """Tokenize one conversation ``[q1, a1, ...]`` (even length, starting with the user)."""
        return self.encode_batch([turns])[0]

    def encode_batch(self, conversations: Sequence[Sequence[str]]) -> list[EncodedSample]:
        """Tokenize many conversations with one tokenizer call."""
        texts: list[str] = []
        for turns in conversations:
            for i, text in enumerate(turns):
                if i % 2 == 0:
                    texts.append((TURN_SEPARATOR if i else "") + USER_PREFIX + text)
                else:
                    texts.append(text)
        ids = self._encode(texts) if texts else []
        samples, cursor = [], 0
        eos = np.asarray([self.eos_id], dtype=np.int32)
        for turns in conversations:
            piece_ids, piece_labels = [], []
            for i in range(len(turns)):
                tokens = np.asarray(ids[cursor], dtype=np.int32)
                cursor += 1
                if i % 2 == 0:
                    labels = np.full(len(tokens), IGNORE_INDEX, dtype=np.int32)
                    if i and len(labels):
                        labels[0] = self.eos_id  # end-of-answer label for the previous answer
                    piece_ids.append(tokens)
                    piece_labels.append(labels)
                else:
                    piece_ids += [self.marker_ids, tokens]
                    piece_labels += [np.full(len(self.marker_ids), IGNORE_INDEX, dtype=np.int32), tokens]
            piece_ids.append(eos)
            piece_labels.append(eos)
            input_ids = np.concatenate(piece_ids)
            labels = np.concatenate(piece_labels)
            truncated = len(input_ids) > self.max_len
            if truncated:
                input_ids, labels = input_ids[: self.max_len], labels[: self.max_len]
            samples.append(EncodedSample(input_ids, labels, truncated))
        return samples
