"""Released folders (Baichuan2/HuatuoGPT2-7B/13B, HuatuoGPT2-34B in Yi layout) load without remote code.

Each test writes a tiny random checkpoint in the original on-disk layout (remote-code config.json and
tokenizer_config.json, the original weight names and file formats, .py files that must never run) and loads it
through the public loaders: ``huatuo.models.loading.load_model/load_tokenizer``, ``huatuo.inference.load_for_inference``
and the backbone configs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import huatuo
from huatuo.core.errors import ModelLoadError
from huatuo.inference.loading import load_for_inference
from huatuo.models.baichuan.config import BaichuanConfig
from huatuo.models.baichuan.modeling import BaichuanForCausalLM
from huatuo.models.loading import load_model, load_tokenizer
from tests.helpers import compose_config

# Remote code shipped with the releases; executing any of it fails the test.
POISON = 'raise RuntimeError("remote code from the model folder ran")\n'


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory) -> Path:
    """A small SentencePiece BPE model set up like Baichuan2's: identity normaliser, no dummy prefix, byte fallback."""
    return _train_sentencepiece(
        tmp_path_factory.mktemp("spm"),
        symbols=("\n", "：", "<问>", "<答>"),
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",  # Baichuan2 normalizes nothing (no NFKC charsmap)
    )


def _strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return []


def _write_tokenizer(folder: Path, model_file: Path, remote_class: str, module: str) -> None:
    (folder / "tokenizer.model").write_bytes(model_file.read_bytes())
    token = {"__type": "AddedToken", "lstrip": False, "normalized": True, "rstrip": False, "single_word": True}
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "auto_map": {"AutoTokenizer": [f"{module}.{remote_class}", None]},
        "bos_token": {**token, "content": "<s>"},
        "eos_token": {**token, "content": "</s>"},
        "unk_token": {**token, "content": "<unk>"},
        "pad_token": {**token, "content": "<unk>"},
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "sp_model_kwargs": {},
        "tokenizer_class": remote_class,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / f"{module}.py").write_text(POISON)


def baichuan_release(folder: Path, model_file: Path, position_embedding: str, sharded: bool) -> BaichuanForCausalLM:
    """A tiny HuatuoGPT2-7B (RoPE, one pytorch_model.bin) or -13B (ALiBi, sharded safetensors) folder."""
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()
    torch.manual_seed(0)
    model = BaichuanForCausalLM(
        BaichuanConfig(
            vocab_size=vocab,
            hidden_size=48,
            intermediate_size=112,
            num_hidden_layers=2,
            num_attention_heads=6,
            position_embedding=position_embedding,
        )
    ).eval()
    folder.mkdir(parents=True)
    if sharded:
        model.save_pretrained(folder, max_shard_size="60KB")
        assert (folder / "model.safetensors.index.json").is_file()
    else:
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    config = {  # the released config.json, as written by the original code
        "_from_model_config": True,
        "architectures": ["BaichuanForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_baichuan.BaichuanConfig",
            "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
        },
        "tokenizer_class": "BaichuanTokenizer",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": 48,
        "initializer_range": 0.02,
        "intermediate_size": 112,
        "model_max_length": 4096,
        "model_type": "baichuan",
        "num_attention_heads": 6,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.29.2",
        "use_cache": True,
        "vocab_size": vocab,
        "z_loss_weight": 0,
    }
    if position_embedding == "rope":
        config["max_position_embeddings"] = 4096  # only the 7B config has it: the one sign of RoPE
    else:
        config["gradient_checkpointing"] = False
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
    )
    for module in ("configuration_baichuan", "modeling_baichuan", "generation_utils"):
        (folder / f"{module}.py").write_text(POISON)
    _write_tokenizer(folder, model_file, "BaichuanTokenizer", "tokenization_baichuan")
    return model


