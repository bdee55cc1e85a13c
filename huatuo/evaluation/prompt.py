"""The paper's multiple-choice prompt: the user message, before the chat format wraps it."""

from __future__ import annotations

from huatuo.evaluation.exams import Question

PROMPT = "请回答下面选择题。\n[{question_type}]{question}\n{options}"
PROMPT_WITHOUT_TYPE = "请回答下面选择题。\n{question}\n{options}"


def mcq_prompt(question: Question) -> str:
    """The paper's user message: instruction, ``[question_type]question``, then ``A. text`` lines."""
    options = "\n".join(f"{letter}. {text}" for letter, text in question.options.items())
    if question.question_type:
        return PROMPT.format(question_type=question.question_type, question=question.question, options=options)
    return PROMPT_WITHOUT_TYPE.format(question=question.question, options=options)
