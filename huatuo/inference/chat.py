"""Chat with a HuatuoGPT-II model: the ``HuatuoChat`` Python API (the terminal is ``huatuo.inference.session``).

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

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import torch
from transformers import StoppingCriteriaList

from huatuo.core.errors import ConfigError, ConversationError, HuatuoError, raise_problems
from huatuo.core.logs import get_logger
from huatuo.core.template import TURN_SEPARATOR, USER_PREFIX
from huatuo.inference.generation import GenerationSettings
from huatuo.inference.loading import LoadedModel, load_for_inference
from huatuo.inference.streaming import GenerationWorker, ReplyStreamer, StopWhen

log = get_logger(__name__)

Messages = Sequence[Mapping[str, Any]] | Sequence[str] | str


class ContextTooLong(HuatuoError, ValueError):
    """The newest message (with room for the reply) does not fit the model's context."""


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


def model_reply_tokens(loaded: LoadedModel) -> int | None:
    """The ``max_new_tokens`` of the model's own ``generation_config.json``, if it sets one."""
    value = getattr(getattr(loaded.model, "generation_config", None), "max_new_tokens", None)
    return value if isinstance(value, int) and value > 0 else None


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
            raise_problems("bad generation settings", problems)
        self.settings = generation
        if loaded.context_length is None:
            raise ConfigError("cannot tell this model's context length from its config or tokenizer; set max_context")
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
        """Load ``path`` (an export, a released HuatuoGPT2 folder, any HF chat model) with the paper's settings.

        ``max_new_tokens`` defaults to the folder's ``generation_config.json`` (an export holds the paper's 1024,
        capped at half a small model's context), else 1024.
        """
        loaded = load_for_inference(
            path,
            quantize=quantize,
            dtype=dtype,
            device=device,
            trust_remote_code=trust_remote_code,
            max_context=max_context,
        )
        generation.setdefault("max_new_tokens", model_reply_tokens(loaded) or GenerationSettings.max_new_tokens)
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
            raise ConfigError("; ".join(problems))
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
