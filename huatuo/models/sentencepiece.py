"""Tokenizers of released folders whose ``tokenizer_config.json`` names remote SentencePiece code (Baichuan2's
``BaichuanTokenizer``, Yi's ``YiTokenizer``), rebuilt from ``tokenizer.model`` as fast tokenizers that encode exactly
like ``sentencepiece``, without the remote code (which no longer runs on current transformers).
"""

from __future__ import annotations

import os
from typing import Any

from huatuo.core.errors import ModelLoadError
from huatuo.core.logs import get_logger
from huatuo.models.released import read_json, resolve_file

log = get_logger(__name__)

# Remote tokenizer classes that are SentencePiece BPE wrappers, with the defaults of their constructors.
SENTENCEPIECE_TOKENIZERS = {
    "BaichuanTokenizer": {"add_bos_token": True, "add_eos_token": False},
    "YiTokenizer": {"add_bos_token": True, "add_eos_token": False},
}

# tokenizer_config.json keys that only the remote classes understood; dropped so saved folders stay plain.
_REMOTE_ONLY_KEYS = ("auto_map", "sp_model_kwargs", "use_fast")

# sentencepiece_model.proto: the BPE model type and the piece types that matter here.
_SPM_BPE = 2
_NORMAL, _USER_DEFINED = 1, 4


def remote_sentencepiece_class(tokenizer_config: dict[str, Any] | None) -> str | None:
    """The remote SentencePiece tokenizer class a ``tokenizer_config.json`` names, if it is one we rebuild."""
    if not tokenizer_config:
        return None
    name = str(tokenizer_config.get("tokenizer_class") or "").removesuffix("Fast")
    return name if name in SENTENCEPIECE_TOKENIZERS else None


def read_sentencepiece(model_file: str | os.PathLike):
    """The ``ModelProto`` of a SentencePiece ``tokenizer.model``."""
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    return SentencePieceExtractor(str(model_file)).proto


def sentencepiece_backend(proto) -> Any | None:
    """A ``tokenizers.Tokenizer`` that encodes exactly like ``sentencepiece`` with this model, or None if not covered.

    Covered: BPE models whose normalizer only escapes spaces (Baichuan2, Yi); None sends the others to transformers'
    converter. SentencePiece's BPE merges two adjacent symbols when their concatenation is a normal piece, best score
    first, and never merges a user-defined piece: it matches those whole, longest first, and leaves them unnormalized.
    transformers' converter isolates them with a pre-tokenizer regex alternating all of them (1,086 in Baichuan2) and
    sets ``ignore_merges`` so that such a word comes out whole. Here the multi-character ones are added tokens (one
    Aho-Corasick pass; ~3x faster encoding), the single characters need nothing (the merges join normal pieces only,
    so nothing ever joins them), and ``ignore_merges`` is off: with it, a text that is exactly a piece the merges do
    not build (45 in Baichuan2, such as "==", "->", " Sylvia") came out as that piece where sentencepiece gives several.
    """
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import SpmConverter

    normalizer = proto.normalizer_spec
    user_defined = [piece.piece for piece in proto.pieces if piece.type == _USER_DEFINED]
    if (
        proto.trainer_spec.model_type != _SPM_BPE
        # Added tokens split the text before the normalizer runs; only when it does nothing but escape spaces (no
        # dummy prefix, no space trimming, no NFKC map) does that commute with SentencePiece's order.
        or normalizer.add_dummy_prefix
        or normalizer.remove_extra_whitespaces
        or normalizer.precompiled_charsmap
        or any("\u2581" in piece or " " in piece for piece in user_defined)
    ):
        return None
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    normal = {piece.piece: (-piece.score, i) for i, piece in enumerate(proto.pieces) if piece.type == _NORMAL}
    ranked = sorted(
        (rank, token[:cut], token[cut:])
        for token, rank in normal.items()
        for cut in range(1, len(token))
        if token[:cut] in normal and token[cut:] in normal
    )
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, merges=[(a, b) for _, a, b in ranked])
    backend.pre_tokenizer = None
    backend.model.ignore_merges = False
    backend.add_tokens([AddedToken(piece, normalized=False, special=False) for piece in user_defined if len(piece) > 1])
    return backend


def _special_token(value: Any) -> Any:
    """A special-token entry of tokenizer_config.json (a string or an ``AddedToken`` dict) as transformers takes it."""
    from tokenizers import AddedToken

    if isinstance(value, dict) and "content" in value:
        return AddedToken(**{k: v for k, v in value.items() if k != "__type"})
    return value


def sentencepiece_tokenizer(path: str, remote_class: str | None = None, revision: str | None = None):
    """A fast tokenizer rebuilt from the folder's ``tokenizer.model`` (set up like ``remote_class`` when given).

    Encodes exactly like ``sentencepiece`` on any text (``sentencepiece_backend``; other kinds of model go through
    transformers' converter); the special-token strings ``<s>``, ``</s>``, ``<unk>`` map to their ids, as they did in
    the remote classes. ``add_bos_token`` / ``add_eos_token`` come from ``tokenizer_config.json``, else from the
    remote class's defaults.
    """
    from transformers import TokenizersBackend

    settings = dict(SENTENCEPIECE_TOKENIZERS.get(remote_class or "", {}))
    config = read_json(path, "tokenizer_config.json", revision) or {}
    settings.update({key: config[key] for key in ("add_bos_token", "add_eos_token") if key in config})
    model_file = resolve_file(path, "tokenizer.model", revision)
    if model_file is None:
        raise ModelLoadError(
            f"{path}: no tokenizer.model to rebuild the {remote_class or 'SentencePiece'} tokenizer from; copy the "
            "release's tokenizer.model into the folder"
        )
    proto = read_sentencepiece(model_file)
    # added_tokens_decoder may rename pieces (chat tokens on reserved ids): only transformers' loader applies that
    backend = None if "added_tokens_decoder" in config else sentencepiece_backend(proto)
    if backend is None:
        tokenizer = TokenizersBackend.from_pretrained(path, revision=revision, **settings)
    else:
        kept = {k: v for k, v in config.items() if k not in (*_REMOTE_ONLY_KEYS, "tokenizer_class")}
        specials = {k: _special_token(v) for k, v in kept.items() if k.endswith("_token") and v is not None}
        spec = proto.trainer_spec
        for key, index in (("unk_token", spec.unk_id), ("bos_token", spec.bos_id), ("eos_token", spec.eos_id)):
            if key not in specials and index >= 0:  # a folder without tokenizer_config.json: the model's own
                specials[key] = proto.pieces[index].piece
        tokenizer = TokenizersBackend(
            tokenizer_object=backend, name_or_path=path, vocab_file=model_file, **{**kept, **specials, **settings}
        )
        # Encodes exactly as sentencepiece with this file does (but for special-token strings): the prepare stage
        # may use sentencepiece itself, which is faster (huatuo.data.encoder).
        tokenizer.huatuo_sentencepiece_model = str(model_file)
    for key in _REMOTE_ONLY_KEYS:
        tokenizer.init_kwargs.pop(key, None)
    log.info("%s: tokenizer rebuilt from tokenizer.model (%s, no remote code)", path, remote_class or "SentencePiece")
    return tokenizer
