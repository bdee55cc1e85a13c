"""What every command does with a problem the user can fix: the message alone on stderr, exit status 2.

A ``HuatuoError`` (or an OmegaConf error: a required ``???`` value left unset, an interpolation that does not
resolve) raised by a command is printed as its message, without a traceback, and the process exits with status 2.
``HYDRA_FULL_ERROR=1`` or ``verbose=true`` lets it through, so Hydra prints the traceback as usual.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from huatuo.core.errors import HuatuoError

EXIT_USAGE = 2  # the conventional status of "bad input / bad command line"
T = TypeVar("T")


def _user_errors() -> tuple[type[BaseException], ...]:
    from omegaconf.errors import OmegaConfBaseException

    return HuatuoError, OmegaConfBaseException


def message(error: BaseException | str) -> str:
    """What the user reads: the error's own message, or for a required value left unset, which key and how to set it."""
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(error, MissingMandatoryValue) and getattr(error, "full_key", None):
        key = error.full_key
        return f"{key} is required (it is ??? in the config): pass it on the command line, {key}=..."
    return str(error).strip() or type(error).__name__


def fail(error: BaseException | str) -> NoReturn:
    """Print the message alone on stderr and exit with status 2."""
    print(message(error), file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE)


def wants_traceback(cfg: Any = None) -> bool:
    """True under ``HYDRA_FULL_ERROR=1`` or a config with ``verbose: true``."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return True
    try:
        return bool(cfg is not None and cfg.get("verbose", False))
    except Exception:  # noqa: BLE001 - a config that cannot even answer get() is reported by the command itself
        return False


def user_error(error: BaseException) -> BaseException | None:
    """The user error that ``error`` is or wraps, or None.

    ``hydra.utils.instantiate`` wraps what a configured constructor raises in its own ``InstantiationException``
    ("Error in call to target ..."): a ``ConfigError`` from a logger, strategy or tokenizer the config names is
    still the user's to fix, so it is unwrapped.
    """
    from hydra.errors import InstantiationException

    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error if isinstance(error, _user_errors()) else None


def reports_errors(task: Callable[..., T]) -> Callable[..., T]:
    """Wrap a Hydra task function (``cfg -> result``) so that user errors end in one message and exit status 2."""

    @functools.wraps(task)
    def run(cfg: Any) -> T:
        try:
            return task(cfg)
        except Exception as error:  # noqa: BLE001 - anything else is raised again, unchanged
            cause = user_error(error)
            if cause is None or wants_traceback(cfg):
                raise
            fail(cause)

    return run


def quote_override(text: str) -> str:
    """``text`` as a quoted Hydra override value that reads back unchanged (Chinese, commas, quotes, ``${``)."""
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)  # OmegaConf: \${ is a literal ${
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)  # Hydra: backslashes before a quote or the end
    return "'" + text.replace("'", "\\'") + "'"


def quote_message_argument(argument: str) -> str:
    """A ``message=...`` command-line argument quoted for Hydra (other arguments unchanged)."""
    key, sep, value = argument.partition("=")
    if sep and key.lstrip("+") == "message" and not (len(value) > 1 and value[0] == value[-1] and value[0] in "'\""):
        return f"{key}={quote_override(value)}"
    return argument
