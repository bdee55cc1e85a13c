"""The HuatuoGPT-II conversation format: the one prompt builder shared by training, evaluation, chat and export.

Text layout (compatible with the released HuatuoGPT2 checkpoints; full-width colon U+FF1A, no system prompt)::

    <问>：q1\n<答>：a1\n<问>：q2\n<答>：          <- prompt for the second answer

``build_prompt`` renders it in Python and ``CHAT_TEMPLATE`` in Jinja (the exported tokenizer's chat template); tests
hold both to the same bytes. How a conversation becomes training tokens and labels is ``huatuo.data.encoder``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from huatuo.core.errors import ConversationError

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
