"""The prepared cache's key: a hash of everything that changes the packed rows.

File contents (not names: moving a file keeps the cache), the tokenizer's own content, the template, the packing
settings, the priorities, epochs and seed. An unchanged mixture is never prepared twice; a changed one is never
served stale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from huatuo.core.template import ASSISTANT_PREFIX, IGNORE_INDEX, TURN_SEPARATOR, USER_PREFIX
from huatuo.data.contamination import NgramIndex
from huatuo.data.settings import PackingSettings
from huatuo.data.sources import SourceSpec

PIPELINE_VERSION = 2  # bump when the prepared layout or the token layout changes


def _file_digest(path: str | Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """A content hash of the tokenizer (its serialized fast tokenizer, or its vocabulary and specials)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        serialized = json.loads(backend.to_str())
        for state in ("truncation", "padding"):  # call-time settings the encoder switches off; not the tokenizer
            serialized.pop(state, None)
        payload = json.dumps(serialized, sort_keys=True)
    else:
        payload = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.eos_token_id, tokenizer.pad_token_id])
    return hashlib.blake2b((payload + extra).encode(), digest_size=16).hexdigest()


def fingerprint(
    specs: Sequence[SourceSpec], tokenizer, settings: PackingSettings, exclude: NgramIndex | None = None
) -> str:
    """Hash of everything that affects the prepared rows (``exclude``: the exam n-grams whose documents are dropped)."""
    described = []
    for spec in specs:
        entry = asdict(spec)
        entry["paths"] = [_file_digest(p) for p in spec.files()]  # contents, not names: moving a file keeps the cache
        described.append(entry)
    blob = json.dumps(
        {
            "version": PIPELINE_VERSION,
            "template": [USER_PREFIX, ASSISTANT_PREFIX, TURN_SEPARATOR, IGNORE_INDEX],
            "settings": asdict(settings),
            "sources": described,
            "tokenizer": tokenizer_digest(tokenizer),
            # only with data.decontaminate: every other mixture keeps the cache key it always had
            **({"decontaminate": exclude.digest()} if exclude is not None else {}),
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]
