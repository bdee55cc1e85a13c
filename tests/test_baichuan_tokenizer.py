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


def dialogue_texts(rows: int = 300) -> list[str]:
    """Titles, questions and answers of the first ``rows`` real patient dialogues."""
    texts: list[str] = []
    with open(DIALOGUES, encoding="utf-8", errors="replace", newline="") as handle:
        for i, row in enumerate(csv.DictReader(handle)):
            if i == rows:
                break
            texts += [row["title"], row["ask"], row["answer"]]
    return texts


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

    from huatuo.backbone import load_tokenizer

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


@pytest.mark.parametrize("kind", ["chinese", "english", "mixed"])
def test_encoding_and_decoding_equal_sentencepiece(pair, kind):
    tokenizer, sp = pair
    texts = {"chinese": dialogue_texts(), "english": ENGLISH, "mixed": MIXED}[kind]
    ours = [e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    theirs = sp.encode(texts)
    mismatches = [(t[:40], a[:12], b[:12]) for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts encode differently, e.g. {mismatches[:3]}"
    for text, ids in zip(texts, theirs, strict=True):
        assert tokenizer.decode(ids) == sp.decode(ids) == text  # identity normalisation: exact round trip