def yi_release(folder: Path, model_file: Path) -> LlamaForCausalLM:
    """A tiny HuatuoGPT2-34B folder: YiForCausalLM config, ln1/ln2 names, sharded .bin files, YiTokenizer."""
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()
    dims = dict(
        vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=8
    ) | dict(num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=4096)
    torch.manual_seed(0)
    reference = LlamaForCausalLM(
        LlamaConfig(**dims, rope_parameters={"rope_type": "default", "rope_theta": 5e6}, tie_word_embeddings=False)
    ).eval()
    state = {
        name.replace("input_layernorm", "ln1").replace("post_attention_layernorm", "ln2"): tensor
        for name, tensor in reference.state_dict().items()
    }
    folder.mkdir(parents=True)
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2]}
    shards["pytorch_model-00002-of-00002.bin"] = names[len(names) // 2 :]
    weight_map = {}
    for filename, keys in shards.items():
        torch.save({k: state[k] for k in keys}, folder / filename)
        weight_map |= dict.fromkeys(keys, filename)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    config = {
        "architectures": ["YiForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_yi.YiConfig",
            "AutoModel": "modeling_yi.YiModel",
            "AutoModelForCausalLM": "modeling_yi.YiForCausalLM",
        },
        "model_type": "Yi",
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "rope_theta": 5000000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        **dims,
    }
    (folder / "config.json").write_text(json.dumps(config))
    for module in ("configuration_yi", "modeling_yi"):
        (folder / f"{module}.py").write_text(POISON)
    _write_tokenizer(folder, model_file, "YiTokenizer", "tokenization_yi")
    return reference


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


TEXT = "<问>：头痛发热三天，需要做什么检查？\n<答>："


@pytest.mark.parametrize(("position_embedding", "sharded"), [("rope", False), ("alibi", True)])
def test_huatuogpt2_7b_and_13b_folders_load_as_released(position_embedding, sharded, sentencepiece_model, tmp_path):
    import sentencepiece as spm

    folder = tmp_path / f"HuatuoGPT2-{position_embedding}"
    source = baichuan_release(folder, sentencepiece_model, position_embedding, sharded)
    sp = spm.SentencePieceProcessor(model_file=str(sentencepiece_model))

    tokenizer = load_tokenizer(str(folder))
    ids = tokenizer(TEXT, add_special_tokens=False, return_tensors="pt").input_ids
    assert ids[0].tolist() == sp.encode(TEXT)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)

    model = load_model(path=str(folder), dtype="float32")
    assert type(model) is BaichuanForCausalLM
    assert model.config.position_embedding == position_embedding
    torch.testing.assert_close(logits(model, ids), logits(source, ids))

    loaded = load_for_inference(str(folder), device="cpu", dtype="float32")
    torch.testing.assert_close(logits(loaded.model, ids), logits(source, ids))
    prompt = loaded.encode(loaded.render([{"role": "user", "content": "头痛发热三天，需要做什么检查？"}]))
    assert prompt[0].tolist() == sp.encode(TEXT)  # no chat template: the HuatuoGPT-II format
    generated = loaded.model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape[1] == prompt.shape[1] + 4


def test_huatuogpt2_34b_yi_folder_loads_as_llama_and_saves_plain_llama(sentencepiece_model, tmp_path):
    folder = tmp_path / "HuatuoGPT2-34B"
    reference = yi_release(folder, sentencepiece_model)
    tokenizer = load_tokenizer(str(folder))
    ids = tokenizer(TEXT, add_special_tokens=False, return_tensors="pt").input_ids

    model = load_model(path=str(folder), dtype="float32")
    assert type(model) is LlamaForCausalLM
    assert model.config.rope_parameters["rope_theta"] == 5e6 and model.config.num_key_value_heads == 2
    torch.testing.assert_close(logits(model, ids), logits(reference, ids))
    loaded = load_for_inference(str(folder), device="cpu", dtype="float32")
    torch.testing.assert_close(logits(loaded.model, ids), logits(reference, ids))

    export = tmp_path / "export"
    model.save_pretrained(export)
    names = set(load_file(export / "model.safetensors"))
    assert "model.layers.0.input_layernorm.weight" in names and not any(".ln1." in n for n in names)
    assert json.loads((export / "config.json").read_text())["model_type"] == "llama"
    plain = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=False)
    torch.testing.assert_close(logits(plain, ids), logits(reference, ids))


