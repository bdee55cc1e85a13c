"""Exam decontamination: the n-gram index against a plain reference implementation, planted questions found with
their spans and nothing else flagged on the demo data, documents dropped in prepare (counted, fingerprinted), and
the clean-subset accuracy of evaluate."""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import pytest

import huatuo
from huatuo.core.errors import ConfigError, DataError
from huatuo.data.contamination import NgramIndex, cut_units, normalize
from huatuo.data.fingerprint import fingerprint
from huatuo.data.prepare import run as prepare_run
from huatuo.data.settings import settings_from_config, sources_from_config
from huatuo.evaluation.contamination import (
    HITS,
    REPORT,
    build_exam_index,
    data_exclusion,
    data_exclusion_problems,
    entry_problems,
    flagged_questions,
    load_suites,
    question_texts,
    scan_sources,
)
from huatuo.evaluation.exam_files import load_exam
from tests.helpers import compose_config

EXAM = huatuo.asset_path("demo/exam_demo.json")
DEMO = huatuo.asset_path("demo/huatuo2_demo.json")


def reference_units(text: str) -> list[str]:
    """Units the slow, obvious way: normalize, then Han/kana characters alone and other letter/digit runs together."""
    units, word = [], ""
    for char in normalize(text):
        kind = unicodedata.category(char)[0]
        cp = ord(char)
        han = 0x3040 <= cp <= 0x30FF or 0x3400 <= cp <= 0x4DBF or 0x4E00 <= cp <= 0x9FFF or 0xF900 <= cp <= 0xFAFF
        if kind in "LN" and not han:
            word += char
            continue
        if word:
            units.append(word)
            word = ""
        if kind in "LN":
            units.append(char)
    return units + ([word] if word else [])


def reference_pairs(references: list[list[str]], documents: list[str], n: int) -> dict[tuple[int, int], int]:
    """(document, reference) -> longest shared run of units, by brute force."""
    grams = {}
    for r, texts in enumerate(references):
        for text in texts:
            units = reference_units(text)
            for i in range(len(units) - n + 1):
                grams.setdefault(tuple(units[i : i + n]), set()).add(r)
    out: dict[tuple[int, int], int] = {}
    for d, doc in enumerate(documents):
        units = reference_units(doc)
        hits: dict[int, list[int]] = {}
        for i in range(len(units) - n + 1):
            for r in grams.get(tuple(units[i : i + n]), ()):
                hits.setdefault(r, []).append(i)
        for r in hits:  # the longest run of units the document shares with one of the reference's texts
            out[(d, r)] = max(longest_common_run(units, reference_units(text)) for text in references[r])
    return out


def longest_common_run(a: list[str], b: list[str]) -> int:
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def test_normalization_reads_width_case_punctuation_and_accents_alike():
    units = cut_units(["维生素Ｂ６，  Heart-rate 65次/分。"])
    assert units.strings(0, len(units.ids)) == reference_units("维生素b6 heart rate 65次分")
    assert reference_units("维生素Ｂ６，  Heart-rate") == ["维", "生", "素", "b6", "heart", "rate"]
    assert normalize("Ａ．Café …") == "a.cafe ."
    same = NgramIndex.build([["肝素过量引起自发性出血时，应选用的特效解救药是"]], n=10)
    found = same.scan(["肝 素 过 量 引 起 自 发 性 出 血 时 应 选 用 的 特 效 解 救 药 是"])
    assert len(found) == 1 and found[0].units == 22


