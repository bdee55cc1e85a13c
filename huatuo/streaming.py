"""Streaming generated text out of ``model.generate``: incremental decoding, a stop flag, a stop text.

``generate`` runs on a ``GenerationWorker`` thread and pushes token ids into a ``ReplyStreamer``; the reader
iterates over text pieces. Used by the chat (``huatuo.chat``) and by anything else that wants a reply as it is
written.
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
    """Receives generated ids from ``generate`` and hands out text pieces through a queue.

    Decoding is incremental (only a short window of ids is decoded per token, so long replies stay cheap; HF's
    TextStreamer re-decodes the whole line every token) and ends with one full decode that settles what is left,
    so the pieces join to ``tokenizer.decode(new_ids, skip_special_tokens=True)``.
    Text that could begin ``stop_text`` is held back until it is clear; if the model starts a new user turn the
    reply is cut there and generation stops.
    """

    def __init__(
        self, tokenizer, stop_text: str | None, stop_event: threading.Event, flush_every: float = 0.02
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_text = stop_text
        self.stop_event = stop_event
        # Text is handed over at most every `flush_every` seconds (the first piece at once): a reader woken for
        # every token of a fast model costs the generating thread GIL hand-offs, ~0.1-0.2 ms a token on CPU.
        self.flush_every = flush_every
        self._unsent = ""
        self._last_flush = 0.0
        self.ids: list[int] = []
        self.text = ""  # handed out so far
        self.hit_stop_text = False
        self.stopped = False
        self.error: BaseException | None = None
        self._held = ""
        self._prefix = self._read = 0  # decode window: ids[_prefix:_read] were decoded last time
        self._prompt_seen = False
        self._ended = False
        self._queue: queue.Queue = queue.Queue()

    def should_stop(self) -> bool:
        """Polled by generate's stopping criteria after every token."""
        return self.hit_stop_text or self.stop_event.is_set()

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
            first = not self.text
            self.text += buffer
            self._unsent += buffer
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
        """Flush what the incremental decode could not settle and close the stream (idempotent)."""
        if self._ended:
            return
        self._ended = True
        self.stopped = self.stop_event.is_set() and not self.hit_stop_text
        if not self.hit_stop_text:
            full, seen = self._decode(self.ids), self.text + self._held
            self._take(full[len(seen) :] if full.startswith(seen) else "")
            if self._held and not self.hit_stop_text:  # the reply ended on what only looked like a new turn
                self.text += self._held
                self._unsent += self._held
        self._flush()
        self._queue.put(_END)

    def run(self, generate: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        """Call ``generate`` (in a worker thread), keeping its error for the reader."""
        try:
            generate(**kwargs)
        except BaseException as err:  # noqa: BLE001 - re-raised in the reading thread
            self.error = err
        finally:
            self.end()

    def __iter__(self) -> Iterator[str]:
        while (piece := self._queue.get()) is not _END:
            yield piece


class StopWhen(StoppingCriteria):
    """A stopping criterion that asks a callable (thread-safe flags) after every token."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device)


def _serve(jobs: queue.Queue) -> None:
    while (job := jobs.get()) is not None:
        streamer, generate, kwargs, done = job
        del job  # hold no reference to the model between jobs
        streamer.run(generate, kwargs)
        done.set()
        del streamer, generate, kwargs, done


class GenerationWorker:
    """A long-lived daemon thread that runs ``generate`` jobs one after another.

    Starting a fresh thread per reply adds its start-up (and, on a busy machine, a wait to be scheduled) to the
    time to first token; this thread waits for work instead. It ends when the worker object is collected.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        threading.Thread(target=_serve, args=(self._jobs,), daemon=True, name="huatuo-generate").start()
        weakref.finalize(self, self._jobs.put, None)

    def submit(self, streamer: ReplyStreamer, generate: Callable[..., Any], kwargs: dict[str, Any]) -> threading.Event:
        """Queue ``streamer.run(generate, kwargs)``; the returned event is set when it has finished."""
        done = threading.Event()
        self._jobs.put((streamer, generate, kwargs, done))
        return done
