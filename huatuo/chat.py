"""Chat with a HuatuoGPT-II model: the ``HuatuoChat`` Python API and the terminal loop behind ``chat.py``.

    chat = HuatuoChat.from_pretrained("outputs/train/<time>/export")
    chat.chat([{"role": "user", "content": "肚子疼怎么办？"}])                 # -> the reply
    chat.chat(messages, on_text=lambda piece: print(piece, end=""))         # streamed to a callback, this thread
    for piece in chat.chat(messages, stream=True): print(piece, end="")      # streamed as an iterator

Prompts come from ``LoadedModel.render``: the HuatuoGPT-II builder shared with training, evaluation and the
exported chat template, or the model's own chat template for other models. History that does not fit the
context (``model_max_length - max_new_tokens``) is dropped by whole rounds, oldest first, counting tokens with
the very encoding that generation uses; a ``max_new_tokens`` above half the context is capped there, so a
small-context model still keeps some history.
"""

from __future__ import annotations

import functools
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import IO, Any, Literal, overload

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import GenerationConfig, StoppingCriteriaList

from huatuo.backbone import resolve_dtype
from huatuo.inference import LoadedModel, device_problem, load_for_inference, model_path_problem
from huatuo.logs import get_logger
from huatuo.streaming import GenerationWorker, ReplyStreamer, StopWhen
from huatuo.template import TURN_SEPARATOR, USER_PREFIX, ConversationError
from huatuo.validate import ConfigError

log = get_logger(__name__)

# OpenAI-style messages, the builder's shorthand [q1, a1, q2], or one question as a plain string.
Messages = Sequence[Mapping[str, Any]] | Sequence[str] | str


class ContextTooLong(ValueError):
    """The newest message (with room for the reply) does not fit the model's context."""


@functools.cache
def _generation_fields() -> frozenset[str]:
    """Names ``GenerationConfig`` accepts (``+generation.<name>`` must be one of them)."""
    return frozenset(GenerationConfig().to_dict()) - {"transformers_version", "_from_model_config"}


