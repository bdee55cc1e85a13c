"""The paper's multiple-choice prompt: the user message, before the chat format wraps it.

By default the message is built from the record's text exactly as written (``Question.written``), as the paper's
evaluation script built it: ``请回答下面选择题。\\n[{question_type}]{question}\\n{options}`` when the record has a type
field (even an empty one, which gives ``[]``), else without the bracket; one ``{key}. {text}`` line per option whose
text is not empty, in the record's own key order, nothing stripped or normalised. ``normalize=True``
(``eval.normalize_text``) builds it from the normalised text instead: NFKC (full-width punctuation and letters become
ASCII, ``\\u3000`` a space), stripped, empty and whitespace-only options dropped, options in letter order, and no
bracket for an empty type.
"""

from __future__ import annotations

from huatuo.evaluation.exams import Question

PROMPT = "请回答下面选择题。\n[{question_type}]{question}\n{options}"
PROMPT_WITHOUT_TYPE = "请回答下面选择题。\n{question}\n{options}"


def mcq_prompt(question: Question, normalize: bool = False) -> str:
    """The user message for one question: the record's own text (default) or its normalised text."""
    if normalize:
        text, question_type = question.question, question.question_type or None
        options = "\n".join(f"{letter}. {option}" for letter, option in question.options.items())
    else:
        text, question_type = question.written.question, question.written.question_type
        options = "\n".join(f"{key}. {option}" for key, option in question.written.options)
    if question_type is not None:
        return PROMPT.format(question_type=question_type, question=text, options=options)
    return PROMPT_WITHOUT_TYPE.format(question=text, options=options)
