"""Tokenizing conversations for training: ``input_ids`` and ``labels`` in the HuatuoGPT-II layout, many at a time.

Token layout of one training sample ``[q1, a1, q2, a2]`` (``|`` separates separately tokenized pieces)::

    text    <问>：q1 | \n<答>： | a1 | \n<问>：q2 | \n<答>： | a2 | </s>
    labels  -100..   | -100.. | a1 | </s> -100.. | -100.. | a2 | </s>

Loss falls on answer tokens only. The end-of-answer label of a non-final answer sits on the first token of the
next user piece (HF shifts labels by one, so the model learns to predict ``</s>`` right after each answer while
the input stream carries no ``</s>`` between rounds, exactly as at inference); the sample ends with a real
``</s>`` token. The ``\n<答>：`` marker is tokenized on its own, as the chat prompt ends with it, so the first
answer token is learned in the same context in which it is generated.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

from huatuo.core.errors import ConfigError
from huatuo.core.template import GENERATION_MARKER, IGNORE_INDEX, TURN_SEPARATOR, USER_PREFIX


@dataclass(frozen=True)
class EncodedSample:
    """One tokenized conversation: aligned ``input_ids``/``labels`` and whether it was cut to ``max_len``."""

    input_ids: np.ndarray
    labels: np.ndarray
    truncated: bool


@dataclass(frozen=True)
class EncodedBatch:
    """Many tokenized conversations, concatenated: sample ``i`` is ``input_ids[offsets[i]:offsets[i+1]]``."""

    input_ids: np.ndarray  # int32, every sample back to back
    labels: np.ndarray  # int32, aligned with input_ids
    offsets: np.ndarray  # int64, len = samples + 1
    truncated: np.ndarray  # bool per sample: longer than max_len before the cut
    supervised: np.ndarray  # int64 per sample: labels that are not IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per sample (after truncation)."""
        return np.diff(self.offsets)

    def sample(self, index: int) -> EncodedSample:
        """One sample as its own arrays."""
        lo, hi = self.offsets[index], self.offsets[index + 1]
        return EncodedSample(self.input_ids[lo:hi], self.labels[lo:hi], bool(self.truncated[index]))


def _sentencepiece(tokenizer, backend) -> tuple[object | None, tuple[str, ...]]:
    """A ``SentencePieceProcessor`` for a tokenizer that encodes exactly as it, and the special-token strings."""
    model = getattr(tokenizer, "huatuo_sentencepiece_model", None)
    if not model or backend is None:
        return None, ()
    import sentencepiece

    specials = tuple(t.content for t in backend.get_added_tokens_decoder().values() if t.special)
    return sentencepiece.SentencePieceProcessor(model_file=str(model)), specials


# How each segment of the encoded stream is labelled (see the module docstring).
_USER, _MARKER, _ANSWER, _EOS = 0, 1, 2, 3


