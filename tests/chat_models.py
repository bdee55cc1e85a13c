"""Tiny local models for the chat tests: our export, and variants whose tokenizers carry other chat templates."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.servers import make_tiny_checkpoint

# A ChatML-style template, as many Hugging Face chat models ship: not the HuatuoGPT-II format.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Different Jinja text that renders the HuatuoGPT-II format (as a re-saved export or a released folder might).
HUATUO_LOOKALIKE_TEMPLATE = (
    "{% for m in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{% if m.role == 'user' %}<问>：{% else %}<答>：{% endif %}{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n<答>：' }}{% endif %}"
)


def export_checkpoint(out_dir: Path) -> Path:
    """Our export: a random-init tiny Llama with the demo tokenizer and the HuatuoGPT-II chat template."""
    return make_tiny_checkpoint(out_dir)


def with_template(export_dir: Path, out_dir: Path, template: str | None) -> Path:
    """A copy of ``export_dir`` whose tokenizer carries ``template`` (None: no chat template at all)."""
    from transformers import AutoTokenizer

    shutil.copytree(export_dir, out_dir)
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(out_dir)
    if template is None:
        (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    return out_dir
