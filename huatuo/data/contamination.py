"""N-gram overlap between a few thousand reference texts (exam questions) and a stream of any number of documents.

Text is matched as *units* after normalization, code point by code point: compatibility decomposition (NFKD:
full-width letters, digits and punctuation become their ordinary forms), case folding, accents dropped. Every Han or
kana character is one unit (Chinese has no spaces, and one character carries about a word's worth of meaning);
every run of other letters and digits is one unit (an English word, ``b6``, ``65``); whitespace, punctuation,
symbols and control characters only separate units. So ``维生素Ｂ６。`` and ``维生素 b6`` read the same, and ``n``
counts characters in Chinese and words in English.

The reference side is the index: every n-gram of every reference text, hashed to 64 bits and sorted, behind a
bitmap of hash prefixes (16-32 bits per n-gram, 2 MiB at least), so memory is set by the references, never by the
corpus. Documents stream through in chunks: NumPy turns a chunk into code points, units and rolling window hashes
in a few dozen array operations; the bitmap drops almost every window, a binary search confirms the rest, and each
hit is checked unit by unit in Python, so a hash collision never becomes a reported overlap.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np

from huatuo.core.errors import DataError

NORMALIZATION = (
    "per code point NFKD + casefold, marks dropped; a Han/kana character or a run of other letters/digits is a unit"
)
NORMALIZATION_VERSION = 1  # bump when units or hashes change: it is part of every index digest (and prepare cache key)
DEFAULT_N = 13  # units per n-gram; docs/research.md has the measurement behind this default
CHUNK_DOCUMENTS = 1024  # documents per vectorized pass: large enough to amortize NumPy's per-call cost
CHUNK_CHARACTERS = 4_000_000  # ... or fewer, when documents are long (keeps a pass to ~200 MB of arrays)

_SEPARATOR, _CHARACTER, _WORD = 0, 1, 2  # unit classes of a code point
_TABLE_SIZE = 0x30000  # classes are tabulated up to here; above, planes 3 (CJK extension G+) and the rest are ruled
_BITMAP_SLACK = 5  # prefilter bits per indexed n-gram, as a power of two: 2-3% of the windows pass it
_BITMAP_BITS = (24, 31)  # its size: 2 MiB at least, 256 MiB at most (over ~60M n-grams the pass rate rises)
_BUILD_TEXTS = 4096  # reference texts cut at a time while indexing: bounds the build's temporary arrays
_U64 = np.uint64
_BASE = 0x9E3779B97F4A7C15  # odd, so invertible mod 2**64: window hashes come from one prefix sum
_BASE_INVERSE = pow(_BASE, -1, 1 << 64)
_LATIN_FLAG = _U64(1 << 63)  # sets word units apart from character units (whose ids are their code points)
_WORD_POSITIONS = 64  # letter weights of a word unit repeat after this many letters (a longer "word" is noise)

T = TypeVar("T")


def _is_character_script(cp: int) -> bool:
    """Scripts written without spaces, where one character is one unit: Han (with extensions) and kana."""
    return (
        0x2E80 <= cp <= 0x2FDF  # radicals
        or 0x3005 <= cp <= 0x3007  # 々 〆 〇
        or 0x3021 <= cp <= 0x3029  # Suzhou numerals
        or 0x3040 <= cp <= 0x30FF  # hiragana, katakana
        or 0x31F0 <= cp <= 0x31FF
        or 0x3400 <= cp <= 0x4DBF
        or 0x4E00 <= cp <= 0x9FFF
        or 0xF900 <= cp <= 0xFAFF
        or 0x20000 <= cp
    )


@lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per code point below ``_TABLE_SIZE``: its normalized form (start and length in one flat array) and class.

    Built once per process (~0.4 s). A form without letters or digits (punctuation, symbols: "…" is "...") keeps one
    character, so only letters that truly expand (ligatures, "㎎", Hangul syllables) change a text's length.
    """
    flat = list(range(_TABLE_SIZE))  # every code point's own form first; the forms that differ are appended
    start = np.arange(_TABLE_SIZE, dtype=np.int64)
    length = np.ones(_TABLE_SIZE, dtype=np.int64)
    classes = np.zeros(_TABLE_SIZE, dtype=np.uint8)
    normal, category = unicodedata.normalize, unicodedata.category
    for cp in range(_TABLE_SIZE):
        char = chr(cp)
        kind = category(char)[0]
        if kind in "LN":
            classes[cp] = _CHARACTER if _is_character_script(cp) else _WORD
        elif kind == "M":
            length[cp] = 0
            continue
        form = normal("NFKD", char).casefold()
        if form == char:
            continue
        form = "".join(c for c in normal("NFKD", form) if category(c)[0] != "M")  # accents off: é, e+U+0301 -> e
        if form and not any(category(c)[0] in "LN" for c in form):
            form = form[0]
        start[cp], length[cp] = len(flat), len(form)
        flat.extend(map(ord, form))
    return np.asarray(flat, dtype=np.uint32), start, length, classes


