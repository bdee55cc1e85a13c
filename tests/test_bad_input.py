"""The bad-input catalog (docs/data.md): every case gives one clear error naming where (file:line or config key),
the bad value and the fix, or, for bad records under ``on_error: skip``, a counted skip listed in stats.json.
"""

from __future__ import annotations

import json

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from huatuo.core.errors import HuatuoError
from huatuo.data.prepare import prepare
from huatuo.data.settings import PackingSettings, sources_from_config
from huatuo.data.sources import LoadReport, SourceSpec, iter_conversations
from tests.helpers import compose_config

GOOD = ["胸口痛怎么办？", "请尽快就医，先做心电图。"]


def lines(path, *records: str | bytes) -> str:
    """Write JSONL lines verbatim (str or raw bytes) and return the path."""
    path.write_bytes(b"".join((r if isinstance(r, bytes) else r.encode()) + b"\n" for r in records))
    return str(path)


def dump(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def read_all(spec: SourceSpec, on_error: str = "raise") -> LoadReport:
    report = LoadReport()
    list(iter_conversations(spec, on_error, report))
    return report


def error_of(call, kind: type[HuatuoError] = HuatuoError) -> str:
    """The message of the HuatuoError (of ``kind``) that ``call`` raises: bad files are DataError, bad settings
    ConfigError."""
    with pytest.raises(kind) as caught:
        call()
    return str(caught.value)


# Bad records: (case, record line written at line 2 after a good line, reason counted under on_error=skip,
# text that must appear in the error besides the location: the detail, the value or the fix)
RECORD_CASES = [
    ("malformed JSONL line", '["头痛", "休息"', "malformed JSON", "fix the line"),
    ("wrong encoding (GB18030 bytes)", '["头痛", "休息"]'.encode("gb18030"), "invalid UTF-8", "iconv -f GB18030"),
    ("empty turn", dump(["头痛", "   "]), "empty turn", "turn 1 is empty"),
    ("non-string turn", dump(["头痛", 42]), "non-string turn", "turn 1 is int"),
    ("conversation ending on a question", dump(["头痛", "休息", "还疼"]), "ends on a question", "add the answer"),
    ("empty conversation", dump([]), "empty conversation", "remove the record"),
    ("JSON scalar instead of a record", "42", "unknown record layout", "got int"),
    (
        "roles out of order (ShareGPT)",
        dump({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}),
        "roles out of order",
        "from='gpt'",
    ),
    (
        "system message (OpenAI)",
        dump({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}),
        "system message",
        "fold it into the first question",
    ),
    (
        "non-text content part (OpenAI)",
        dump(
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}, {"role": "assistant", "content": "a"}]}
        ),
        "non-text content",
        "keep only text parts",
    ),
    ("record without conversation keys", dump({"q": "头痛", "a": "休息"}), "unknown record layout", "['a', 'q']"),
]


@pytest.mark.parametrize(("case", "record", "reason", "detail"), RECORD_CASES, ids=[c[0] for c in RECORD_CASES])
def test_bad_record_raises_with_file_line_value_and_fix(tmp_path, case, record, reason, detail):
    path = lines(tmp_path / "data.jsonl", dump(GOOD), record)
    message = error_of(lambda: read_all(SourceSpec(name="s", paths=[path])))
    assert f"{path}:2: {reason}: " in message
    assert detail in message
    assert "data.on_error=skip" in message  # the other fix
    if reason != "invalid UTF-8":  # (that one shows the bad bytes instead)
        assert "value: " in message  # the offending record or line, shortened


def test_bad_records_under_skip_are_counted_with_their_location_in_stats_json(tmp_path, tiny_tokenizer):
    sources = {}
    for i, (_, record, _, _) in enumerate(RECORD_CASES):
        sources[f"s{i}"] = {"paths": [lines(tmp_path / f"s{i}.jsonl", dump(GOOD), record, dump(GOOD))]}
    specs = sources_from_config(sources)
    settings = PackingSettings(max_len=128, on_error="skip")
    stats = prepare(specs, tiny_tokenizer, settings, tmp_path / "cache").stats
    saved = json.loads((tmp_path / "cache" / stats["fingerprint"] / "stats.json").read_text())
    for i, (_, _, reason, _) in enumerate(RECORD_CASES):
        entry = saved["sources"][f"s{i}"]
        assert entry["skipped"] == {reason: 1}
        assert entry["skipped_at"] == {reason: [f"{sources[f's{i}']['paths'][0]}:2"]}
        assert entry["samples"] == 2  # the good lines around it are kept


def test_more_bad_records_than_listed_are_summarised(tmp_path):
    path = lines(tmp_path / "data.jsonl", *([dump(["q"])] * 25))
    message = error_of(lambda: read_all(SourceSpec(name="s", paths=[path])))
    assert "has 25 bad record(s)" in message and "... and 5 more" in message
    assert f"{path}:20: ends on a question" in message


