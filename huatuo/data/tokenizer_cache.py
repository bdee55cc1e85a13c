"""The prepare stage's tokenizer, built once and then read back in milliseconds without transformers.

Building the Baichuan2 or Yi tokenizer from ``tokenizer.model`` takes seconds, and importing transformers to build
any tokenizer takes more than the rest of start-up. The prepare stage needs only the Rust tokenizer and three token
ids, so the first run saves exactly that (``tokenizer.json`` plus ``meta.json``) in
``<data.cache_dir>/tokenizers/<key>/`` and later runs load it with the ``tokenizers`` library alone. The key hashes
the tokenizer folder's files, the loading arguments and the versions of transformers and tokenizers, so a changed
file or a new conversion code rebuilds it. Only ``huatuo.models.loading.load_tokenizer`` on a local folder is cached
(hub names and custom ``_target_`` callables always load as configured).

The cached tokenizer encodes exactly as the one it was saved from (the Rust tokenizer's own serialization), and it
keeps that tokenizer's content digest, so prepared data has the same fingerprint whichever way the tokenizer came.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from huatuo.core.assets import PACKAGE_DIR
from huatuo.core.logs import get_logger

log = get_logger(__name__)

CACHE_VERSION = 2  # bump when what is saved changes
LOADER = "huatuo.models.loading.load_tokenizer"
_CONVERSION_CODE = ("models/loading.py", "models/sentencepiece.py")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
)


@dataclass
class CachedTokenizer:
    """What the prepare stage uses of a tokenizer: the Rust tokenizer, its special ids, its content digest."""

    backend_tokenizer: Any  # tokenizers.Tokenizer
    eos_token_id: int | None
    pad_token_id: int | None
    bos_token_id: int | None
    huatuo_digest: str  # huatuo.data.fingerprint.tokenizer_digest of the tokenizer it was saved from
    huatuo_sentencepiece_model: str | None = None  # a copy of its tokenizer.model when it encodes exactly as it


def cache_key(node: dict[str, Any]) -> str | None:
    """The cache key of a ``backbone.tokenizer`` node, or None when it is not a local folder loaded by huatuo."""
    path = node.get("path")
    if node.get("_target_") != LOADER or not path or not Path(str(path)).is_dir():
        return None
    folder = Path(str(path))
    digest = hashlib.blake2b(digest_size=16)
    for name in _TOKENIZER_FILES:
        file = folder / name
        if file.is_file():
            digest.update(name.encode())
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    settings = {k: v for k, v in node.items() if k not in ("_target_", "path")}
    versions = [_version("transformers"), _version("tokenizers"), _version("sentencepiece"), CACHE_VERSION]
    for module in _CONVERSION_CODE:  # huatuo's own conversion (the Baichuan2/Yi rebuild) is part of the tokenizer
        versions.append(hashlib.blake2b((PACKAGE_DIR / module).read_bytes(), digest_size=8).hexdigest())
    digest.update(json.dumps([settings, versions], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def load_cached(folder: Path) -> CachedTokenizer | None:
    """The tokenizer saved in ``folder``, or None when there is none (or it is unreadable: it is then rebuilt)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception:  # noqa: BLE001 - a missing or damaged entry means "build it again"
        return None
    return CachedTokenizer(
        backend_tokenizer=backend,
        eos_token_id=meta["eos_token_id"],
        pad_token_id=meta["pad_token_id"],
        bos_token_id=meta["bos_token_id"],
        huatuo_digest=meta["digest"],
        huatuo_sentencepiece_model=str(folder / "tokenizer.model") if meta.get("sentencepiece") else None,
    )


def save(tokenizer: Any, folder: Path) -> str | None:
    """Save what the prepare stage needs of ``tokenizer`` into ``folder`` (atomically: a folder renamed into place).

    Returns the tokenizer's content digest, or None for a slow tokenizer (nothing to serialize: built every time)."""
    from huatuo.data.fingerprint import tokenizer_digest

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    backend.save(str(partial / "tokenizer.json"))
    model = getattr(tokenizer, "huatuo_sentencepiece_model", None)
    if model:
        shutil.copyfile(model, partial / "tokenizer.model")
    meta = {
        "sentencepiece": bool(model),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "digest": tokenizer_digest(tokenizer),
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(partial, folder)
    except OSError:  # another process saved it first: theirs is as good
        shutil.rmtree(partial, ignore_errors=True)
    return meta["digest"]


def prepare_tokenizer(node: dict[str, Any], cache_dir: str | Path) -> Any:
    """The tokenizer of a resolved ``backbone.tokenizer`` node, from the cache when it was built before."""
    key = cache_key(node)
    folder = Path(cache_dir) / "tokenizers" / key if key else None
    if folder is not None and (cached := load_cached(folder)) is not None:
        log.info("tokenizer %s from the cache (%s)", node.get("path"), folder)
        return cached
    from hydra.utils import instantiate

    tokenizer = instantiate(node)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)  # a damaged entry (it did not load): replaced, not kept forever
        if (digest := save(tokenizer, folder)) is not None:
            tokenizer.huatuo_digest = digest  # computed once: the data fingerprint reads it instead of hashing again
    return tokenizer
