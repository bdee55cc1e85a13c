"""Every source format reads into the same ``[q1, a1, q2, a2, ...]`` turn lists, in file order."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from huatuo.data.settings import sources_from_config
from huatuo.data.sources import LoadReport, SourceSpec, iter_conversations

DIALOGUES = [
    ["头痛三天了怎么办？", "先测体温，注意休息。"],
    ["咳嗽有痰", "多喝水。", "晚上更厉害", "可以把枕头垫高一些。"],
    ["What is hypertension?", "Blood pressure persistently at or above 140/90 mmHg."],
]


def read(spec: SourceSpec) -> list[list[str]]:
    report = LoadReport()
    turns = [t for _, t in iter_conversations(spec, "raise", report)]
    assert report.records == len(turns) and not report.skipped
    return turns


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def sharegpt(turns: list[str]) -> dict:
    return {"conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]}


def openai(turns: list[str]) -> dict:
    return {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]}


def test_huatuo_json_by_source_name_explicit_key_and_single_key(tmp_path):
    path = tmp_path / "mix.json"
    path.write_text(json.dumps({"sft": DIALOGUES, "web_cn": DIALOGUES[:1]}, ensure_ascii=False), encoding="utf-8")
    assert read(SourceSpec(name="sft", paths=[str(path)], format="huatuo_json")) == DIALOGUES
    assert read(SourceSpec(name="x", paths=[str(path)], format="huatuo_json", key="web_cn")) == DIALOGUES[:1]
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"Meidcal_Web_Corpus_cn": DIALOGUES}, ensure_ascii=False), encoding="utf-8")
    assert read(SourceSpec(name="web_cn", paths=[str(single)])) == DIALOGUES  # auto: the only key


def test_jsonl_of_turn_lists_with_a_byte_order_mark_and_blank_lines(tmp_path):
    path = tmp_path / "turns.jsonl"
    lines = [json.dumps(d, ensure_ascii=False) for d in DIALOGUES]
    path.write_bytes(b"\xef\xbb\xbf" + "\n\n".join(lines).encode() + b"\n\n")
    assert read(SourceSpec(name="s", paths=[str(path)], format="jsonl")) == DIALOGUES
    assert read(SourceSpec(name="s", paths=[str(path)])) == DIALOGUES  # auto from the suffix


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_sharegpt_conversations(tmp_path, suffix):
    records = [sharegpt(d) for d in DIALOGUES]
    path = tmp_path / f"share.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    else:
        write_jsonl(path, records)
    assert read(SourceSpec(name="s", paths=[str(path)], format="sharegpt")) == DIALOGUES
    assert read(SourceSpec(name="s", paths=[str(path)])) == DIALOGUES


def test_openai_messages_with_text_content_parts(tmp_path):
    records = [openai(d) for d in DIALOGUES]
    records[0]["messages"][0]["content"] = [
        {"type": "text", "text": "头痛"},
        {"type": "text", "text": "三天了怎么办？"},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    assert read(SourceSpec(name="s", paths=[path], format="openai")) == DIALOGUES


def test_unify_output_records(tmp_path):
    # `python -m huatuo.unify` writes JSONL with at least id, question and answer; other fields are ignored
    records = [{"id": f"p{i}", "question": d[0], "answer": d[1], "passage_id": i} for i, d in enumerate(DIALOGUES)]
    path = write_jsonl(tmp_path / "unified.jsonl", records)
    assert read(SourceSpec(name="s", paths=[path], format="unify")) == [d[:2] for d in DIALOGUES]


@pytest.mark.parametrize("layout", ["turns", "messages", "conversations", "question_answer"])
def test_parquet_columns(tmp_path, layout):
    if layout == "turns":
        table = pa.table({"turns": DIALOGUES, "id": [1, 2, 3]})
        expected = DIALOGUES
    elif layout == "messages":
        table = pa.Table.from_pylist([openai(d) for d in DIALOGUES])
        expected = DIALOGUES
    elif layout == "conversations":
        table = pa.Table.from_pylist([sharegpt(d) for d in DIALOGUES])
        expected = DIALOGUES
    else:
        table = pa.table({"question": [d[0] for d in DIALOGUES], "answer": [d[1] for d in DIALOGUES]})
        expected = [d[:2] for d in DIALOGUES]
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=2)
    assert read(SourceSpec(name="s", paths=[str(tmp_path / "data.parquet")])) == expected


def test_hub_format_streams_a_dataset_without_the_network(tmp_path, monkeypatch):
    # `format: hf` goes through datasets.load_dataset(streaming=True); a local dataset folder stands in for the hub.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "hub_dataset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [openai(d) for d in DIALOGUES])
    spec = SourceSpec(name="s", format="hf", hf_name=str(folder), hf_split="train")
    assert read(spec) == DIALOGUES


def test_hub_data_files_pick_one_file_of_a_repository(tmp_path, monkeypatch):
    # The released pretraining instructions have a file no config names (books_cn): hf_data_files selects it.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "hub_dataset"
    (folder / "data").mkdir(parents=True)
    released = [{"id": str(i), **sharegpt(d)} for i, d in enumerate(DIALOGUES)]
    write_jsonl(folder / "data" / "books_cn.jsonl", released[:2])
    write_jsonl(folder / "data" / "web_cn.jsonl", released[2:])
    spec = SourceSpec(name="s", format="hf", hf_name=str(folder), hf_data_files="data/books_cn.jsonl")
    assert read(spec) == DIALOGUES[:2]


def test_globs_expand_in_sorted_order_and_files_keep_config_order(tmp_path):
    for i, dialogue in enumerate(DIALOGUES):
        write_jsonl(tmp_path / f"part-{i}.jsonl", [dialogue])
    spec = SourceSpec(name="s", paths=[str(tmp_path / "part-2.jsonl"), str(tmp_path / "part-[01].jsonl")])
    assert read(spec) == [DIALOGUES[2], DIALOGUES[0], DIALOGUES[1]]
    assert not spec.problems("data.sources.s")


def test_locations_name_the_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", DIALOGUES)
    report = LoadReport()
    locations = [where for where, _ in iter_conversations(SourceSpec(name="s", paths=[path]), "raise", report)]
    assert locations == [f"{path}:1", f"{path}:2", f"{path}:3"]


def test_sources_from_config_accepts_a_single_path_string_and_fills_defaults(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", DIALOGUES)
    (spec,) = sources_from_config({"sft": {"paths": path, "priority": 2, "epochs": 3}})
    assert (spec.name, spec.paths, spec.format, spec.priority, spec.epochs) == ("sft", [path], "auto", 2, 3)
