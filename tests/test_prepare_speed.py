"""What makes prepare fast must not change what it writes: tokenizing in worker processes gives the rows of one
process byte for byte, and the cached tokenizer gives the tokens (and the fingerprint) of the one it was saved from."""

from __future__ import annotations

import hashlib
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from huatuo import asset_path
from huatuo.data import tokens as tokens_module
from huatuo.data.encoder import ConversationEncoder
from huatuo.data.fingerprint import tokenizer_digest
from huatuo.data.prepare import prepare
from huatuo.data.settings import PackingSettings, sources_from_config
from huatuo.data.tokenizer_cache import CachedTokenizer, cache_key, prepare_tokenizer
from huatuo.data.tokens import ChunkEncoder, tokenize_sources
from tests.helpers import BAICHUAN_TOKENIZER, ROOT, run_script

QUESTIONS = ["头痛发热三天了怎么办？", "高血压患者可以喝咖啡吗？", "孩子咳嗽有痰，需要吃药吗？", "胃痛反酸该挂什么科？"]
ANSWERS = [
    "多休息、多喝水，体温超过三十九度请就医。",
    "适量饮用一般可以，但要监测血压。",
    "先观察，痰多可拍背，加重就医。",
]


def write_sources(folder: Path, per_source: int) -> dict:
    """Three sources of ``per_source`` conversations each (several encoding chunks), in two formats."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = {}
    for s, (name, layout) in enumerate((("web", "turns"), ("books", "unify"), ("sft", "turns"))):
        path = folder / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for i in range(per_source):
                q, a = QUESTIONS[(i + s) % len(QUESTIONS)] + f"（第{i}例）", ANSWERS[i % len(ANSWERS)] * (1 + i % 5)
                record = [q, a] if layout == "turns" else {"question": q, "answer": a}
                if name == "sft" and i % 3 == 0:
                    record = [q, a, "还需要注意什么？", "注意饮食清淡。"]
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        sources[name] = {"paths": [str(path)], "priority": 4 - s, "epochs": 1 + (name == "sft")}
    return sources


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_any_number_of_worker_threads_or_processes_writes_the_token_files_of_one(tmp_path, tiny_tokenizer, monkeypatch):
    specs = sources_from_config(write_sources(tmp_path / "data", 2500))  # 3 chunks per source
    encoder = ConversationEncoder(tiny_tokenizer, 256)
    pools = []
    original_start = ChunkEncoder._start

    def start(self):
        pools.append(original_start(self))
        return pools[-1]

    monkeypatch.setattr(ChunkEncoder, "_start", start)
    layouts = [(1, "thread"), (2, "thread"), (3, "thread"), (2, "process"), (3, "process")]
    first = None
    for num_proc, workers in layouts:
        workdir = tmp_path / f"tokens-{num_proc}-{workers}"
        workdir.mkdir()
        settings = PackingSettings(max_len=256)
        store = tokenize_sources(specs, encoder, settings, workdir, num_proc=num_proc, workers=workers)
        first = first or (workdir, store)
        assert digests(workdir) == digests(first[0])
        assert (store.offsets == first[1].offsets).all() and (store.supervised == first[1].supervised).all()
    assert [type(p) is ProcessPoolExecutor for p in pools] == [False, False, False, True, True]
    assert [p._max_workers for p in pools] == [1, 2, 3, 2, 3]


def test_a_single_chunk_is_encoded_without_a_pool(tmp_path, tiny_tokenizer, monkeypatch):
    specs = sources_from_config(write_sources(tmp_path / "data", 100))
    encoder, settings = ConversationEncoder(tiny_tokenizer, 256), PackingSettings(max_len=256)
    alone, pooled = tmp_path / "alone", tmp_path / "pooled"
    alone.mkdir(), pooled.mkdir()
    reference = tokenize_sources(specs, encoder, settings, pooled, num_proc=1)
    monkeypatch.setattr(ChunkEncoder, "_start", lambda self: pytest.fail("a pool was started for one chunk"))
    store = tokenize_sources(specs, encoder, settings, alone, num_proc=2)
    assert digests(alone) == digests(pooled) and (store.offsets == reference.offsets).all()


def test_prepared_rows_and_fingerprint_do_not_depend_on_num_proc(tmp_path, tiny_tokenizer):
    specs = sources_from_config(write_sources(tmp_path / "data", 1500))
    settings = PackingSettings(max_len=256)
    one = prepare(specs, tiny_tokenizer, settings, tmp_path / "cache-1", num_proc=1)
    two = prepare(specs, tiny_tokenizer, settings, tmp_path / "cache-2", num_proc=2, workers="process")
    assert one.fingerprint == two.fingerprint
    data = [f for f in sorted((one.dataset_dir).iterdir()) if f.suffix == ".arrow"]
    assert data and all(f.read_bytes() == (two.dataset_dir / f.name).read_bytes() for f in data)
    busy = two.stats["phase_cores_busy"]
    assert set(busy) == {"read_and_tokenize", "order", "pack", "write", "schedule"}
    assert two.stats["start_up_seconds"] > 0


def node(path: str) -> dict:
    return {"_target_": "huatuo.models.loading.load_tokenizer", "path": path, "trust_remote_code": False}


def test_the_cached_tokenizer_encodes_like_the_original_and_keeps_its_digest(tmp_path, tiny_tokenizer):
    folder = tmp_path / "tok"
    shutil.copytree(asset_path("tiny_tokenizer"), folder)
    first = prepare_tokenizer(node(str(folder)), tmp_path / "cache")
    assert not isinstance(first, CachedTokenizer)  # built, then saved
    second = prepare_tokenizer(node(str(folder)), tmp_path / "cache")
    assert isinstance(second, CachedTokenizer)
    assert tokenizer_digest(second) == tokenizer_digest(first) == tokenizer_digest(tiny_tokenizer)
    assert (second.eos_token_id, second.pad_token_id, second.bos_token_id) == (2, 3, 1)
    texts = [*QUESTIONS, *ANSWERS, "\n<答>：", "English words and 123 numbers", "emoji 😀 罕见字 龘"]
    ours = [e.ids for e in second.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert ours == [tiny_tokenizer.encode(t, add_special_tokens=False) for t in texts]
    specs = sources_from_config(write_sources(tmp_path / "data", 300))
    a = prepare(specs, first, PackingSettings(max_len=256), tmp_path / "rows-a")
    b = prepare(specs, second, PackingSettings(max_len=256), tmp_path / "rows-b")
    assert a.fingerprint == b.fingerprint
    assert (a.dataset_dir / "state.json").is_file()
    arrow = [f.name for f in a.dataset_dir.iterdir() if f.suffix == ".arrow"]
    assert all((a.dataset_dir / f).read_bytes() == (b.dataset_dir / f).read_bytes() for f in arrow)


def test_the_cache_key_follows_the_files_and_only_local_folders_are_cached(tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(asset_path("tiny_tokenizer"), folder)
    key = cache_key(node(str(folder)))
    assert key == cache_key(node(str(folder)))
    assert cache_key({**node(str(folder)), "pad_token": "<unk>"}) != key
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 99}))
    assert cache_key(node(str(folder))) != key
    assert cache_key(node("org/hub-model")) is None
    assert cache_key({**node(str(folder)), "_target_": "my.own.loader"}) is None


def test_a_damaged_cache_entry_is_rebuilt(tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(asset_path("tiny_tokenizer"), folder)
    prepare_tokenizer(node(str(folder)), tmp_path / "cache")
    entry = tmp_path / "cache" / "tokenizers" / cache_key(node(str(folder)))
    (entry / "tokenizer.json").write_text("{not json")
    assert not isinstance(prepare_tokenizer(node(str(folder)), tmp_path / "cache"), CachedTokenizer)
    assert isinstance(prepare_tokenizer(node(str(folder)), tmp_path / "cache"), CachedTokenizer)  # and replaced


def test_the_prepare_command_reads_the_tokenizer_from_its_cache_on_a_rerun(tmp_path):
    command = ["-m", "huatuo.prepare", f"paths.cache_dir={tmp_path / 'cache'}"]
    first = run_script([*command, f"hydra.run.dir={tmp_path / 'run1'}"])
    second = run_script([*command, f"hydra.run.dir={tmp_path / 'run2'}", "force=true"])
    assert "from the cache" not in first.stdout + first.stderr
    assert "from the cache" in second.stdout + second.stderr
    stats = [json.loads((tmp_path / f"run{i}" / "stats.json").read_text()) for i in (1, 2)]
    assert stats[0]["fingerprint"] == stats[1]["fingerprint"]
    check = "import sys, huatuo.prepare; assert 'transformers' not in sys.modules and 'torch' not in sys.modules"
    run_script(["-c", check], cwd=ROOT)


def test_workers_take_their_encoder_from_the_parent(tmp_path, tiny_tokenizer):
    encoder = ConversationEncoder(tiny_tokenizer, 256)
    with ChunkEncoder(encoder, 2, "process") as chunks:
        conversations = [[q, a] for q in QUESTIONS for a in ANSWERS]
        batches = list(chunks.map(iter([(["x"] * len(conversations), conversations)] * 3)))
        assert tokens_module._worker_encoder is encoder
    assert tokens_module._worker_encoder is None  # released with the pool
    expected = encoder.encode_flat(conversations)
    assert all((b.input_ids == expected.input_ids).all() for _, b in batches)


def test_file_digests_are_remembered_until_a_file_changes(tmp_path, monkeypatch):
    from huatuo.data import fingerprint as fingerprint_module

    data = tmp_path / "a.jsonl"
    data.write_text('["q", "a"]\n')
    store = tmp_path / "digests.json"
    first = fingerprint_module.FileDigests(store)
    value = first.digest(data)
    first.save()
    hashed = []
    real = fingerprint_module._file_digest
    monkeypatch.setattr(fingerprint_module, "_file_digest", lambda path: hashed.append(path) or real(path))
    again = fingerprint_module.FileDigests(store)
    assert again.digest(data) == value and hashed == []  # remembered: not read again
    data.write_text('["q2", "a2"]\n')
    assert again.digest(data) != value and hashed == [data]  # changed: hashed again
    store.write_text("{damaged")
    assert fingerprint_module.FileDigests(store).digest(data) == real(data)


@pytest.mark.skipif(not BAICHUAN_TOKENIZER.is_file(), reason="needs ../shared/assets/baichuan2/tokenizer.model")
def test_sentencepiece_encodes_the_rebuilt_baichuan2_tokenizer_to_the_same_rows(tmp_path):
    from huatuo.models.loading import load_tokenizer

    folder = tmp_path / "baichuan2"
    folder.mkdir()
    shutil.copyfile(BAICHUAN_TOKENIZER, folder / "tokenizer.model")
    tokenizer = load_tokenizer(str(folder), from_sentencepiece=True)
    assert tokenizer.huatuo_sentencepiece_model == str(folder / "tokenizer.model")
    conversations = [[q, a] for q in QUESTIONS for a in ANSWERS]
    conversations += [
        ["含有</s>和<s>的问题", "答案<unk>结束"],
        ["a\r\nb\t c", "  多个  空格 ，１２３ｍｇ"],
        ["emoji 😀", "龘"],
    ]
    fast = ConversationEncoder(tokenizer, 4096)
    rust = ConversationEncoder(tokenizer, 4096)
    rust._sentencepiece = None
    assert fast._sentencepiece is not None and set(fast._specials) >= {"</s>", "<s>", "<unk>"}
    for batch in (conversations[:-3], conversations):  # without, then with special-token strings in the chunk
        a, b = fast.encode_flat(batch), rust.encode_flat(batch)
        assert (a.input_ids == b.input_ids).all() and (a.labels == b.labels).all() and (a.offsets == b.offsets).all()
    node = {"_target_": "huatuo.models.loading.load_tokenizer", "path": str(folder), "from_sentencepiece": True}
    prepare_tokenizer(node, tmp_path / "cache")
    cached = prepare_tokenizer(node, tmp_path / "cache")
    assert isinstance(cached, CachedTokenizer) and Path(cached.huatuo_sentencepiece_model).is_file()
    again = ConversationEncoder(cached, 4096).encode_flat(conversations)
    assert (again.input_ids == fast.encode_flat(conversations).input_ids).all()
    assert tokenizer_digest(cached) == tokenizer_digest(tokenizer)
