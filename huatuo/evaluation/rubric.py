"""The judge's instructions: our medical rubric, or a user's rubric file with named placeholders.

A rubric is a template with ``{question}``, ``{answer_1}`` and ``{answer_2}``: Assistant 1's and Assistant 2's
answers for a single-turn question, the two whole transcripts for a conversation (whose ``{question}`` is the
patient's turns, one per line). ``{{`` and ``}}`` are literal braces, and any other brace (``{"a": 1}``) is text, so
a rubric copied from a published script needs only its placeholders renamed. A file is checked before any request:
``rubric_problems`` names every unknown placeholder and every one it lacks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_INSTRUCTIONS = """Compare the two answers as a senior physician would, in this order of importance:
1. Medical correctness and safety: facts, diagnoses, drugs, doses, contraindications and interactions are right;
   nothing harmful is advised; warning signs are recognised and the patient is told plainly when and where to seek
   care.
2. Clinical reasoning: the likely explanations follow from everything the patient said, and the alternatives that
   matter are considered rather than one guess presented as certain.
3. Usefulness: the answer deals with what was actually asked and gives concrete, feasible next steps (tests,
   treatment options, self-care, which department to visit and how urgently).
4. Communication: clear and well organised, in the patient's language, considerate, without padding.
Length is not a merit: a longer answer is better only if what it adds is correct and useful. The order in which
the answers are shown says nothing about their quality.

First write a brief comparison. Then finish with a final line that is exactly one of:
VERDICT: Assistant 1 is better than Assistant 2
VERDICT: Assistant 1 is worse than Assistant 2
VERDICT: Assistant 1 is equal to Assistant 2"""

SINGLE_TURN_PROMPT = (
    """You are reviewing two AI assistants' answers to the same medical question from a patient.

[Question]
{question}
[End of Question]

[Assistant 1]
{answer_1}
[End of Assistant 1]

[Assistant 2]
{answer_2}
[End of Assistant 2]

"""
    + _INSTRUCTIONS
)

MULTI_TURN_PROMPT = (
    """You are reviewing two medical consultations. In each, the same patient messages were sent to an
AI assistant, one after another; judge the assistant's replies over the whole conversation, including how well
later replies use what the patient said earlier.

[Conversation with Assistant 1]
{answer_1}
[End of Conversation with Assistant 1]

[Conversation with Assistant 2]
{answer_2}
[End of Conversation with Assistant 2]

"""
    + _INSTRUCTIONS
)

PLACEHOLDERS = ("question", "answer_1", "answer_2")
_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")  # {{ and }} are literal braces; {"a": 1} is text


def placeholders(template: str) -> list[str]:
    """The ``{name}`` placeholders of a rubric template, in order of first use."""
    names = [m.group(1) for m in _FIELD.finditer(template) if m.group(1)]
    return list(dict.fromkeys(names))


def fill(template: str, values: Mapping[str, str]) -> str:
    """The template with each ``{name}`` replaced by its value (one pass: values are never read as templates)."""

    def one(match: re.Match) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return values[match.group(1)]

    return _FIELD.sub(one, template)


def rubric_problems(template: str, where: str, single_turn: bool) -> list[str]:
    """Every problem of a rubric template: unknown placeholders, and the ones it needs but lacks."""
    found = placeholders(template)
    problems = []
    unknown = [name for name in found if name not in PLACEHOLDERS]
    if unknown:
        allowed = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
        problems.append(
            f"{where}: unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; use {allowed} "
            "(write {{ and }} for literal braces)"
        )
    needed = ["question", "answer_1", "answer_2"] if single_turn else ["answer_1", "answer_2"]
    missing = [name for name in needed if name not in found]
    if missing:
        problems.append(
            f"{where}: missing placeholder(s) {', '.join('{' + n + '}' for n in missing)}; the judge would not see "
            "what they hold ("
            + ("single-turn questions need all three" if single_turn else "conversations need both")
            + ")"
        )
    return problems


@dataclass(frozen=True)
class Rubric:
    """The judge's instructions: one template for single-turn questions and one for conversations."""

    single: str = ""
    multi: str = ""
    source: str = "built-in"  # "built-in" or the rubric file

    @classmethod
    def from_file(cls, path: str | Path) -> Rubric:
        """A user's rubric file, used for single-turn questions and conversations alike."""
        text = Path(path).read_text(encoding="utf-8")
        return cls(single=text, multi=text, source=str(path))

    def template(self, multi_turn: bool) -> str:
        """The template for one kind of item (ours when this rubric has none)."""
        own = self.multi if multi_turn else self.single
        return own or (MULTI_TURN_PROMPT if multi_turn else SINGLE_TURN_PROMPT)