class ConversationEncoder:
    """Tokenizes conversations into ``input_ids``/``labels`` with the layout in this module's docstring.

    The texts of many conversations go to the tokenizer in one call, straight to the Rust backend without offset
    tracking (``encode_batch_fast``: about twice the speed of a plain call, and it uses every core), and the token
    layout is assembled with array operations over the whole batch rather than per sample: the prepare stage is
    bound by the tokenizer, not by Python.

    A tokenizer that huatuo rebuilt from a SentencePiece ``tokenizer.model`` to encode exactly as ``sentencepiece``
    does (Baichuan2, Yi: ``huatuo_sentencepiece_model`` names the file) is encoded by ``sentencepiece`` itself,
    which needs half the CPU of the Rust BPE for the same ids; a text holding a special-token string (``</s>``,
    which the rebuilt tokenizer maps to its id and ``sentencepiece`` spells out) goes through the Rust backend.
    Safe to call from several threads at once.
    """

    def __init__(self, tokenizer, max_len: int) -> None:
        if tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has no eos_token: set backbone.tokenizer.eos_token")
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.eos_id = int(tokenizer.eos_token_id)
        backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
        self._backend = backend
        self._plain = None  # a copy of the backend without truncation and padding, made when needed
        self._lock = threading.Lock()
        self._sentencepiece, self._specials = _sentencepiece(tokenizer, backend)
        self.sentencepiece_threads = -1  # every core; a worker process of a pool sets 1
        self.marker_ids = np.asarray(self._encode([GENERATION_MARKER])[0], dtype=np.int32)
        first_user = self._encode([USER_PREFIX + "x"])[0]
        self.min_len = len(first_user) + len(self.marker_ids) + 2  # question, marker, one answer token, </s>
        if max_len < self.min_len:
            raise ConfigError(
                f"max_len={max_len} cannot hold even a one-token exchange in the HuatuoGPT-II template "
                f"(needs at least {self.min_len} tokens); raise data.max_len"
            )

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if self._sentencepiece is not None and not any(s in t for t in texts for s in self._specials):
            return self._sentencepiece.encode(texts, num_threads=self.sentencepiece_threads)  # C++, GIL released
        if self._backend is None:
            return self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        backend = self._backend
        if backend.truncation is not None or backend.padding is not None:
            # A call such as tokenizer(text, truncation=True, max_length=n) leaves truncation switched on in the
            # shared Rust backend, which would cut every piece here: encode with a copy that has neither, and leave
            # the caller's state alone (switching it off and on again would race with other encoding threads).
            with self._lock:
                if self._plain is None:
                    self._plain = type(backend).from_str(backend.to_str())
                    self._plain.no_truncation()
                    self._plain.no_padding()
            backend = self._plain
        encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch  # Rust, GIL released
        return [enc.ids for enc in encode(texts, add_special_tokens=False)]

    def encode(self, turns: Sequence[str]) -> EncodedSample:
        """Tokenize one conversation ``[q1, a1, ...]`` (even length, starting with the user)."""
        return self.encode_flat([turns]).sample(0)

    def encode_batch(self, conversations: Sequence[Sequence[str]]) -> list[EncodedSample]:
        """Tokenize many conversations with one tokenizer call, one ``EncodedSample`` each."""
        flat = self.encode_flat(conversations)
        return [flat.sample(i) for i in range(len(flat))]

    def encode_flat(self, conversations: Sequence[Sequence[str]]) -> EncodedBatch:
        """Tokenize many conversations with one tokenizer call into one concatenated ``EncodedBatch``."""
        texts: list[str] = []
        turn_counts = np.fromiter((len(turns) for turns in conversations), dtype=np.int64, count=len(conversations))
        for turns in conversations:
            texts.append(USER_PREFIX + turns[0])
            for i in range(1, len(turns)):
                texts.append(turns[i] if i % 2 else TURN_SEPARATOR + USER_PREFIX + turns[i])
        ids = self._encode(texts) if texts else []
        piece_lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        # One source buffer: every piece's tokens, then the marker, then </s>; each output segment is a slice of it.
        marker_at = int(piece_lengths.sum())
        source = np.empty(marker_at + len(self.marker_ids) + 1, dtype=np.int32)
        source[:marker_at] = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=marker_at)
        source[marker_at:-1] = self.marker_ids
        source[-1] = self.eos_id
        return self._assemble(source, piece_lengths, turn_counts, marker_at)

    def _assemble(
        self, source: np.ndarray, piece_lengths: np.ndarray, turn_counts: np.ndarray, marker_at: int
    ) -> EncodedBatch:
        n_samples, n_pieces = len(turn_counts), len(piece_lengths)
        if n_samples == 0:
            empty = np.zeros(0, dtype=np.int32)
            return EncodedBatch(empty, empty, np.zeros(1, dtype=np.int64), np.zeros(0, bool), np.zeros(0, np.int64))
        piece_starts = np.zeros(n_pieces, dtype=np.int64)
        np.cumsum(piece_lengths[:-1], out=piece_starts[1:])
        sample_of_piece = np.repeat(np.arange(n_samples), turn_counts)
        first_piece = np.zeros(n_samples, dtype=np.int64)
        np.cumsum(turn_counts[:-1], out=first_piece[1:])
        turn_of_piece = np.arange(n_pieces) - first_piece[sample_of_piece]
        is_answer = (turn_of_piece % 2).astype(bool)
        # Segment order per sample: q1, marker, a1, q2, marker, a2, ..., </s>. Piece p lands after the p pieces,
        # the markers of the answers up to and including itself, and one </s> per earlier sample.
        answers_through = np.cumsum(is_answer)
        piece_slot = np.arange(n_pieces) + answers_through + sample_of_piece
        n_segments = n_pieces + int(answers_through[-1]) + n_samples
        seg_start = np.empty(n_segments, dtype=np.int64)
        seg_length = np.empty(n_segments, dtype=np.int64)
        seg_kind = np.empty(n_segments, dtype=np.int8)
        seg_start[piece_slot] = piece_starts
        seg_length[piece_slot] = piece_lengths
        seg_kind[piece_slot] = np.where(is_answer, _ANSWER, _USER)
        marker_slot = piece_slot[is_answer] - 1
        seg_start[marker_slot], seg_length[marker_slot], seg_kind[marker_slot] = (
            marker_at,
            len(self.marker_ids),
            _MARKER,
        )
        eos_slot = np.cumsum(turn_counts + turn_counts // 2 + 1) - 1
        seg_start[eos_slot], seg_length[eos_slot], seg_kind[eos_slot] = len(source) - 1, 1, _EOS
        # Gather every token of every segment from the source buffer (a vectorised concatenation of slices).
        total = int(seg_length.sum())
        seg_first = np.zeros(n_segments, dtype=np.int64)
        np.cumsum(seg_length[:-1], out=seg_first[1:])
        index = np.arange(total, dtype=np.int64) + np.repeat(seg_start - seg_first, seg_length)
        input_ids = source[index]
        token_kind = np.repeat(seg_kind, seg_length)
        labels = np.where((token_kind == _ANSWER) | (token_kind == _EOS), input_ids, IGNORE_INDEX).astype(np.int32)
        # End-of-answer label of a non-first question: its first token predicts </s> after the previous answer.
        later_question = piece_slot[~is_answer & (turn_of_piece > 0) & (piece_lengths > 0)]
        labels[seg_first[later_question]] = self.eos_id
        # Per-sample lengths, then truncation to max_len keeping each sample's head.
        sample_lengths = np.add.reduceat(seg_length, np.concatenate([[0], eos_slot[:-1] + 1]))
        truncated = sample_lengths > self.max_len
        if truncated.any():
            sample_first = np.zeros(n_samples, dtype=np.int64)
            np.cumsum(sample_lengths[:-1], out=sample_first[1:])
            within = np.arange(total, dtype=np.int64) - np.repeat(sample_first, sample_lengths)
            keep = within < self.max_len
            input_ids, labels = input_ids[keep], labels[keep]
            sample_lengths = np.minimum(sample_lengths, self.max_len)
        offsets = np.zeros(n_samples + 1, dtype=np.int64)
        np.cumsum(sample_lengths, out=offsets[1:])
        supervised_tokens = labels != IGNORE_INDEX
        supervised = np.add.reduceat(supervised_tokens, offsets[:-1])
        return EncodedBatch(input_ids, labels, offsets, truncated, supervised.astype(np.int64))
