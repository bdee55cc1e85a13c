"""bench/prepare.py compares like with like: its per-sample baseline writes exactly the pipeline's rows, and the
Baichuan2 tokenizer it loads (through huatuo's loader) encodes exactly as sentencepiece does."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import BAICHUAN_TOKENIZER, ROOT


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_prepare", ROOT / "bench" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROWS = [  # (title, question, answer), written for this test
    ("发烧怎么办", "孩子发烧到三十九度，需要马上去医院吗？", "先物理降温并补充水分，精神差或持续高热请及时就医。"),
    ("血压偏高", "体检血压145/95，需要吃药吗？", "建议先复测几次并限盐、运动，持续升高再由医生决定是否用药。"),
    ("胃痛", "饭后胃痛一周了", "少食多餐，避免辛辣，症状不缓解应做胃镜检查。"),
    ("失眠", "最近总是睡不着，怎么调理？", "规律作息，睡前少看手机，长期失眠可到睡眠门诊就诊。"),
    ("咳嗽", "咳嗽两周还没好", "需要查血常规和胸片，排除感染或哮喘。"),
]


@pytest.mark.parametrize("packing", ["best_fit", "greedy"])
def test_the_per_sample_baseline_writes_the_pipelines_rows(tmp_path, tiny_tokenizer, packing):
    bench = load_bench()
    sources = bench.write_mixture(ROWS, tmp_path / "data", 300, seed=3)
    assert [name for name in sources] == [m[0] for m in bench.MIXTURE]
    bench.baseline_prepare(sources, tiny_tokenizer, 256, 0, packing, tmp_path / "baseline")
    prepared = bench.pipeline_prepare(sources, tiny_tokenizer, 256, 0, packing, tmp_path / "cache")
    assert prepared.stats["packing"]["documents"] == 300 + 2 * prepared.stats["sources"]["sft"]["samples"]  # 3 epochs
    assert bench.same_rows(prepared.dataset_dir, tmp_path / "baseline")


@pytest.mark.skipif(not BAICHUAN_TOKENIZER.is_file(), reason="needs ../shared/assets/baichuan2/tokenizer.model")
def test_the_benchmarked_baichuan2_tokenizer_encodes_like_sentencepiece():
    bench = load_bench()
    tokenizer = bench.load_bench_tokenizer(str(BAICHUAN_TOKENIZER))
    texts = [t for title, ask, answer in ROWS for t in ("<问>：" + ask, answer, "\n<问>：" + title)]
    texts += [
        "\n<答>：",
        "<p>表格</p><br/><reserved_3>",
        "１２３ｍｇ，每日3次。",
        "  两个  空格 ",
        "emoji 😀",
        "a\tb\n\nc",
    ]
    assert bench.check_against_sentencepiece(tokenizer, str(BAICHUAN_TOKENIZER), texts) == 0
    assert tokenizer.encode("\n<答>：", add_special_tokens=False) == [5, 92655, 93140, 92574, 70]
    assert tokenizer.encode("<问>：", add_special_tokens=False) == [92655, 92614, 92574, 70]
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)) == (0, 1, 2, 125696)