def _classes(cps: np.ndarray) -> np.ndarray:
    classes = _tables()[3][np.minimum(cps, _TABLE_SIZE - 1)]
    high = cps >= _TABLE_SIZE  # planes 3+: CJK extensions G/H are characters; tags and private use separate
    if high.any():
        classes[high] = np.where(cps[high] < 0x40000, _CHARACTER, _SEPARATOR)
    return classes


def normalized_code_points(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The normalized texts as code points joined by NUL (a separator), and where each text starts (texts + 1).

    Normalization works per code point: NFKD, case folding, NFKD again, combining marks dropped (so "Ａ", "a" and
    "á" read the same). Unlike string-level NFKC it never looks at neighbours, which lets NumPy do it for a whole
    chunk in a few gathers: ~1 ns a character against ~250 ns for ``unicodedata.normalize`` on Chinese text.
    """
    raw = np.frombuffer("\x00".join(texts).encode("utf-32-le"), dtype=np.uint32)
    raw_starts = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) + 1 for t in texts], out=raw_starts[1:])
    flat, start, length, _ = _tables()
    capped = np.minimum(raw, _TABLE_SIZE - 1)
    high = np.flatnonzero(raw >= _TABLE_SIZE)  # beyond the table: kept as they are
    lengths = length[capped]
    lengths[high] = 1
    if (lengths == 1).all():
        out = flat[start[capped]]
        out[high] = raw[high]
        return out, raw_starts
    ends = np.cumsum(lengths)
    begins = ends - lengths
    source = np.repeat(np.arange(len(raw)), lengths)
    out = flat[start[capped][source] + (np.arange(int(ends[-1])) - begins[source])]
    out[begins[high]] = raw[high]
    # an empty last text starts where the joined text ends: one position past the last code point
    starts = np.r_[np.r_[begins, ends[-1]][raw_starts[:-1]], ends[-1] + 1].astype(np.int64)
    return out, starts


def normalize(text: str) -> str:
    """The text as matching reads it (see ``normalized_code_points``)."""
    return normalized_code_points([text])[0].tobytes().decode("utf-32-le")


@lru_cache(maxsize=8)
def _powers(base: int, size: int) -> np.ndarray:
    values = np.full(size, base, dtype=_U64)
    values[0] = 1
    return np.multiply.accumulate(values)  # uint64 arithmetic wraps: exactly base**i mod 2**64


def _power_table(base: int, size: int) -> np.ndarray:
    capacity = 1 << max(16, (size - 1).bit_length())  # grow by doubling, so a few tables serve every chunk
    return _powers(base, capacity)[:size]


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: nearby ids (neighbouring code points) get unrelated bits before the rolling hash."""
    z = values ^ (values >> _U64(30))
    z = z * _U64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> _U64(27))
    z = z * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


@dataclass
class Units:
    """The units of a batch of normalized texts, concatenated: ids, which text each belongs to, and where it lies."""

    cps: np.ndarray  # uint32: the normalized texts joined by NUL (a separator)
    ids: np.ndarray  # uint64 per unit
    owner: np.ndarray  # int64 per unit: index of its text
    start: np.ndarray  # int64 per unit: code point offset in ``cps``
    end: np.ndarray  # int64 per unit: one past its last code point
    offsets: np.ndarray  # int64, texts + 1: text t holds units offsets[t]:offsets[t+1]
    text_starts: np.ndarray  # int64, texts + 1: text t is ``cps[text_starts[t]:text_starts[t+1]-1]``

    def strings(self, first: int, last: int) -> list[str]:
        """Units first..last-1 as strings (for checking a hit)."""
        bounds = zip(self.start[first:last].tolist(), self.end[first:last].tolist(), strict=True)
        return [self.text(start, end) for start, end in bounds]

    def text(self, start: int, end: int) -> str:
        """Code points start..end-1 of the normalized texts, as a string."""
        return self.cps[start:end].tobytes().decode("utf-32-le")


