"""Streaming generated text out of ``model.generate``: incremental decoding, a stop flag, a stop text.

``generate`` pushes token ids into a ``ReplyStreamer``, which turns them into settled text pieces. Either the
pieces go straight to a callback in the generating thread (``sink``: what ``chat.py`` uses, no thread hand-off),
or ``generate`` runs on a ``GenerationWorker`` thread and a reader iterates over the pieces (``HuatuoChat.chat(...,
stream=True)`` and anything else that wants a reply as an iterator).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

_END = object()
_yield = getattr(os, "sched_yield", lambda: time.sleep(0))  # POSIX; elsewhere a zero sleep


def _held_prefix(text: str, stop_text: str) -> int:
    """Length of the longest end of ``text`` that could be the start of ``stop_text``."""
    for size in range(min(len(stop_text) - 1, len(text)), 0, -1):
        if text.endswith(stop_text[:size]):
            return size
    return 0


class ReplyStreamer(BaseStreamer):
    """Receives generated ids from ``generate`` and hands out text pieces, to a reader thread or to a callback.

    Decoding is incremental (only a short window of ids is decoded per token, so long replies stay cheap; HF's
    TextStreamer re-decodes the whole line every token) and ends with one full decode that settles what is left,
    so the pieces join to ``tokenizer.decode(new_ids, skip_special_tokens=True)``.
    Text that could begin ``stop_text`` is held back until it is clear; if the model starts a new user turn the
    reply is cut there and generation stops.

    Without ``sink`` the pieces go through a queue to a reader in another thread (iterate over the streamer).
    With ``sink``, ``generate`` runs in the caller's thread and every settled piece is passed to ``sink`` at once:
    no thread, no hand-off, which is what the terminal uses.
    """

    def __init__(
        self,
        tokenizer,
        stop_text: str | None,
        stop_event: threading.Event,
        flush_every: float = 0.02,
        sink: Callable[[str], object] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_text = stop_text
        self.stop_event = stop_event
        # Text is handed over at most every `flush_every` seconds (the first piece at once): a reader woken for
        # every token of a fast model costs the generating thread GIL hand-offs, ~0.1-0.2 ms a token on CPU.
        self.flush_every = flush_every
        self.sink = sink
        self._unsent = ""
        self._last_flush = 0.0
        self.ids: list[int] = []
        self.text = ""  # handed out so far
        self.hit_stop_text = False
        self.stopped = False
        self._abandoned = False  # the reader gave up on the stream (see abandon)
        self.error: BaseException | None = None
        self._held = ""
        self._prefix = self._read = 0  # decode window: ids[_prefix:_read] were decoded last time
        self._prompt_seen = False
        self._ended = self._closed = False
        self._in_run = False  # inside run(): the stream closes only once generate has returned
        self._read_to_end = sink is not None  # with a sink there is nothing to read
        self._queue: queue.Queue | None = queue.Queue() if sink is None else None

    def should_stop(self) -> bool:
        """Polled by generate's stopping criteria after every token."""
        return self.hit_stop_text or self._abandoned or self.stop_event.is_set()

    def abandon(self) -> None:
        """End generation because nobody reads on (the caller's ``stop_event`` is left as it is)."""
        self._abandoned = True

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def put(self, value: torch.Tensor) -> None:
        """Take new token ids (the first call carries the prompt, which is skipped)."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.hit_stop_text:
            return
        self.ids.extend(value.reshape(-1).tolist())
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):  # U+FFFD: a multi-byte character half-done
            self._prefix, self._read = self._read, len(self.ids)
            self._take(after[len(before) :])

    def _take(self, text: str) -> None:
        buffer = self._held + text
        self._held = ""
        if self.stop_text:
            cut = buffer.find(self.stop_text)
            if cut >= 0:
                self.hit_stop_text = True
                buffer = buffer[:cut]
            else:
                keep = _held_prefix(buffer, self.stop_text)
                if keep:
                    buffer, self._held = buffer[:-keep], buffer[-keep:]
        if buffer:
            self._emit(buffer)

    def _emit(self, text: str) -> None:
        first = not self.text
        self.text += text
        if self.sink is not None:
            if self.error is None:  # a sink that failed once is not called again
                self.sink(text)
            return
        self._unsent += text
        if first or time.perf_counter() - self._last_flush >= self.flush_every:
            self._flush()
        if first:
            # Hand the GIL to the reader now, or generate's loop may keep it for up to the 5 ms switch
            # interval. sched_yield drops the GIL and yields the core at once; time.sleep(0) would also wait
            # out the kernel's timer slack (~0.1 ms measured). Later pieces skip this; a few ms of lag is
            # invisible.
            _yield()

    def _flush(self) -> None:
        if self._unsent:
            self._queue.put(self._unsent)
            self._unsent = ""
            self._last_flush = time.perf_counter()

    def end(self) -> None:
        """Flush what the incremental decode could not settle and close the stream (idempotent).

        Inside ``run`` (where ``generate`` calls this at its end) the stream is closed only after ``generate`` has
        returned, so a reader that has seen the end knows the worker is free: no second hand-off to wait for it.
        The stream is closed even if settling the text fails (a tokenizer that cannot decode what was generated),
        so a reader never waits forever.
        """
        try:
            if not self._ended:
                self._ended = True
                self.stopped = (self._abandoned or self.stop_event.is_set()) and not self.hit_stop_text
                if not self.hit_stop_text:
                    full, seen = self._decode(self.ids), self.text + self._held
                    self._take(full[len(seen) :] if full.startswith(seen) else "")
                    if self._held and not self.hit_stop_text:  # the reply ended on what only looked like a new turn
                        held, self._held = self._held, ""
                        self._emit(held)
                self._flush()
        finally:
            if not self._in_run and not self._closed:
                self._closed = True
                if self._queue is not None:
                    self._queue.put(_END)

    def run(self, generate: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        """Call ``generate``, keeping its error (or the sink's, or the final decode's) for the caller; then close."""
        self._in_run = True
        try:
            generate(**kwargs)
        except BaseException as err:  # noqa: BLE001 - re-raised in the reading thread
            self.error = err
        finally:
            self._in_run = False
            try:
                self.end()
            except BaseException as err:  # noqa: BLE001 - the stream is closed; the caller gets the error
                if self.error is None:
                    self.error = err

    def __iter__(self) -> Iterator[str]:
        """The text pieces, until the stream is closed (from ``run``: until ``generate`` has returned)."""
        while not self._read_to_end:
            piece = self._queue.get()
            if piece is _END:
                self._read_to_end = True
                return
            yield piece

    def drain(self) -> None:
        """Skip whatever text is left and wait for the stream to close (from ``run``: for ``generate`` to return)."""
        for _ in self:
            pass


class StopWhen(StoppingCriteria):
    """A stopping criterion that asks a callable (thread-safe flags) after every token."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device)


def _serve(jobs: queue.Queue) -> None:
    while (job := jobs.get()) is not None:
        streamer, generate, kwargs = job
        del job  # hold no reference to the model between jobs
        streamer.run(generate, kwargs)  # never raises: errors are kept for the reader and the stream is closed
        del streamer, generate, kwargs


class GenerationWorker:
    """A long-lived daemon thread that runs ``generate`` jobs one after another.

    Starting a fresh thread per reply adds its start-up (and, on a busy machine, a wait to be scheduled) to the
    time to first token; this thread waits for work instead. It ends when the worker object is collected.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        threading.Thread(target=_serve, args=(self._jobs,), daemon=True, name="huatuo-generate").start()
        weakref.finalize(self, self._jobs.put, None)

    def submit(self, streamer: ReplyStreamer, generate: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        """Queue ``streamer.run(generate, kwargs)``; the streamer's stream ends once ``generate`` has returned."""
        self._jobs.put((streamer, generate, kwargs))
