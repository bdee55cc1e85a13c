"""The terminal behind ``chat.py``: the interactive loop, script mode (one message, the reply on stdout), and the
chat config's checks.

In the terminal ``clear`` empties the history, ``stop`` or Ctrl-D quits and Ctrl-C stops the reply being written.
With ``message=...`` (or text piped to stdin) only the reply is printed on stdout; logs go to stderr.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import IO, Any

import torch
from omegaconf import DictConfig, OmegaConf

from huatuo.core.errors import ConfigError, ConversationError
from huatuo.inference.chat import ContextTooLong, HuatuoChat, model_reply_tokens
from huatuo.inference.generation import GenerationSettings
from huatuo.inference.loading import load_for_inference
from huatuo.inference.validation import check_chat_config

USER_LABEL = "用户："
BANNER = (
    "{name} · 输入 clear 清空对话历史，stop 或 Ctrl-D 退出，Ctrl-C 打断当前回答；行末加 \\ 可换行继续输入。\n"
    "回答仅供参考，不能代替医生的诊断。"
)


class ChatSession:
    """The interactive loop: read a message, stream the reply, keep the history that still fits the context."""

    def __init__(self, chat: HuatuoChat, stdin: IO[str], stdout: IO[str], verbose: bool = False) -> None:
        self.chat = chat
        self.stdin = stdin
        self.stdout = stdout
        self.verbose = verbose
        self.history: list[dict[str, Any]] = []
        self.name = "HuatuoGPT" if chat.loaded.uses_huatuo_format else "Assistant"

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def _input(self, prompt: str) -> str:
        if self.stdin is sys.stdin and self.stdin.isatty():
            return input(prompt)  # readline editing and history when available
        self._write(prompt)
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def read_message(self) -> str:
        """One message; a line ending in a backslash continues on the next line."""
        line = self._input(USER_LABEL)
        while line.endswith("\\"):
            line = line[:-1] + "\n" + self._input("  ")
        return line

    def run(self) -> int:
        """Loop until ``stop`` or end of input; returns the exit status."""
        if self.stdin is sys.stdin and self.stdin.isatty():
            try:
                import readline  # noqa: F401 - importing it gives input() line editing and history
            except ImportError:  # Windows
                pass
        self._write(BANNER.format(name=self.name) + "\n")
        if threading.current_thread() is threading.main_thread():
            # Ctrl-C must reach us even when this process was started with SIGINT ignored (an ignored signal is
            # inherited from the parent: some launchers and test runners leave it so), or the prompt would not
            # answer it. During a reply `reply` installs its own handler on top of this one.
            previous = signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                return self._loop()
            finally:
                signal.signal(signal.SIGINT, previous)
        return self._loop()

    def _loop(self) -> int:
        while True:
            try:
                message = self.read_message()
            except KeyboardInterrupt:
                self._write("\n（Ctrl-C 只打断回答；输入 stop 或按 Ctrl-D 退出）\n")
                continue
            except EOFError:
                self._write("\n")
                return 0
            command = message.strip()
            if not command:
                continue
            if command == "stop":
                return 0
            if command == "clear":
                self.history = []
                self._write("（对话历史已清空）\n")
                continue
            self.reply(message)

    def reply(self, message: str) -> str | None:
        """Stream the answer to ``message``; Ctrl-C stops it (the part shown stays in the history)."""
        messages = [*self.history, {"role": "user", "content": message}]
        self._write(f"{self.name}: ")  # the label of the paper's cli_demo, which users know
        handle_ctrl_c = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
        stop = threading.Event()  # this reply's own flag: a Ctrl-C from here on counts, even before generation
        if handle_ctrl_c:
            previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
        pieces: list[str] = []

        def show(piece: str) -> None:
            pieces.append(piece)
            self._write(piece)

        try:  # generate runs right here, and each piece is written as soon as it is settled
            self.chat.chat(messages, on_text=show, stop_event=stop)
        except (ContextTooLong, ConversationError, torch.cuda.OutOfMemoryError) as err:
            self._write("\n")
            hint = "; try quantize=4bit, clear, or a lower generation.max_new_tokens" if "memory" in str(err) else ""
            print(f"[{str(err).strip()}{hint}]", file=sys.stderr, flush=True)
            return None  # the session (and its history) goes on
        finally:
            if handle_ctrl_c:
                signal.signal(signal.SIGINT, previous)
        stats = self.chat.last
        self._write(" [已打断]\n" if stats.finish_reason == "stopped" else "\n")
        if self.verbose:
            print(stats.summary(), file=sys.stderr, flush=True)
        reply = "".join(pieces)
        self.history = [*messages, {"role": "assistant", "content": reply}][2 * stats.dropped_rounds :]
        return reply


def answer(chat: HuatuoChat, message: str, stdout: IO[str]) -> str:
    """Non-interactive use: stream the reply to one message, and nothing else, to ``stdout``."""

    def show(piece: str) -> None:
        stdout.write(piece)
        stdout.flush()

    reply = chat.chat([{"role": "user", "content": message}], on_text=show)
    stdout.write("\n")
    stdout.flush()
    return reply


def run(cfg: DictConfig, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    """Validate ``cfg``, load the model, then chat in the terminal or answer one message; returns the exit status."""
    check_chat_config(cfg)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    message = cfg.get("message")
    if message is None and not stdin.isatty():
        message = stdin.read()  # piped in: the whole of stdin is one message
        if not message.strip():
            raise ConfigError("no message: stdin was empty; pass message='...' or run chat.py in a terminal")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading bars would land between the prompts
    if not cfg.get("verbose"):
        hf_logging.set_verbosity_error()
    loaded = load_for_inference(
        cfg.model_path,
        quantize=cfg.get("quantize"),
        dtype=cfg.get("dtype", "auto"),
        device=cfg.get("device", "auto"),
        trust_remote_code=bool(cfg.get("trust_remote_code", False)),
        revision=cfg.get("revision"),
        tokenizer_path=cfg.get("tokenizer_path"),
        prompt_format=cfg.get("prompt_format", "auto"),
        max_context=cfg.get("max_context"),
    )
    generation = OmegaConf.to_container(cfg.generation, resolve=True)
    if generation.get("max_new_tokens") is None:  # the model's own generation_config.json, else the paper's 1024
        generation["max_new_tokens"] = model_reply_tokens(loaded) or GenerationSettings.max_new_tokens
    chat = HuatuoChat(loaded, GenerationSettings.from_mapping(generation))
    if message is not None:
        answer(chat, str(message).strip(), stdout)
        if cfg.get("verbose"):
            print(chat.last.summary(), file=sys.stderr, flush=True)
        return 0
    return ChatSession(chat, stdin, stdout, verbose=bool(cfg.get("verbose"))).run()