def cut_units(texts: Sequence[str]) -> Units:
    """Units of raw texts (normalized here), in one vectorized pass."""
    cps, text_starts = normalized_code_points(texts)
    classes = _classes(cps)
    word = classes == _WORD
    after_word = np.zeros_like(word)
    after_word[1:] = word[:-1]
    begins = (classes == _CHARACTER) | (word & ~after_word)
    kept = np.flatnonzero(classes != _SEPARATOR)
    first = np.flatnonzero(begins[kept])  # index into ``kept`` where each unit begins
    if len(first) == 0:
        empty = np.zeros(0, dtype=np.int64)
        no_units = np.zeros(len(texts) + 1, dtype=np.int64)
        return Units(cps, np.zeros(0, dtype=_U64), empty, empty, empty, no_units, text_starts)
    unit_of = np.cumsum(begins[kept]) - 1
    position = np.arange(len(kept)) - first[unit_of]
    weights = _power_table(_BASE, _WORD_POSITIONS)[position % _WORD_POSITIONS]
    ids = np.add.reduceat(cps[kept].astype(_U64) * weights, first)  # a character unit: its code point times 1
    ids[word[kept[first]]] |= _LATIN_FLAG
    start = kept[first].astype(np.int64)
    end = kept[np.r_[first[1:], len(kept)] - 1].astype(np.int64) + 1
    owner = np.searchsorted(text_starts, start, side="right") - 1
    offsets = np.searchsorted(owner, np.arange(len(texts) + 1)).astype(np.int64)
    return Units(cps, ids, owner, start, end, offsets, text_starts)


