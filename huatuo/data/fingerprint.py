"""The prepared cache's key: a hash of everything that changes the packed rows.

File contents (not names: moving a file keeps the cache), the tokenizer's own content, the template, the packing
settings, the priorities, epochs and seed. An unchanged mixture is never prepared twice; a changed one is never
served stale.
"""

from __future__ import annotations

import hashlib
import json
import os
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


class FileDigests:
    """Content digests of data files, remembered by path, size, inode and modification time (as git's index does).

    Hashing a 1M-conversation corpus reads gigabytes before the first record; a rerun on unchanged files (a priority
    sweep, a crashed run) takes the digests from ``path`` instead. A file rewritten in place keeping its size and
    its nanosecond modification time would be missed; no tool does that without being told to.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._known: dict[str, dict] = {}
        self._changed = False
        if path is not None and path.is_file():
            try:
                self._known = json.loads(path.read_text())
            except ValueError:  # a damaged file: everything is hashed again
                self._known = {}

    def digest(self, file: Path) -> str:
        """The content digest of ``file``."""
        info = file.stat()
        stamp = [info.st_size, info.st_mtime_ns, info.st_ino]
        key = str(file.resolve())
        entry = self._known.get(key)
        if entry is not None and entry.get("stamp") == stamp:
            return entry["digest"]
        value = _file_digest(file)
        self._known[key] = {"stamp": stamp, "digest": value}
        self._changed = True
        return value

    def save(self) -> None:
        """Write the remembered digests (atomically), if any were computed."""
        if self.path is None or not self._changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        partial.write_text(json.dumps(self._known))
        os.replace(partial, self.path)


def tokenizer_digest(tokenizer) -> str:
    """A content hash of the tokenizer (its serialized fast tokenizer, or its vocabulary and specials)."""
    if (saved := getattr(tokenizer, "huatuo_digest", None)) is not None:
        return saved  # a tokenizer read back from huatuo.data.tokenizer_cache: the digest of the one it was saved from
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
    specs: Sequence[SourceSpec],
    tokenizer,
    settings: PackingSettings,
    exclude: NgramIndex | None = None,
    digests: FileDigests | None = None,
) -> str:
    """Hash of everything that affects the prepared rows.

    ``exclude``: the exam n-grams whose documents are dropped; ``digests`` remembers the data files' digests.
    """
    digests = digests or FileDigests(None)
    described = []
    for spec in specs:
        entry = asdict(spec)
        entry["paths"] = [digests.digest(p) for p in spec.files()]  # contents, not names: moving a file keeps the cache
        described.append(entry)
    digests.save()
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