def test_malformed_json_document_names_the_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"sft": [\n  ["头痛", "休息"],\n  ["咳嗽" "多喝水"]\n]}', encoding="utf-8")
    message = error_of(lambda: read_all(SourceSpec(name="sft", paths=[str(path)])))
    assert f"{path}:3: malformed JSON" in message and "use a .jsonl suffix" in message


def test_wrong_encoding_of_a_json_document_names_the_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes('{"sft": [\n["头痛", "休息"]\n]}'.encode("gb18030"))
    message = error_of(lambda: read_all(SourceSpec(name="sft", paths=[str(path)])))
    assert f"{path}:2: not valid UTF-8" in message and "iconv -f GB18030 -t UTF-8" in message


def test_empty_json_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("  \n")
    assert f"{path}: the file is empty" in error_of(lambda: read_all(SourceSpec(name="s", paths=[str(path)])))


def test_top_level_json_scalar(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("42")
    message = error_of(lambda: read_all(SourceSpec(name="s", paths=[str(path)])))
    assert f"{path}: top-level JSON int is not a known layout" in message and "{source: [[turns]]}" in message


def test_huatuo_json_key_not_found_suggests_the_closest(tmp_path):
    path = tmp_path / "mix.json"
    path.write_text(dump({"sft": [GOOD], "web_cn": [GOOD]}), encoding="utf-8")
    spec = SourceSpec(name="s", paths=[str(path)], format="huatuo_json", key="sfft")
    message = error_of(lambda: read_all(spec))
    assert "key 'sfft' (data.sources.s.key) not found (did you mean 'sft'?)" in message
    ambiguous = SourceSpec(name="other", paths=[str(path)], format="huatuo_json")
    assert "set data.sources.other.key to one of them" in error_of(lambda: read_all(ambiguous))


def test_empty_source_names_its_files(tmp_path):
    path = lines(tmp_path / "empty.jsonl")
    message = error_of(lambda: read_all(SourceSpec(name="books_cn", paths=[path])))
    assert f"source 'books_cn' ({path}) has no records" in message and "remove the source" in message


def test_source_whose_every_record_was_skipped(tmp_path):
    path = lines(tmp_path / "bad.jsonl", dump(["q"]), dump(["q"]))
    message = error_of(lambda: read_all(SourceSpec(name="s", paths=[path]), on_error="skip"))
    assert "every record was skipped (ends on a question: 2)" in message and f"first at {path}:1" in message


def test_parquet_without_conversation_columns_and_unreadable_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["头痛"]}), path)
    message = error_of(lambda: read_all(SourceSpec(name="s", paths=[str(path)])))
    assert f"{path}: parquet columns ['text'] hold no conversations" in message and "'question' and 'answer'" in message
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    assert f"{broken}: not a readable parquet file" in error_of(
        lambda: read_all(SourceSpec(name="s", paths=[str(broken)]))
    )


# ----------------------------------------------------------------------------------------------- configuration
def config_error(sources: dict) -> str:
    return error_of(lambda: sources_from_config(sources))


def test_unknown_format_suggests_the_closest(tmp_path):
    path = lines(tmp_path / "a.jsonl", dump(GOOD))
    message = config_error({"sft": {"paths": [path], "format": "sharegtp"}})
    assert "data.sources.sft.format='sharegtp' is not a known format (did you mean 'sharegpt'?)" in message
    assert "use one of auto, huatuo_json, jsonl, sharegpt" in message


def test_missing_file_folder_and_empty_glob(tmp_path):
    (tmp_path / "folder").mkdir()
    message = config_error(
        {
            "a": {"paths": [str(tmp_path / "nope.jsonl")]},
            "b": {"paths": [str(tmp_path / "folder")]},
            "c": {"paths": [str(tmp_path / "*.parquet")]},
        }
    )
    assert f"data.sources.a.paths: file '{tmp_path / 'nope.jsonl'}' does not exist; fix the path" in message
    assert f"data.sources.b.paths: '{tmp_path / 'folder'}' is a folder; list its files or use a glob" in message
    assert f"data.sources.c.paths: the glob '{tmp_path / '*.parquet'}' matches no file" in message


def test_required_paths_left_unset_in_the_papers_mixture(tmp_path):
    cfg = compose_config("train", ["data=huatuo2", f"paths.cache_dir={tmp_path}"])
    message = config_error(OmegaConf.to_container(cfg.data, resolve=True)["sources"])
    assert "data.sources.web_cn.paths is required (???)" in message
    assert "data.sources.web_cn.paths=[/data/web_cn.jsonl]" in message
    assert message.count("is required") == 9  # every problem at once


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("priority", 0, "data.sources.sft.priority=0 must be a number > 0"),
        ("priority", -2, "data.sources.sft.priority=-2 must be a number > 0"),
        ("priority", "high", "data.sources.sft.priority='high' must be a number > 0"),
        ("epochs", -1, "data.sources.sft.epochs=-1 must be a number >= 0"),
    ],
)
def test_priority_not_positive_and_negative_epochs(tmp_path, key, value, expected):
    path = lines(tmp_path / "a.jsonl", dump(GOOD))
    assert expected in config_error({"sft": {"paths": [path], key: value}})