def window_hashes(units: Units, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit hash of every n-gram that lies inside one text, and the index of its first unit."""
    count = len(units.ids) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=_U64), np.zeros(0, dtype=np.int64)
    mixed = _mix(units.ids)
    prefix = np.zeros(len(mixed) + 1, dtype=_U64)
    np.cumsum(mixed * _power_table(_BASE_INVERSE, len(mixed)), out=prefix[1:])
    # sum_k x[i+k] B^(n-1-k) = (P[i+n] - P[i]) B^(i+n-1): the same value wherever the n-gram sits
    hashes = (prefix[n:] - prefix[:count]) * _power_table(_BASE, len(mixed))[n - 1 :]
    first = np.flatnonzero(units.owner[:count] == units.owner[n - 1 :])
    return hashes[first], first


@dataclass(frozen=True)
class Overlap:
    """One reference text sharing at least one n-gram with one document: its longest shared span."""

    document: int  # position of the document in what was scanned (a chunk, or the whole stream)
    reference: int  # position of the reference text in the index
    span: str  # the shared text as it reads in the normalized document
    units: int  # the span's length in units (>= n)
    start: int  # code point offsets of the span in the normalized document
    end: int


@dataclass
class NgramIndex:
    """Every n-gram of a set of reference texts (each reference may have several texts), ready to scan documents."""

    n: int
    hashes: np.ndarray  # sorted unique uint64
    owner_offsets: np.ndarray  # int64, hashes + 1: hash h belongs to references owner_ids[offsets[h]:offsets[h+1]]
    owner_ids: np.ndarray  # int64
    units: list[list[str]]  # per reference, per text: its units joined by U+001F, fenced by it (to check hits)
    too_short: list[int]  # references with no text of n units or more: they can never be found
    meta: dict[str, Any] = field(default_factory=dict)  # what the references are (suites, counts), for reports
    _bitmap: np.ndarray = field(init=False, repr=False)  # a packed bit per hash prefix: is any n-gram there?
    _shift: np.uint64 = field(init=False, repr=False)

    def __post_init__(self) -> None:
        low, high = _BITMAP_BITS
        bits = min(high, max(low, int(len(self.hashes)).bit_length() + _BITMAP_SLACK))
        self._shift = _U64(64 - bits)
        prefixes = (self.hashes >> self._shift).astype(np.int64)
        self._bitmap = np.zeros(1 << (bits - 3), dtype=np.uint8)
        np.bitwise_or.at(self._bitmap, prefixes >> 3, (1 << (prefixes & 7)).astype(np.uint8))

    def _maybe(self, hashes: np.ndarray) -> np.ndarray:
        prefixes = (hashes >> self._shift).astype(np.int64)
        return np.flatnonzero((self._bitmap[prefixes >> 3] >> (prefixes & 7).astype(np.uint8)) & 1)

    @classmethod
    def build(cls, references: Sequence[Sequence[str]], n: int = DEFAULT_N, meta: dict | None = None) -> NgramIndex:
        """Index the n-grams of each reference's texts (raw text: normalized here)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be a positive integer")
        flat = [t for texts in references for t in texts]
        owner_of_text = np.repeat(np.arange(len(references)), [len(texts) for texts in references])
        per_reference: list[list[str]] = [[] for _ in references]  # one string a text: a few bytes per character
        longest = np.zeros(len(references), dtype=np.int64)  # a reference is found if any of its texts has n units
        all_hashes, all_owners = [np.zeros(0, dtype=_U64)], [np.zeros(0, dtype=np.int64)]
        for at in range(0, len(flat), _BUILD_TEXTS):
            owners = owner_of_text[at : at + _BUILD_TEXTS]
            units = cut_units(flat[at : at + _BUILD_TEXTS])
            hashes, first = window_hashes(units, n)
            all_hashes.append(hashes)
            all_owners.append(owners[units.owner[first]])
            for t, owner in enumerate(owners.tolist()):
                per_reference[owner].append(_fenced(units.strings(units.offsets[t], units.offsets[t + 1])))
            np.maximum.at(longest, owners, np.diff(units.offsets))
        hashes, owners = np.concatenate(all_hashes), np.concatenate(all_owners)
        order = np.lexsort((owners, hashes))  # by hash, then owner: each (hash, owner) pair kept once
        hashes, owners = hashes[order], owners[order]
        fresh = np.ones(len(hashes), dtype=bool)
        fresh[1:] = (hashes[1:] != hashes[:-1]) | (owners[1:] != owners[:-1])
        hashes, owners = hashes[fresh], owners[fresh]
        starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]]) if len(hashes) else np.zeros(0, np.int64)
        offsets = np.r_[starts, len(hashes)].astype(np.int64)
        short = [int(r) for r in np.flatnonzero(longest < n)]
        return cls(n, hashes[starts], offsets, owners, per_reference, short, dict(meta or {}))

    def __len__(self) -> int:
        return len(self.hashes)

    def digest(self) -> str:
        """A content hash of the index (n, normalization, every n-gram and whose it is): the prepare cache key part."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{NORMALIZATION_VERSION}:{self.n}".encode())
        for array in (self.hashes, self.owner_offsets, self.owner_ids):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def nbytes(self) -> int:
        """Bytes held by the index's arrays (the reference units, a few per question, come on top)."""
        return self.hashes.nbytes + self.owner_offsets.nbytes + self.owner_ids.nbytes + self._bitmap.nbytes

    def scan(self, texts: Sequence[str]) -> list[Overlap]:
        """Every (document, reference) pair sharing an n-gram, with its longest shared span, for raw texts."""
        units = cut_units(texts)
        hashes, first = window_hashes(units, self.n)
        if len(hashes) == 0 or len(self.hashes) == 0:
            return []
        maybe = self._maybe(hashes)
        if len(maybe) == 0:
            return []
        at = np.searchsorted(self.hashes, hashes[maybe])
        at[at == len(self.hashes)] = 0
        found = self.hashes[at] == hashes[maybe]
        windows, slots = first[maybe[found]], at[found]
        if len(windows) == 0:
            return []
        return self._overlaps(units, windows, slots)

    def _overlaps(self, units: Units, windows: np.ndarray, slots: np.ndarray) -> list[Overlap]:
        runs: dict[tuple[int, int], list[int]] = {}
        for window, slot in zip(windows.tolist(), slots.tolist(), strict=True):
            for reference in self.owner_ids[self.owner_offsets[slot] : self.owner_offsets[slot + 1]].tolist():
                runs.setdefault((int(units.owner[window]), reference), []).append(window)
        out = []
        for (document, reference), starts in sorted(runs.items()):
            best = self._longest_checked_run(units, sorted(set(starts)), reference)
            if best is None:
                continue  # a 64-bit hash collision: the units differ
            first, last = best  # units first..last-1
            base = int(units.text_starts[document])
            start, end = int(units.start[first]), int(units.end[last - 1])
            out.append(Overlap(document, reference, units.text(start, end), last - first, start - base, end - base))
        return out

    def _longest_checked_run(self, units: Units, starts: list[int], reference: int) -> tuple[int, int] | None:
        """The longest span of units (first, last + 1) that ``reference`` really holds, among runs of matching windows.

        Consecutive matching windows may each match a different place of the question, so a run is checked whole;
        only when the question does not hold it is it searched for its longest part that it does hold.
        """
        best: tuple[int, int] | None = None
        for first, last in _runs(starts):
            end = last + self.n
            if best is not None and end - first <= best[1] - best[0]:
                continue
            texts = self.units[reference]
            if self._holds(texts, units, first, end):
                best = (first, end)
                continue
            for a in range(first, last + 1):  # rare: the run splices several places of the question
                if best is not None and end - a <= best[1] - best[0]:
                    break
                if not self._holds(texts, units, a, a + self.n):
                    continue  # a 64-bit hash collision: the units differ
                b = a + self.n
                while b < end and self._holds(texts, units, a, b + 1):
                    b += 1
                if best is None or b - a > best[1] - best[0]:
                    best = (a, b)
        return best

    @staticmethod
    def _holds(texts: list[str], units: Units, first: int, end: int) -> bool:
        span = _fenced(units.strings(first, end))
        return any(span in text for text in texts)

    def stream(
        self, items: Iterable[T], text: Callable[[T], str], chunk: int = CHUNK_DOCUMENTS
    ) -> Iterator[tuple[T, list[Overlap]]]:
        """Each item with its overlaps (an empty list for a clean one), in order, scanned a chunk at a time."""
        batch: list[T] = []
        texts: list[str] = []
        characters = 0
        for item in items:
            batch.append(item)
            texts.append(text(item))
            characters += len(texts[-1])
            if len(batch) >= chunk or characters >= CHUNK_CHARACTERS:
                yield from self._scan_batch(batch, texts)
                batch, texts, characters = [], [], 0
        if batch:
            yield from self._scan_batch(batch, texts)

    def _scan_batch(self, batch: list[T], texts: list[str]) -> Iterator[tuple[T, list[Overlap]]]:
        found: dict[int, list[Overlap]] = {}
        for overlap in self.scan(texts):
            found.setdefault(overlap.document, []).append(overlap)
        for i, item in enumerate(batch):
            yield item, found.get(i, [])

    def drop_overlapping(
        self,
        conversations: Iterable[tuple[str, list[str]]],
        on_drop: Callable[[str, list[Overlap]], None],
    ) -> Iterator[tuple[str, list[str]]]:
        """Pass through the ``(location, turns)`` that share no n-gram with any reference; report the others."""
        kept = dropped = 0
        first_dropped = None
        for (location, turns), overlaps in self.stream(conversations, conversation_text):
            if overlaps:
                dropped += 1
                first_dropped = first_dropped or location
                on_drop(location, overlaps)
                continue
            kept += 1
            yield location, turns
        if dropped and not kept:
            raise DataError(
                f"every one of the {dropped} documents read (first at {first_dropped}) shares a {self.n}-unit span "
                f"with the exam questions of data.decontaminate ({self.meta.get('label', 'the exam')}), which would "
                "leave nothing to train on; check the source's files, or remove the suite from data.decontaminate"
            )


def conversation_text(item: tuple[str, list[str]]) -> str:
    """A training conversation ``(location, turns)`` as one document: its turns, one per line. Prepare's
    ``data.decontaminate`` and ``python -m huatuo.decontaminate`` read documents alike, so the report predicts
    exactly what prepare drops."""
    return "\n".join(item[1])


def _runs(starts: list[int]) -> Iterator[tuple[int, int]]:
    """Sorted window starts as runs of consecutive ones: (first, last) each."""
    for i, window in enumerate(starts):
        if i == 0 or window != starts[i - 1] + 1:
            first = window
        if i + 1 == len(starts) or starts[i + 1] != window + 1:
            yield first, window


def _fenced(units: list[str]) -> str:
    """Units as one string that a run of units matches only at unit boundaries."""
    return "\x1f" + "\x1f".join(units) + "\x1f"
