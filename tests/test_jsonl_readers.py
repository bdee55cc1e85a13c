"""Every JSONL reader through the one module: one location per message, torn and blank lines survived, encodings
checked (the unify journal, the row ledger, exam/question/answer files, reply and judgment files)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from huatuo.core.errors import DataError
from huatuo.core.jsonl import BadLine, iter_jsonl, latest_by_key, read_json_records, read_jsonl
from huatuo.data.sources import LoadReport, SourceSpec, iter_conversations
from huatuo.evaluation.answers import read_answers, read_questions
from huatuo.evaluation.exam_files import load_exam, read_answer_file
from huatuo.evaluation.judge import read_judgments
from huatuo.evaluation.serving import read_replies
from huatuo.training.callbacks import RowLedger
from huatuo.unify.journal import drop_records, recover

GB18030_LINE = '["头痛", "休息"]'.encode("gb18030")


def test_a_bad_line_is_located_once_by_every_reader(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'["q", "a"]\n' + GB18030_LINE + b"\n")
    (_, bad), *_ = [(n, v) for n, v in iter_jsonl(path) if isinstance(v, BadLine)]
    assert str(path) not in bad.detail and bad.detail.startswith("not valid UTF-8 (bytes ")
    with pytest.raises(DataError) as caught:
        read_jsonl(path)
    assert (
        str(caught.value).startswith(f"{path}:2: invalid UTF-8: not valid UTF-8")
        and str(caught.value).count(str(path)) == 1
    )
    with pytest.raises(DataError) as caught:
        list(iter_conversations(SourceSpec(name="s", paths=[str(path)], format="jsonl"), "raise", LoadReport()))
    assert f"{path}:2: invalid UTF-8: not valid UTF-8 (bytes" in str(caught.value)
    assert str(caught.value).count(f"{path}:2") == 1


def results(path, *lines: bytes):
    path.write_bytes(b"".join(lines))
    return path


def test_recover_keeps_a_whole_last_record_skips_blank_lines_and_cuts_a_torn_one(tmp_path):
    path = results(tmp_path / "out.jsonl", b'{"id": "a"}\n\n{"id": "b", "reason": "too_short"}')
    assert recover(path) == {"a": "accepted", "b": "too_short"}  # the last line was whole: not redone
    assert path.read_bytes().endswith(b'"too_short"}\n')
    results(path, b'{"id": "a"}\n{"id": "b", "rea')
    assert recover(path) == {"a": "accepted"} and path.read_bytes() == b'{"id": "a"}\n'


@pytest.mark.parametrize(
    ("line", "says"),
    [(b"[1, 2\n", "malformed JSON"), (b'{"text": "no id"}\n', "not a unify record"), (GB18030_LINE + b"\n", "UTF-8")],
    ids=["malformed", "no id", "not UTF-8"],
)
def test_a_damaged_line_of_a_results_file_is_an_error_naming_it_and_the_fix(tmp_path, line, says):
    path = results(tmp_path / "out.jsonl", b'{"id": "a"}\n', line, b'{"id": "b"}\n')
    for read in (recover, lambda p: drop_records(p, "endpoint_error")):
        with pytest.raises(DataError, match=rf"^{path}:2: .*{says}.*delete that line and rerun"):
            read(path)
    assert not (tmp_path / "out.jsonl.tmp").exists()


def test_drop_records_survives_blank_lines_and_a_torn_tail(tmp_path):
    path = results(
        tmp_path / "rejected.jsonl",
        b'{"id": "a", "reason": "endpoint_error"}\n\n{"id": "b", "reason": "too_short"}\n{"id": "c", "rea',
    )
    assert drop_records(path, "endpoint_error") == 1
    assert [record for _, record in iter_jsonl(path)] == [{"id": "b", "reason": "too_short"}]


def trainer_at(epoch: int, rows_done: int, step: int = 0) -> SimpleNamespace:
    sampler = SimpleNamespace(rows_done=rows_done, global_batch_rows=2)
    return SimpleNamespace(
        is_global_zero=True,
        current_epoch=epoch,
        global_step=step,
        datamodule=SimpleNamespace(sampler=sampler),
        strategy=SimpleNamespace(all_gather=lambda rows: rows.unsqueeze(0)),
    )


def test_the_row_ledger_resumes_after_a_torn_or_blank_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps({"epoch": 0, "position": p, "step": p // 2, "rows": [p, p + 1]}) for p in (0, 2, 4)]
    path.write_text(f"{lines[0]}\n\n{lines[1]}\n{lines[2]}\n" + lines[2][:20])  # a kill mid-write, after a blank
    ledger = RowLedger(path)
    trainer = trainer_at(epoch=0, rows_done=4)  # resumed at position 4: the lines from there on go
    ledger.on_train_start(trainer, None)
    trainer.datamodule.sampler.rows_done = 6
    ledger.on_train_batch_end(trainer, None, None, {"rows": torch.tensor([7, 8])}, 0)
    ledger.on_train_end(trainer, None)
    again = json.dumps({"epoch": 0, "position": 4, "step": 0, "rows": [7, 8]})
    assert path.read_text() == f"{lines[0]}\n{lines[1]}\n{again}\n"  # the format a fresh run writes


def test_exam_question_and_answer_files_that_are_not_utf8_name_the_line_and_the_fix(tmp_path):
    record = {"question": "维生素?", "option": {"A": "甲", "B": "乙"}, "answer": "A", "id": "q1"}
    document = tmp_path / "exam.json"
    document.write_bytes(("[\n" + json.dumps(record, ensure_ascii=False) + "\n]").encode("gb18030"))
    lines = tmp_path / "exam.jsonl"
    lines.write_bytes(b"\n" + json.dumps(record).encode() + b"\n" + GB18030_LINE + b"\n")
    table = tmp_path / "exam.csv"
    table.write_bytes("question,A,B,answer\n维生素?,甲,乙,A\n".encode("gb18030"))
    for path, line in ((document, 2), (lines, 3), (table, 2)):
        with pytest.raises(DataError, match=rf"^{path}:{line}: .*not valid UTF-8.*iconv -f GB18030 -t UTF-8"):
            load_exam(path)
    for read in (read_questions, read_answers, read_answer_file):
        for path, line in ((document, 2), (lines, 3)):
            with pytest.raises(DataError, match=rf"^{path}:{line}: .*not valid UTF-8"):
                read(path)


def test_one_reader_for_json_documents_and_json_lines(tmp_path):
    per_line = tmp_path / "medmcqa.json"  # one object per line under a .json name
    per_line.write_text('\ufeff{"id": 1}\n\n{"id": 2}\n', encoding="utf-8")
    assert read_json_records(per_line) == [{"id": 1}, {"id": 2}]
    broken = tmp_path / "broken.json"
    broken.write_text('{"a":\n  [1,, 2]}', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{broken}:2: not valid JSON \(Expecting value at column 6\)"):
        read_json_records(broken)


def test_the_latest_record_per_key_wins_and_a_torn_line_is_ignored(tmp_path):
    path = tmp_path / "replies.jsonl"
    assert latest_by_key(path) == {} == read_replies(path) == read_judgments(path)
    path.write_bytes(b'{"key": "a", "v": 1}\n{"key": "b", "v": 1}\n\n{"key": "a", "v": 2}\n{"key": "b", "v"')
    expected = {"a": {"key": "a", "v": 2}, "b": {"key": "b", "v": 1}}
    assert latest_by_key(path) == expected == read_replies(path) == read_judgments(path)


def test_half_a_surrogate_pair_is_bad_text_named_at_its_line_and_a_whole_pair_is_a_character(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('["q \\ud83d\\ude00", "a"]\n["q \\ud800 cut", "a"]\n["q", "a"]\n', encoding="utf-8")
    spec = SourceSpec(name="s", paths=[str(path)], format="jsonl")
    with pytest.raises(DataError, match=rf"{path}:2: invalid text: \\ud800 is half of a surrogate pair"):
        list(iter_conversations(spec, "raise", LoadReport()))
    report = LoadReport()
    kept = [turns for _, turns in iter_conversations(spec, "skip", report)]
    assert kept == [["q 😀", "a"], ["q", "a"]] and report.skipped == {"invalid text": 1}
    document = tmp_path / "s.json"
    document.write_text('[\n ["q", "a"],\n ["\\udc00q", "a"]\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{document}:3: invalid text: \\udc00 is half"):
        list(
            iter_conversations(SourceSpec(name="d", paths=[str(document)], format="huatuo_json"), "raise", LoadReport())
        )
