"""The real Baichuan2 tokenizer, rebuilt from tokenizer.model without remote code, against sentencepiece itself.

Uses ../shared/assets/baichuan2/tokenizer.model and ../shared/data (never committed); skips when they are absent.
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from tests.helpers import BAICHUAN_TOKENIZER, SHARED

DIALOGUES = SHARED / "data" / "medical_dialogue_zh" / "internal_medicine_2000.csv"

# The released Baichuan2 / HuatuoGPT2 tokenizer_config.json: remote class, AddedToken dicts, no BOS/EOS added.
RELEASED_TOKENIZER_CONFIG = {
    "add_bos_token": False,
    "add_eos_token": False,
    "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
    "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": True, "rstrip": False},
    "clean_up_tokenization_spaces": False,
    "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False, "normalized": True, "rstrip": False},
    "model_max_length": 4096,
    "pad_token": {"__type": "AddedToken", "content": "<unk>", "lstrip": False, "normalized": True, "rstrip": False},
    "sp_model_kwargs": {},
    "tokenizer_class": "BaichuanTokenizer",
    "unk_token": {"__type": "AddedToken", "content": "<unk>", "lstrip": False, "normalized": True, "rstrip": False},
    "use_fast": False,
}

ENGLISH = [
    "The patient is a 54-year-old man with type 2 diabetes mellitus (HbA1c 8.1%) and hypertension (BP 152/94 mmHg).",
    "Metformin 500 mg twice daily; titrate to 1,000 mg b.i.d. if tolerated. Avoid if eGFR < 30 mL/min/1.73m^2.",
    "Differential diagnosis: acute coronary syndrome, pulmonary embolism, aortic dissection, GERD...",
    "  Leading spaces,   runs of spaces, tabs\tand\nnew lines\n\n  should survive exactly.  ",
    "Ünïcödé, emoji 🙂, CJK Ext-B 𠀀, and rare symbols ⅓ ℃ µg survive through byte fallback.",
]
MIXED = [
    "<问>：我最近血压 150/95 mmHg，需要吃 amlodipine 吗？\n<答>：",
    "<问>：肚子疼怎么办？\n<答>：建议先明确部位（right lower quadrant？）再就医。\n<问>：谢谢！\n<答>：",
    "CT 提示 right upper lobe 结节 8 mm，建议 3-6 个月复查。。。。。。",
    "用药：阿司匹林 100mg qd，氯吡格雷 75mg qd；<b>注意</b>出血风险！",
    "１２３ full-width digits ０９, ¥５０ and ￥50, ... and 。。。",
]


def dialogue_texts() -> list[str]:
    """Titles, questions and answers of all 2,000 real patient dialogues, each also behind the template's markers."""
    texts: list[str] = []
    with open(DIALOGUES, encoding="utf-8", errors="replace", newline="") as handle:
        for row in csv.DictReader(handle):
            fields = [row.get(key) or "" for key in ("title", "ask", "answer")]
            texts += [*fields, "<问>：" + fields[1], "\n<问>：" + fields[0]]
    return texts


def random_texts(sp, count: int = 3000) -> list[str]:
    """Seeded random runs of pieces, user-defined pieces, rare and unassigned characters, spaces and newlines."""
    import random

    rng = random.Random(0)
    pieces = [sp.id_to_piece(i).replace("▁", " ") for i in range(3, sp.get_piece_size()) if not sp.is_byte(i)]
    draws = (
        lambda: rng.choice(pieces),
        lambda: chr(rng.randint(0x20, 0x2FFF)),  # Latin, Greek, Cyrillic, symbols, ...
        lambda: chr(rng.randint(0x4E00, 0x9FFF)),  # CJK, most of them pieces
        lambda: chr(rng.randint(0x10000, 0x2FFFF)),  # emoji, CJK Ext-B: byte fallback
        lambda: rng.choice([" ", "  ", "\n", "\t", "。。。", "...", "<br/>", "<reserved_7>", "１２", "==", "->"]),
    )
    return ["".join(rng.choice(draws)() for _ in range(rng.randint(1, 30))) for _ in range(count)]


