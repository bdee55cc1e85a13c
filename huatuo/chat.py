"""``python chat.py`` (``huatuo-chat``): chat with a HuatuoGPT-II model in the terminal, or answer one message.

    python chat.py model_path=outputs/train/<time>/export            # interactive, streamed, multi-turn
    python chat.py model_path=DIR message='肚子疼怎么办？'              # prints only the reply

Composes ``conf/chat.yaml``; writes no run folder and no log file (logs go to stderr). The Python API is
``huatuo.inference.HuatuoChat``; the terminal loop is ``huatuo.inference.session``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from huatuo import conf_dir
from huatuo.core.cli import fail, quote_message_argument, reports_errors


def _quote_messages() -> None:
    # Hydra's override grammar refuses unquoted non-ASCII text and reads commas as sweeps, so message='肚子疼？'
    # would need a second layer of quotes; quote it here instead.

    sys.argv = [sys.argv[0], *map(quote_message_argument, sys.argv[1:])]


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="chat")
@reports_errors
def _chat(cfg: DictConfig) -> None:
    from huatuo.inference.validation import check_chat_config

    check_chat_config(cfg)  # before torch and the model load
    from huatuo.inference.session import run

    try:
        status = run(cfg)
    except KeyboardInterrupt:
        status = 130
    except OSError as err:  # stdout closed under us, a device that went away: one line, not a traceback
        fail(err)
    if status:
        sys.exit(status)


def main() -> None:
    """Chat with the model of the composed config."""
    _quote_messages()
    _chat()


if __name__ == "__main__":
    main()