def test_a_missing_tokenizer_model_is_named_in_the_error(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BaichuanTokenizer"}))
    with pytest.raises(ModelLoadError, match="no tokenizer.model"):
        load_tokenizer(str(tmp_path))


@pytest.mark.parametrize(("option", "position_embedding"), [("huatuogpt2_7b", "rope"), ("baichuan2_13b", "alibi")])
def test_backbone_configs_load_a_local_copy_through_path(option, position_embedding, sentencepiece_model, tmp_path):
    folder = tmp_path / option
    source = baichuan_release(folder, sentencepiece_model, position_embedding, sharded=False)
    cfg = compose_config("train", [f"backbone={option}", f"backbone.path={folder}", f"paths.run_dir={tmp_path}"])
    tokenizer = instantiate(cfg.backbone.tokenizer)
    model = instantiate(cfg.backbone.model)()
    assert (
        model.is_activation_checkpointing
        and cfg.backbone.layer_class == "huatuo.models.baichuan.modeling.BaichuanDecoderLayer"
    )
    ids = tokenizer(TEXT, add_special_tokens=False, return_tensors="pt").input_ids
    torch.testing.assert_close(logits(model.eval(), ids), logits(source, ids))


def _train_sentencepiece(
    folder: Path, symbols: tuple[str, ...] = ("\n", "：", "<问>", "<答>", "...", "--", "<p>"), **settings
) -> Path:
    """A small SentencePiece BPE model on the demo texts; by default with multi-character user-defined pieces too.

    Rarer characters (coverage 0.995) go through byte fallback, as in Baichuan2.
    """
    import sentencepiece as spm

    demo = json.loads(Path(huatuo.asset_path("demo/huatuo2_demo.json")).read_text(encoding="utf-8"))
    lines = [text for records in demo.values() for record in records for text in _strings(record)]
    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=2400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=0.995,
        user_defined_symbols=list(symbols),
        minloglevel=2,
        **settings,
    )
    return folder / "tokenizer.model"


def _hard_texts(sp, count: int = 2000) -> list[str]:
    """Every piece alone, then random runs of pieces, spaces, rare and unknown characters (byte fallback)."""
    import random

    pieces = [
        sp.id_to_piece(i).replace("▁", " ")
        for i in range(sp.get_piece_size())
        if not (sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i))
    ]
    extra = ["  ", " ", "\t", "１２", "ｍｇ", "😀", "𠀀", "==", "->", "。。。"]
    rng = random.Random(0)
    runs = ["".join(rng.choice(pieces + extra) for _ in range(rng.randint(1, 12))) for _ in range(count)]
    return pieces + runs


@pytest.mark.parametrize(
    ("settings", "fast"),
    [
        ({"add_dummy_prefix": False, "remove_extra_whitespaces": False, "normalization_rule_name": "identity"}, True),
        ({"add_dummy_prefix": True, "remove_extra_whitespaces": False, "normalization_rule_name": "identity"}, False),
        ({"add_dummy_prefix": False, "remove_extra_whitespaces": True, "normalization_rule_name": "identity"}, False),
    ],
    ids=["baichuan2-like", "dummy-prefix", "trims-spaces"],
)
def test_rebuilt_tokenizers_encode_and_decode_like_sentencepiece(settings, fast, tmp_path):
    import sentencepiece as spm

    from huatuo.models.sentencepiece import read_sentencepiece, sentencepiece_backend

    model_file = _train_sentencepiece(tmp_path, **settings)
    # the fast construction takes the models it covers, and leaves the others to transformers' converter
    assert (sentencepiece_backend(read_sentencepiece(model_file)) is not None) is fast
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    tokenizer = load_tokenizer(str(tmp_path), from_sentencepiece=True)
    demo = json.loads(Path(huatuo.asset_path("demo/huatuo2_demo.json")).read_text(encoding="utf-8"))
    texts = [t for records in demo.values() for record in records for t in _strings(record)] + _hard_texts(sp)
    ours = [e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    mismatches = [(t, a, b) for t, a, b in zip(texts, ours, sp.encode(texts), strict=True) if a != b]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts encode differently, e.g. {mismatches[:2]}"
    if fast:  # identity normaliser: decoding gives the text back exactly
        assert [tokenizer.decode(ids) for ids in ours[:500]] == texts[:500]
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer("<s>a</s>", add_special_tokens=False).input_ids[::2] == [1, 2]  # as the remote classes did