def test_unknown_key_in_a_source_suggests_the_closest(tmp_path):
    path = lines(tmp_path / "a.jsonl", dump(GOOD))
    message = config_error({"sft": {"paths": [path], "priorty": 3}})
    assert "data.sources.sft has unknown key(s) ['priorty'] (did you mean 'priority'?)" in message


def test_unknown_source_name_in_an_override(tmp_path):
    # Without "+", Hydra refuses the key and says how to add one; with "+", the new source has no paths and the
    # error says which existing source was probably meant.
    with pytest.raises(ConfigCompositionException, match="sftt"):
        compose_config("train", ["data.sources.sftt.priority=3"])
    cfg = compose_config("train", ["+data.sources.sftt.priority=3", f"paths.cache_dir={tmp_path}"])
    message = config_error(OmegaConf.to_container(cfg.data, resolve=True)["sources"])
    assert "data.sources.sftt has no paths: 'sftt' is not a source of this mixture (did you mean 'sft'?)" in message


def test_hub_source_without_a_name():
    assert "data.sources.s.hf_name is not set" in config_error({"s": {"format": "hf"}})


def test_every_source_with_zero_epochs_leaves_an_empty_pool(tmp_path, tiny_tokenizer):
    specs = sources_from_config({"s": {"paths": [lines(tmp_path / "a.jsonl", dump(GOOD))], "epochs": 0}})
    message = error_of(lambda: prepare(specs, tiny_tokenizer, PackingSettings(max_len=64), tmp_path / "cache"))
    assert "the epoch-expanded pool is empty" in message and "epochs > 0" in message


def test_max_len_too_small_for_the_template(tmp_path, tiny_tokenizer):
    specs = sources_from_config({"s": {"paths": [lines(tmp_path / "a.jsonl", dump(GOOD))]}})
    message = error_of(lambda: prepare(specs, tiny_tokenizer, PackingSettings(max_len=8), tmp_path / "cache"))
    assert "max_len=8 cannot hold even a one-token exchange" in message and "raise data.max_len" in message


def test_bad_packing_settings_are_listed_together(tmp_path, tiny_tokenizer):
    specs = sources_from_config({"s": {"paths": [lines(tmp_path / "a.jsonl", dump(GOOD))]}})
    settings = PackingSettings(max_len=0, packing="bestfit", open_rows=0, overlong="cut", on_error="ignore")
    message = error_of(lambda: prepare(specs, tiny_tokenizer, settings, tmp_path / "cache"))
    assert "data.max_len=0 must be a positive integer" in message
    assert "data.packing='bestfit' (did you mean 'best_fit'?)" in message
    assert "data.open_rows=0 must be an integer >= 1" in message
    assert "data.overlong='cut': use truncate" in message and "data.on_error='ignore': use raise or skip" in message


def test_overlong_samples_are_truncated_or_dropped_and_counted(tmp_path, tiny_tokenizer):
    long = ["头痛" * 5, "多休息。" * 60]
    path = lines(tmp_path / "a.jsonl", dump(GOOD), dump(long), dump(GOOD))
    specs = sources_from_config({"s": {"paths": [path]}})
    cut = prepare(specs, tiny_tokenizer, PackingSettings(max_len=64), tmp_path / "c1").stats["sources"]["s"]
    assert (cut["samples"], cut["truncated"], cut["truncated_at"], cut["skipped"]) == (3, 1, [f"{path}:2"], {})
    drop = prepare(specs, tiny_tokenizer, PackingSettings(max_len=64, overlong="drop"), tmp_path / "c2")
    entry = drop.stats["sources"]["s"]
    assert (entry["samples"], entry["truncated"]) == (2, 1)
    assert entry["skipped"] == {"longer than max_len=64": 1}
    assert entry["skipped_at"] == {"longer than max_len=64": [f"{path}:2"]}


def test_tokenizer_without_an_end_of_sequence_token(tmp_path, tiny_tokenizer):
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.eos_token = None
    specs = sources_from_config({"s": {"paths": [lines(tmp_path / "a.jsonl", dump(GOOD))]}})
    message = error_of(lambda: prepare(specs, tokenizer, PackingSettings(max_len=64), tmp_path / "cache"))
    assert "the tokenizer has no eos_token: set backbone.tokenizer.eos_token" in message