@pytest.fixture(scope="module")
def released_folder(tmp_path_factory):
    """A folder laid out like the Baichuan2/HuatuoGPT2 release: tokenizer.model + remote-code tokenizer_config."""
    if not BAICHUAN_TOKENIZER.is_file() or not DIALOGUES.is_file():
        pytest.skip("../shared/assets/baichuan2/tokenizer.model or ../shared/data is absent")
    folder = tmp_path_factory.mktemp("baichuan2_tokenizer")
    shutil.copy(BAICHUAN_TOKENIZER, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(RELEASED_TOKENIZER_CONFIG))
    return folder


@pytest.fixture(scope="module")
def pair(released_folder):
    """(fast tokenizer built by huatuo, sentencepiece processor) for the same model file."""
    import sentencepiece as spm

    from huatuo.models.loading import load_tokenizer

    return load_tokenizer(str(released_folder)), spm.SentencePieceProcessor(model_file=str(BAICHUAN_TOKENIZER))


def test_the_released_folder_loads_without_remote_code_and_knows_its_special_tokens(pair, released_folder, tmp_path):
    tokenizer, _ = pair
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id == 0
    assert len(tokenizer) == 125696
    assert tokenizer("肚子疼").input_ids == tokenizer("肚子疼", add_special_tokens=False).input_ids  # add_bos false
    tokenizer.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "auto_map" not in saved and (tmp_path / "tokenizer.json").is_file()  # plain transformers reloads it


def test_template_markers_encode_as_documented(pair):
    tokenizer, sp = pair
    for text, expected in (("\n<答>：", [5, 92655, 93140, 92574, 70]), ("<问>：", [92655, 92614, 92574, 70])):
        assert sp.encode(text) == expected
        assert tokenizer(text, add_special_tokens=False).input_ids == expected
        assert tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids == expected
    assert tokenizer("hi", add_special_tokens=False).input_ids == sp.encode("hi")  # no dummy prefix: not "▁hi"


@pytest.mark.parametrize("kind", ["chinese", "english", "mixed", "random"])
def test_encoding_and_decoding_equal_sentencepiece(pair, kind):
    tokenizer, sp = pair
    texts = {"chinese": dialogue_texts(), "english": ENGLISH, "mixed": MIXED, "random": random_texts(sp)}[kind]
    ours = [e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    theirs = sp.encode(texts)
    mismatches = [(t[:40], a[:12], b[:12]) for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts encode differently, e.g. {mismatches[:3]}"
    for text, ids in zip(texts, theirs, strict=True):
        assert tokenizer.decode(ids) == sp.decode(ids) == text  # identity normalisation: exact round trip


def test_every_piece_of_the_vocabulary_alone_encodes_like_sentencepiece(pair):
    # A text that is exactly one piece is where transformers' converter (ignore_merges) went wrong: 45 pieces such as
    # "==", "->" or " Sylvia" came out whole, where sentencepiece's merges give several pieces.
    tokenizer, sp = pair
    texts = [sp.id_to_piece(i).replace("▁", " ") for i in range(3, sp.get_piece_size()) if not sp.is_byte(i)]
    ours = [e.ids for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    mismatches = [(t, a, b) for t, a, b in zip(texts, ours, sp.encode(texts), strict=True) if a != b]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} pieces encode differently, e.g. {mismatches[:3]}"
    assert tokenizer("==", add_special_tokens=False).input_ids == sp.encode("==") == [64, 64]


def test_user_defined_pieces_are_added_tokens_and_nothing_pre_splits_the_text(pair):
    # The construction that encodes ~3x faster than transformers' regex over all 1,086 user-defined pieces.
    tokenizer, _ = pair
    backend = tokenizer.backend_tokenizer
    assert backend.pre_tokenizer is None and backend.model.ignore_merges is False
    added = {token.content for token in tokenizer.added_tokens_decoder.values()}
    assert {"<br/>", "。。。", "<SEP>", "..."} <= added and "，" not in added  # single characters never merge