@dataclass
class GenerationSettings:
    """How a reply is sampled; the defaults are the paper's chat settings (DESIGN.md)."""

    max_new_tokens: int = 1024
    do_sample: bool = True
    temperature: float = 0.3
    top_p: float = 0.7
    top_k: int | None = None  # None: the model's generation_config.json decides
    repetition_penalty: float = 1.1
    seed: int | None = None  # an int re-seeds torch before every reply: same prompt, same reply
    extra: dict[str, Any] = field(default_factory=dict)  # any other GenerationConfig field (min_new_tokens...)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> GenerationSettings:
        """Settings from a config block; keys that are not fields go to ``extra``."""
        return cls(
            **{k: v for k, v in values.items() if k in _SETTING_NAMES},
            extra={k: v for k, v in values.items() if k not in _SETTING_NAMES},
        )

    def updated(self, **overrides: Any) -> GenerationSettings:
        """A copy with ``overrides`` applied (unknown keys join ``extra``)."""
        own = {name: getattr(self, name) for name in _SETTING_NAMES}  # shallow: asdict's deep copy cost ~30 us
        return GenerationSettings.from_mapping({**own, **self.extra, **overrides})

    def problems(self, prefix: str = "generation") -> list[str]:
        """Every invalid setting, each naming the key, the value and the fix."""
        out = []
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            out.append(f"{prefix}.max_new_tokens={self.max_new_tokens!r} must be an integer >= 1 (the paper: 1024)")
        if not isinstance(self.do_sample, bool):
            out.append(f"{prefix}.do_sample={self.do_sample!r} must be true (sample) or false (greedy)")
        if not isinstance(self.temperature, int | float) or self.temperature <= 0:
            out.append(
                f"{prefix}.temperature={self.temperature!r} must be > 0 (the paper: 0.3); greedy: do_sample=false"
            )
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            out.append(f"{prefix}.top_p={self.top_p!r} must be in (0, 1] (the paper: 0.7)")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            out.append(f"{prefix}.top_k={self.top_k!r} must be null or an integer >= 0 (the 34B release: 5)")
        if not isinstance(self.repetition_penalty, int | float) or self.repetition_penalty <= 0:
            out.append(f"{prefix}.repetition_penalty={self.repetition_penalty!r} must be > 0 (the paper: 1.1)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            out.append(f"{prefix}.seed={self.seed!r} must be null or an integer")
        for key in self.extra:
            if key not in _generation_fields():
                out.append(f"{prefix}.{key} is not a generation setting; check the spelling (see GenerationConfig)")
        return out

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (sampling knobs only when sampling, so greedy stays quiet)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
            if self.top_k is not None:
                kwargs["top_k"] = self.top_k
        return {**kwargs, **self.extra}


_SETTING_NAMES = frozenset(f.name for f in fields(GenerationSettings)) - {"extra"}


@dataclass
class FittedPrompt:
    """The conversation that fits the context: its messages, token ids and how many old rounds were dropped."""

    messages: list[dict[str, Any]]
    input_ids: torch.Tensor
    dropped_rounds: int
    max_new_tokens: int  # the room left for the reply (see HuatuoChat.reply_room)


@dataclass
class ReplyStats:
    """What happened during one reply (``HuatuoChat.last``)."""

    prompt_tokens: int
    dropped_rounds: int
    new_tokens: int = 0
    pieces: int = 0  # text pieces streamed
    first_piece_s: float | None = None  # from the call to the first visible text
    seconds: float = 0.0
    started: float = field(default=0.0, repr=False)  # perf_counter at the call
    # eos | length | stopped (stop() / Ctrl-C / stream abandoned) | turn (the model began a new question) | error
    finish_reason: str = ""

    def summary(self) -> str:
        """One line for the terminal's verbose mode."""
        rate = self.new_tokens / self.seconds if self.seconds else 0.0
        first = f"{self.first_piece_s:.2f}s" if self.first_piece_s is not None else "-"
        return (
            f"[prompt {self.prompt_tokens} tokens, dropped {self.dropped_rounds} rounds, reply {self.new_tokens} "
            f"tokens in {self.pieces} pieces, first text {first}, {rate:.1f} tokens/s, {self.finish_reason}]"
        )


def _as_messages(messages: Messages) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if all(isinstance(m, str) for m in messages):  # [q1, a1, q2]: the builder's shorthand
        return [{"role": "user" if i % 2 == 0 else "assistant", "content": m} for i, m in enumerate(messages)]
    return [dict(m) for m in messages]


class HuatuoChat:
    """Multi-turn chat with one loaded model: shared prompt builder, history fitted to the context, streaming.

    One reply at a time; ``stop()`` (from any thread or a signal handler) ends the current one early.
    """

    def __init__(self, loaded: LoadedModel, generation: GenerationSettings | Mapping[str, Any] | None = None) -> None:
        self.loaded = loaded
        if generation is None:
            generation = GenerationSettings()
        elif not isinstance(generation, GenerationSettings):
            generation = GenerationSettings.from_mapping(generation)
        problems = generation.problems()
        if problems:
            raise ValueError("bad generation settings:\n  - " + "\n  - ".join(problems))
        self.settings = generation
        if loaded.context_length is None:
            raise ValueError("cannot tell this model's context length from its config or tokenizer; set max_context")
        self.last: ReplyStats | None = None
        self._warned_room = False
        self._stop = threading.Event()
        self._replying = threading.Lock()  # held while a reply is generated: one at a time
        self._worker = GenerationWorker()

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        quantize: Literal["4bit", "8bit"] | None = None,
        dtype: str = "auto",
        device: str = "auto",
        max_context: int | None = None,
        trust_remote_code: bool = False,
        **generation: Any,
    ) -> HuatuoChat:
        """Load ``path`` (an export, a released HuatuoGPT2 folder, any HF chat model) with the paper's settings."""
        loaded = load_for_inference(
            path,
            quantize=quantize,
            dtype=dtype,
            device=device,
            trust_remote_code=trust_remote_code,
            max_context=max_context,
        )
        return cls(loaded, GenerationSettings().updated(**generation))

    @property
    def stop_text(self) -> str | None:
        """Text that means the model began a new user turn (HuatuoGPT-II format only)."""
        return TURN_SEPARATOR + USER_PREFIX if self.loaded.uses_huatuo_format else None

    def stop(self) -> None:
        """End the reply being generated after its current token."""
        self._stop.set()

    def reply_room(self, max_new_tokens: int) -> int:
        """Tokens reserved for a reply: ``max_new_tokens``, but at most half the context, so history keeps room."""
        context = self.loaded.context_length
        room = max(1, min(max_new_tokens, context // 2))
        if room < max_new_tokens and not self._warned_room:
            self._warned_room = True
            log.warning(
                "generation.max_new_tokens=%d would leave the conversation no room in this model's %d-token context; "
                "replies are capped at %d tokens (lower generation.max_new_tokens, or raise max_context if the model "
                "handles longer sequences)",
                max_new_tokens,
                context,
                room,
            )
        return room

    def fit(self, messages: Messages, max_new_tokens: int | None = None) -> FittedPrompt:
        """Keep the newest whole rounds whose prompt leaves room for the reply in the context (token-exact)."""
        messages = _as_messages(messages)
        system = 0
        while system < len(messages) and messages[system].get("role") == "system":
            system += 1  # leading system messages (other models' templates) are kept whatever is dropped
        head, body = messages[:system], messages[system:]
        if not body or body[-1].get("role") != "user":
            raise ConversationError("the conversation must end with a user message (the one to answer)")
        context = self.loaded.context_length
        reserve = self.reply_room(self.settings.max_new_tokens if max_new_tokens is None else max_new_tokens)
        budget = context - reserve
        ids = self.loaded.encode(self.loaded.render(messages))
        if ids.shape[1] <= budget:  # the common case, one encode: everything fits
            return FittedPrompt(messages, ids, 0, reserve)
        best: FittedPrompt | None = None
        for start in range(len(body) - 1, -1, -2):  # newest round first; stop at the first that does not fit
            kept = head + body[start:]
            ids = self.loaded.encode(self.loaded.render(kept))
            if ids.shape[1] > budget:
                if best is None:
                    raise ContextTooLong(
                        f"the message is {ids.shape[1]} tokens as a prompt but only {budget} fit (context {context} "
                        f"minus generation.max_new_tokens={reserve}); shorten it or lower generation.max_new_tokens"
                    )
                break
            best = FittedPrompt(kept, ids, start // 2, reserve)
        assert best is not None
        if best.dropped_rounds:
            log.debug("dropped the %d oldest round(s) to leave %d tokens for the reply", best.dropped_rounds, reserve)
        return best

    @overload
    def chat(
        self,
        messages: Messages,
        stream: Literal[False] = False,
        *,
        on_text: Callable[[str], object] | None = None,
        stop_event: threading.Event | None = None,
        **overrides: Any,
    ) -> str: ...

    @overload
    def chat(
        self,
        messages: Messages,
        stream: Literal[True],
        *,
        on_text: None = None,
        stop_event: threading.Event | None = None,
        **overrides: Any,
    ) -> Iterator[str]: ...

    def chat(
        self,
        messages: Messages,
        stream: bool = False,
        *,
        on_text: Callable[[str], object] | None = None,
        stop_event: threading.Event | None = None,
        **overrides: Any,
    ) -> str | Iterator[str]:
        """Answer the last user message of ``messages``.

        - ``stream=False`` (default): generate in this thread and return the reply. ``on_text`` is called with each
          piece of text as soon as it is settled, in this thread, before the next token is generated: streaming
          without a thread hand-off (what ``chat.py`` does).
        - ``stream=True``: return an iterator over the pieces; generation runs on the chat's worker thread.

        ``stop()`` (from any thread or a signal handler) or setting ``stop_event`` ends the reply after its current
        token. ``overrides`` change generation settings for this reply only (``max_new_tokens=64``,
        ``do_sample=False``).
        """
        settings = self.settings.updated(**overrides) if overrides else self.settings
        if overrides and (problems := settings.problems("override")):
            raise ValueError("; ".join(problems))
        if stream and on_text is not None:
            raise ValueError("on_text is for stream=False (text goes to the callback); stream=True yields the text")
        # A fresh flag per reply, made now rather than when the stream is first read: a late stop() cannot cut
        # the next reply, and a stop() that lands while the prompt is still being fitted is not lost.
        self._stop = stop = stop_event if stop_event is not None else threading.Event()
        if stream:
            return self._stream(messages, settings, stop)
        return self._respond(messages, settings, stop, on_text)

    def _start(
        self,
        messages: Messages,
        settings: GenerationSettings,
        stop: threading.Event,
        sink: Callable[[str], object] | None,
    ) -> tuple[ReplyStreamer, dict[str, Any], FittedPrompt, ReplyStats]:
        """Fit the prompt; the streamer, generate's arguments and this reply's stats (``self.last``)."""
        started = time.perf_counter()
        fitted = self.fit(messages, settings.max_new_tokens)
        tokenizer = self.loaded.tokenizer
        stats = self.last = ReplyStats(fitted.input_ids.shape[1], fitted.dropped_rounds, started=started)
        if sink is not None:
            user_sink = sink

            def sink(piece: str) -> None:
                if stats.first_piece_s is None:
                    stats.first_piece_s = time.perf_counter() - started
                stats.pieces += 1
                user_sink(piece)

        streamer = ReplyStreamer(tokenizer, self.stop_text, stop, sink=sink)
        kwargs = {
            "input_ids": fitted.input_ids,
            "attention_mask": torch.ones_like(fitted.input_ids),
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([StopWhen(streamer.should_stop)]),
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            "tokenizer": tokenizer,  # lets +generation.stop_strings work
            **settings.generate_kwargs(),
            "max_new_tokens": fitted.max_new_tokens,
        }
        if kwargs.get("min_new_tokens", 0) > fitted.max_new_tokens:  # a capped reply cannot honour a larger minimum
            kwargs["min_new_tokens"] = fitted.max_new_tokens
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        return streamer, kwargs, fitted, stats

    @staticmethod
    def _conclude(streamer: ReplyStreamer, fitted: FittedPrompt, stats: ReplyStats) -> None:
        stats.new_tokens = len(streamer.ids)
        stats.seconds = time.perf_counter() - stats.started
        if streamer.error is not None:
            stats.finish_reason = "error"
        elif streamer.hit_stop_text:
            stats.finish_reason = "turn"
        elif streamer.stopped:
            stats.finish_reason = "stopped"
        elif stats.new_tokens >= fitted.max_new_tokens:
            stats.finish_reason = "length"
        else:
            stats.finish_reason = "eos"

    def _respond(
        self,
        messages: Messages,
        settings: GenerationSettings,
        stop: threading.Event,
        on_text: Callable[[str], object] | None,
    ) -> str:
        self._begin_reply()
        try:
            streamer, kwargs, fitted, stats = self._start(messages, settings, stop, on_text or _discard)
            streamer.run(self.loaded.model.generate, kwargs)  # here, in this thread
            self._conclude(streamer, fitted, stats)
        finally:
            self._replying.release()
        if streamer.error is not None:
            raise streamer.error
        return streamer.text

    def _stream(self, messages: Messages, settings: GenerationSettings, stop: threading.Event) -> Iterator[str]:
        self._begin_reply()  # runs at the first next(): a stream that is never read holds nothing
        try:
            streamer, kwargs, fitted, stats = self._start(messages, settings, stop, None)
        except BaseException:
            self._replying.release()
            raise
        self._worker.submit(streamer, self.loaded.model.generate, kwargs)
        try:
            for piece in streamer:
                if stats.first_piece_s is None:
                    stats.first_piece_s = time.perf_counter() - stats.started
                stats.pieces += 1
                yield piece
        finally:  # also when the caller stops reading: end generation instead of leaving it running
            try:
                streamer.abandon()  # (not stop.set(): the event may be the caller's, for later replies too)
                streamer.drain()  # returns at once if the stream was read to its end: generate has returned
                self._conclude(streamer, fitted, stats)
            finally:
                self._replying.release()
        if streamer.error is not None:
            raise streamer.error

    def _begin_reply(self) -> None:
        if not self._replying.acquire(blocking=False):
            raise RuntimeError(
                "this HuatuoChat is still generating another reply (one at a time): read that stream to its end or "
                "close() it first, or use one HuatuoChat per thread"
            )


def _discard(piece: str) -> None:
    """The sink of a reply nobody streams."""


# --- the terminal -------------------------------------------------------------------------------------------

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


# --- the command ----------------------------------------------------------------------------------------------


def chat_config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of a composed ``chat.yaml`` config that can be found without loading the model."""
    problems = []
    model_path = cfg.get("model_path")
    if model_path is None and cfg.get("backbone") is not None:
        name = cfg.backbone.get("name", "this backbone")
        problems.append(
            f"backbone={name} names no weights (backbone.model.path is null: a random-init model cannot chat); "
            "pass model_path=DIR, e.g. the export folder of a training run (outputs/train/<time>/export)"
        )
    elif problem := model_path_problem(model_path, "model_path"):
        problems.append(problem)
    tokenizer_path = cfg.get("tokenizer_path")
    if tokenizer_path is not None and (problem := model_path_problem(tokenizer_path, "tokenizer_path")):
        if "config.json" not in problem:  # a tokenizer folder needs no model config
            problems.append(problem)
    if cfg.get("quantize") not in (None, "4bit", "8bit"):
        problems.append(f"quantize={cfg.get('quantize')!r}: use 4bit, 8bit or null (full precision)")
    try:
        resolve_dtype(cfg.get("dtype"))
    except ValueError as err:
        problems.append(f"dtype: {err}")
    if problem := device_problem(cfg.get("device"), "device"):
        problems.append(problem)
    max_context = cfg.get("max_context")
    if max_context is not None and (
        isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 2
    ):
        problems.append(f"max_context={max_context!r} must be null (the model's own) or an integer number of tokens")
    if cfg.get("prompt_format") not in ("auto", "huatuo", "template"):
        problems.append(f"prompt_format={cfg.get('prompt_format')!r}: use auto, huatuo or template")
    generation = cfg.get("generation")
    if not isinstance(generation, DictConfig):
        problems.append(f"generation={generation!r} must be a block of generation settings")
    else:
        problems += GenerationSettings.from_mapping(OmegaConf.to_container(generation, resolve=True)).problems()
    message = cfg.get("message")
    if message is not None and not isinstance(message, str | int | float):
        problems.append(f"message={message!r} must be text; quote it: message='\"...\"'")
    return problems


def check_chat_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem of the chat config, or return quietly."""
    problems = chat_config_problems(cfg)
    if problems:
        raise ConfigError("the chat config cannot run:\n  - " + "\n  - ".join(problems))


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
    chat = HuatuoChat(loaded, GenerationSettings.from_mapping(OmegaConf.to_container(cfg.generation, resolve=True)))
    if message is not None:
        answer(chat, str(message).strip(), stdout)
        if cfg.get("verbose"):
            print(chat.last.summary(), file=sys.stderr, flush=True)
        return 0
    return ChatSession(chat, stdin, stdout, verbose=bool(cfg.get("verbose"))).run()


def quote_override(text: str) -> str:
    """``text`` as a quoted Hydra override value that reads back unchanged (Chinese, commas, quotes, ``${``)."""
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)  # OmegaConf: \${ is a literal ${
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)  # Hydra: backslashes before a quote or the end
    return "'" + text.replace("'", "\\'") + "'"


def _quote_message_argument(argument: str) -> str:
    key, sep, value = argument.partition("=")
    if sep and key.lstrip("+") == "message" and not (len(value) > 1 and value[0] == value[-1] and value[0] in "'\""):
        return f"{key}={quote_override(value)}"
    return argument


def main() -> None:
    """Hydra entry point (``python chat.py`` / ``huatuo-chat``)."""
    import hydra

    from huatuo import conf_dir

    # Hydra's override grammar refuses unquoted non-ASCII text and reads commas as sweeps, so message='肚子疼？'
    # would need a second layer of quotes; quote it here instead.
    sys.argv = [sys.argv[0], *map(_quote_message_argument, sys.argv[1:])]

    @hydra.main(version_base="1.3", config_path=conf_dir(), config_name="chat")
    def _main(cfg: DictConfig) -> None:
        try:
            status = run(cfg)
        except (ConfigError, ContextTooLong, OSError) as err:
            print(f"chat: {err}", file=sys.stderr)
            status = 2
        except KeyboardInterrupt:
            status = 130
        if status:
            sys.exit(status)

    _main()
