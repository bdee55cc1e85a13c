"""The one error type of huatuo, its kinds, and the one way to report several problems together.

Every problem a user can fix is a ``HuatuoError`` whose message says where (``file:line`` or a config key), the bad
value and the fix. Every command prints that message alone on stderr and exits with status 2 (``huatuo.core.cli``);
only ``HYDRA_FULL_ERROR=1`` or ``verbose=true`` adds the traceback. Subclasses exist where callers must tell kinds
apart; each also derives from the built-in exception it replaces, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

MAX_REPORTED = 20  # problems listed in one message before "... and N more"


class HuatuoError(Exception):
    """A problem the user can fix; the message names where, the bad value and the fix."""


class ConfigError(HuatuoError, ValueError):
    """A composed config (or command line) that cannot run; the message lists every problem found."""


class DataError(HuatuoError, ValueError):
    """Input files that cannot be read as they are: training data, corpus passages, exams, answer files."""


class ModelLoadError(HuatuoError, OSError):
    """A model or tokenizer that could not be loaded (the message says from where and why)."""


class ConversationError(HuatuoError, ValueError):
    """A conversation that does not fit the HuatuoGPT-II format."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def preview(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting a bad value in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def problem_list(title: str, problems: Sequence[str], extra: int = 0, footer: str | None = None) -> str:
    """``title:`` then one ``  - problem`` line each (at most ``MAX_REPORTED``), ``... and N more``, the footer."""
    shown = list(problems[:MAX_REPORTED])
    hidden = len(problems) - len(shown) + extra
    lines = [f"{title}:", *(f"  - {p}" for p in shown)]
    if hidden:
        lines.append(f"  ... and {hidden} more")
    if footer:
        lines.append(footer)
    return "\n".join(lines)


def raise_problems(
    title: str,
    problems: Sequence[str],
    error: type[HuatuoError] = ConfigError,
    extra: int = 0,
    footer: str | None = None,
) -> None:
    """Raise one ``error`` listing every problem, or return quietly when there are none."""
    if problems or extra:
        raise error(problem_list(title, problems, extra, footer))