def test_the_index_finds_exactly_what_brute_force_finds():
    rng = random.Random(7)
    # ﬁ and ㎎ expand to several code points when normalized: the slower path, with its own offsets
    alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + 40)] + ["ab", "cd", " ", "，", "Ｅ", "x1", "。", "ﬁ", "㎎"]
    references = [["".join(rng.choices(alphabet, k=rng.randint(5, 40))) for _ in range(2)] for _ in range(30)]
    documents = []
    for _ in range(300):
        doc = "".join(rng.choices(alphabet, k=rng.randint(0, 120)))
        if rng.random() < 0.3:  # a piece of a reference, cut anywhere
            text = rng.choice(rng.choice(references))
            a = rng.randrange(len(text))
            doc = doc[: len(doc) // 2] + text[a : a + rng.randint(3, 40)] + doc[len(doc) // 2 :]
        documents.append(doc)
    documents.append("")  # an empty last document
    for n in (3, 5, 8):
        index = NgramIndex.build(references, n)
        found = {(o.document, o.reference): o.units for o in index.scan(documents)}
        assert found == reference_pairs(references, documents, n), n
        chunked = {}
        for position, (_, overlaps) in enumerate(index.stream(documents, str, chunk=7)):
            chunked.update({(position, o.reference): o.units for o in overlaps})
        assert chunked == found  # chunk boundaries change nothing


def test_the_longest_span_is_one_the_question_holds_not_a_splice_of_two_places():
    # windows 甲乙丙, 乙丙丁 and 丙丁戊 each match the question, but at two places: 甲乙丙丁 and 乙丙丁戊
    [found] = NgramIndex.build([["甲乙丙丁X乙丙丁戊"]], n=3).scan(["甲乙丙丁戊"])
    assert (found.units, found.span) == (4, "甲乙丙丁")
    [whole] = NgramIndex.build([["甲乙丙丁戊X"]], n=3).scan(["子甲乙丙丁戊"])
    assert (whole.units, whole.span) == (5, "甲乙丙丁戊")


def test_a_reference_shorter_than_n_is_reported_and_never_found():
    index = NgramIndex.build([["短题目"], ["这是一道足够长的考试题目的题干"]], n=8)
    assert index.too_short == [0]
    assert [o.reference for o in index.scan(["短题目", "这是一道足够长的考试题目的题干"])] == [1]


def planted_corpus(tmp_path: Path) -> tuple[Path, dict[int, str]]:
    """A JSONL source: the demo SFT dialogues, with three exam questions copied into three of them."""
    exam = json.loads(Path(EXAM).read_text(encoding="utf-8"))
    demo = json.loads(Path(DEMO).read_text(encoding="utf-8"))["sft"]
    plants = {4: exam[1], 10: exam[17], 20: exam[40]}
    path = tmp_path / "held_out.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for i, (question, answer, *rest) in enumerate(demo):
            if i in plants:
                q = plants[i]
                options = "　".join(f"{k}．{v}" for k, v in q["option"].items())  # full-width, as in exam dumps
                answer = f"{answer}\n附一道练习题：{q['question']}（ ）{options}"
            out.write(json.dumps([question, answer, *rest], ensure_ascii=False) + "\n")
    return path, {i + 1: f"demo/{q['id']}" for i, q in plants.items()}


def test_planted_questions_are_found_with_their_spans_and_nothing_else_in_the_demo_data(tmp_path):
    corpus, planted = planted_corpus(tmp_path)
    specs = sources_from_config(
        {
            **compose_config("train", [f"paths.run_dir={tmp_path}"]).data.sources,
            "held_out": {"paths": [str(corpus)], "format": "jsonl"},
        }
    )
    exams = build_exam_index(load_suites(["demo"]))
    result = scan_sources(specs, exams, tmp_path / "out", progress=False)
    hits = [json.loads(line) for line in (tmp_path / "out" / HITS).read_text(encoding="utf-8").splitlines()]
    assert {(h["source"], int(h["document"].rsplit(":", 1)[1]), h["question"]) for h in hits} == {
        ("held_out", line, uid) for line, uid in planted.items()
    }
    questions = {q.uid: q for q in load_exam(EXAM, dataset="demo").questions}
    for hit in hits:
        question = questions[hit["question"]]
        assert normalize(question.question).replace(",", "") in hit["span"].replace(",", "")  # the whole stem
        assert hit["span_units"] >= len(cut_units([question.question]).ids)
        assert hit["exam_source"] == question.source
    demo = result["suites"]["demo"]
    assert demo["overlapping"] == 3 and demo["share"] == pytest.approx(3 / 48)
    assert demo["by_source"]["held_out"]["questions"] == 3
    assert all(v["questions"] == 0 for k, v in demo["by_source"].items() if k != "held_out")
    assert sorted(demo["contaminated"]) == sorted(planted.values())
    assert result["sources"]["held_out"]["overlapping_documents"] == 3
    assert result["sources"]["sft"]["documents"] == 36
    for name in ("contamination.json", "contamination.md", "contamination.png"):
        assert (tmp_path / "out" / name).stat().st_size > 200
    assert flagged_questions(tmp_path / "out" / REPORT, "demo") == set(planted.values())
    assert flagged_questions(tmp_path / "out" / HITS, "demo") == set(planted.values())


def test_each_question_is_indexed_with_and_without_its_option_letters():
    question = load_exam(EXAM).questions[1]
    lettered, bare = question_texts(question)
    assert lettered.startswith(question.question) and "\nA. 维生素K\nB. 氨甲环酸" in lettered
    assert bare.endswith("维生素K\n氨甲环酸\n鱼精蛋白\n酚磺乙胺\n垂体后叶素")
    index = build_exam_index({"demo": load_exam(EXAM)}).index
    found = index.scan(["维生素K、氨甲环酸、鱼精蛋白、酚磺乙胺、垂体后叶素"])  # the options alone, listed
    assert [(o.reference, o.units, o.span) for o in found] == [
        (1, 21, "维生素k、氨甲环酸、鱼精蛋白、酚磺乙胺、垂体后叶素")
    ]


def test_prepare_drops_the_planted_documents_counts_them_and_keys_the_cache(tmp_path):
    corpus, planted = planted_corpus(tmp_path)
    base = [
        f"paths.run_dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.max_len=256",
        f"data.sources.sft.paths=[{corpus}]",
        "data.sources.sft.format=jsonl",
    ]
    plain = prepare_run(cfg := compose_config("prepare", base))
    cfg = compose_config("prepare", [*base, "data.decontaminate=[demo]"])
    assert data_exclusion_problems(cfg) == []
    index = data_exclusion(cfg)
    cleaned = prepare_run(cfg, exclude=index)
    sft = cleaned.stats["sources"]["sft"]
    assert sft["skipped"] == {"decontaminated": 3}
    assert sft["skipped_at"]["decontaminated"] == [f"{corpus}:{line}" for line in sorted(planted)]
    assert sft["samples"] == plain.stats["sources"]["sft"]["samples"] - 3
    assert cleaned.stats["decontamination"]["suites"] == {"demo": 48} and cleaned.fingerprint != plain.fingerprint
    # the cache key: unchanged without decontamination, different for another n, reused for the same index
    data = compose_config("prepare", base).data
    specs, settings = sources_from_config(data.sources), settings_from_config(data)
    tokenizer = __import__("hydra.utils", fromlist=["instantiate"]).instantiate(cfg.backbone.tokenizer)
    assert fingerprint(specs, tokenizer, settings) == fingerprint(specs, tokenizer, settings, None) == plain.fingerprint
    other = build_exam_index(load_suites(["demo"]), n=20).index
    assert fingerprint(specs, tokenizer, settings, other) != fingerprint(specs, tokenizer, settings, index)
    assert prepare_run(cfg, exclude=data_exclusion(cfg)).reused


def test_a_source_that_is_all_exam_is_an_error_not_an_empty_source():
    index = NgramIndex.build([["这是一道足够长的考试题目的题干内容"]], n=8, meta={"label": "demo"})
    docs = [("f.jsonl:1", ["这是一道足够长的考试题目的题干内容", "答"])]
    with pytest.raises(DataError, match="every one of the 1 documents read"):
        list(index.drop_overlapping(docs, lambda *_: None))


def test_entry_problems_name_every_bad_entry(tmp_path):
    problems = entry_problems(["demoo", str(tmp_path / "nope.json"), 3], 2, "suites", "n")
    assert "suites: 'demoo' is neither a suite in conf/eval/ (did you mean 'demo'?)" in problems[0]
    assert "nope.json' does not exist" in problems[1] and "3 is not a suite name" in problems[2]
    assert problems[3].startswith("n=2 must be an integer >= 4")
    assert entry_problems("demo", 13, "suites", "n")[0].startswith("suites='demo' must be a list")
    with pytest.raises(ConfigError, match="judged comparison"):
        load_suites(["judge_inst"])


def test_evaluate_reports_the_clean_subset_beside_the_full_suite(tmp_path):
    from huatuo.evaluation.run import evaluate

    flagged = ["demo/demo-002", "demo/demo-018", "demo/demo-041"]
    report = tmp_path / "contamination.json"
    report.write_text(json.dumps({"suites": {"demo": {"contaminated": flagged}}}))
    cfg = compose_config(
        "evaluate", [f"paths.run_dir={tmp_path / 'run'}", "progress=false", f"contamination={report}", "eval.limit=20"]
    )
    results = evaluate(cfg)
    clean, full = results["clean"], results["summary"]
    assert clean["n"] == 18 and clean["flagged"] == 2 and clean["flagged_elsewhere"] == 1  # demo-041 is past limit
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert {r["uid"] for r in rows if r["contaminated"]} == set(flagged[:2])
    assert clean["correct"] == sum(r["correct"] for r in rows if not r["contaminated"])
    assert full["n"] == 20
    assert "**clean subset:" in (tmp_path / "run" / "results.md").read_text()
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["clean"]["accuracy"] == pytest.approx(clean["accuracy"])
