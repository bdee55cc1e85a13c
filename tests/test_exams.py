"""Exam loaders on small files in every published layout (questions invented for these tests), and the prompt."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

import huatuo
from huatuo.core.errors import DataError
from huatuo.evaluation.exam_files import load_exam, load_suite, read_answer_file
from huatuo.evaluation.exams import record_to_question
from huatuo.evaluation.prompt import mcq_prompt

OPTIONS = {"A": "维生素A", "B": "维生素B1", "C": "维生素C", "D": "维生素D", "E": "维生素K"}


def write_json(path, data):
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    return path


def write_csv(path, header, rows):
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_demo_exam_loads_with_its_types_subjects_and_answer_counts():
    exam = load_exam(huatuo.asset_path("demo/exam_demo.json"), dataset="demo")
    questions = exam.questions
    assert len(questions) == 48 and not exam.skipped
    assert sum(q.multi for q in questions) == 12
    assert {q.question_type for q in questions} == {"最佳选择题", "多项选择题"}
    assert len({q.subject for q in questions}) == 6
    assert all(q.answer == "".join(sorted(q.answer)) for q in questions)
    assert questions[0].uid == "demo/demo-001" and questions[0].answer == "B"


def test_the_paper_prompt_byte_for_byte():
    q = record_to_question(
        {"question": "缺乏哪种维生素可致坏血病", "option": OPTIONS, "answer": "C", "question_type": "最佳选择题"},
        "f:0",
        "d",
        "s",
    )
    assert mcq_prompt(q) == (
        "请回答下面选择题。\n[最佳选择题]缺乏哪种维生素可致坏血病\n"
        "A. 维生素A\nB. 维生素B1\nC. 维生素C\nD. 维生素D\nE. 维生素K"
    )
    untyped = record_to_question({"question": "Q?", "options": {"A": "x", "B": "y"}, "answer": "B"}, "f:1", "d", "s")
    assert mcq_prompt(untyped) == "请回答下面选择题。\nQ?\nA. x\nB. y"


def paper_message(record: dict) -> str:
    """The paper's user message, from the facts of its evaluation script (written out again here, independently)."""
    option_str = "\n".join(f"{k}. {v}" for k, v in record["option"].items() if len(v) > 0)
    if "question_type" in record:
        return f"请回答下面选择题。\n[{record['question_type']}]{record['question']}\n{option_str}"
    return f"请回答下面选择题。\n{record['question']}\n{option_str}"


MESSY_RECORDS = [
    {  # full-width punctuation and brackets, an ideographic space, trailing spaces, a whitespace-only option
        "question": "患者，男，45岁。（　）下列哪项正确？  ",
        "option": {"A": "阿司匹林（小剂量）  ", "B": "　布洛芬", "C": "对乙酰氨基酚，口服", "D": " ", "E": ""},
        "answer": "A",
        "question_type": "最佳选择题",
    },
    {  # the type field present but empty, keys in the record's own order, full-width keys
        "question": "下列说法正确的是：",
        "option": {"Ｂ": "乙．", "Ａ": "甲，", "C": "丙"},
        "answer": "Ａ",
        "question_type": "",
    },
    {"question": "  前后有空格的题干 ", "option": {"A": "是", "B": "否"}, "answer": "B"},  # no type field
]


def test_the_prompt_is_the_records_text_byte_for_byte(tmp_path):
    path = write_json(tmp_path / "messy.json", MESSY_RECORDS)
    questions = load_exam(path).questions
    for record, question in zip(MESSY_RECORDS, questions, strict=True):
        assert mcq_prompt(question) == paper_message(record)
    assert mcq_prompt(questions[0]) == (
        "请回答下面选择题。\n[最佳选择题]患者，男，45岁。（\u3000）下列哪项正确？  \n"
        "A. 阿司匹林（小剂量）  \nB. \u3000布洛芬\nC. 对乙酰氨基酚，口服\nD.  "
    )
    assert mcq_prompt(questions[1]) == "请回答下面选择题。\n[]下列说法正确的是：\nＢ. 乙．\nＡ. 甲，\nC. 丙"
    # Reading is unchanged: normalised letters and texts, the whitespace-only option D not among the choices.
    assert list(questions[0].options) == ["A", "B", "C"] and questions[1].answer == "A"
    # eval.normalize_text=true: the normalised text, options in letter order, no bracket for an empty type.
    assert mcq_prompt(questions[0], normalize=True) == (
        "请回答下面选择题。\n[最佳选择题]患者,男,45岁。( )下列哪项正确?\n"
        "A. 阿司匹林(小剂量)\nB. 布洛芬\nC. 对乙酰氨基酚,口服"
    )
    assert mcq_prompt(questions[1], normalize=True) == "请回答下面选择题。\n下列说法正确的是:\nA. 甲,\nB. 乙.\nC. 丙"


def test_a_null_type_is_no_type_field():
    # Hub datasets fill a field that a record lacks with null; the paper's files simply lacked the key.
    q = record_to_question({"question": "Q", "option": {"A": "x", "B": "y"}, "answer": "A", "question_type": None},
                           "f:0", "d", "s")  # fmt: skip
    assert mcq_prompt(q) == "请回答下面选择题。\nQ\nA. x\nB. y"


def test_json_list_with_nfkc_normalisation_and_empty_options_dropped(tmp_path):
    path = write_json(
        tmp_path / "pharm.json",
        [
            {  # full-width letters and punctuation, an empty option E, answer with separators
                "question": "下列关于药物的说法，正确的是（　）",
                "option": {"Ａ": "选项一", "B": "选项二", "C": "选项三", "D": "选项四", "E": ""},
                "answer": "Ａ、Ｃ",
                "question_type": "多项选择题",
            },
            {"question": "单选题干", "option": {"A": "甲", "B": "乙", "C": "丙"}, "answer": "b"},
        ],
    )
    first, second = load_exam(path).questions
    assert first.question == "下列关于药物的说法,正确的是( )"
    assert list(first.options) == ["A", "B", "C", "D"]  # E was empty: dropped, and not shown in the prompt
    assert first.answer == "AC" and first.multi and first.answer_count == 2
    # the folders are left out of the uid: any spelling of the path gives the same one
    assert first.dataset == "pharm" and first.uid == f"pharm/{path.name}:0"
    assert second.answer == "B" and not second.multi and second.question_type is None


def test_huatuo_evaluation_layout_groups_by_dataset_and_counts_open_items(tmp_path):
    path = write_json(
        tmp_path / "eval_qa.json",
        {
            "medqa_MCMLE": [{"question": "q1", "option": {"A": "a", "B": "b"}, "answer": "A"}],
            "CMB_test": [
                {
                    "question": "q2",
                    "option": {"A": "a", "B": "b", "C": "c"},
                    "answer": "AC",
                    "question_type": "多项选择题",
                }
            ],
            "chat": [{"query": "an open question, scored elsewhere"}],
        },
    )
    exam = load_exam(path)
    assert [q.dataset for q in exam.questions] == ["medqa_MCMLE", "CMB_test"]
    assert exam.open_items == 1 and not exam.skipped


def test_cmb_json_with_its_fields_and_a_separate_answer_file(tmp_path):
    questions = [
        {
            "id": 1,
            "exam_type": "医师考试",
            "exam_class": "执业医师",
            "exam_subject": "内科",
            "question": "题干一",
            "question_type": "单项选择题",
            "option": {"A": "甲", "B": "乙", "C": "丙", "D": "丁", "E": "戊"},
        },
        {
            "id": 2,
            "exam_type": "医师考试",
            "exam_class": "执业医师",
            "exam_subject": "外科",
            "question": "题干二",
            "question_type": "多项选择题",
            "option": json.dumps({"A": "甲", "B": "乙", "C": "丙", "D": "丁"}, ensure_ascii=False),  # hub: a string
        },
    ]
    path = write_json(tmp_path / "CMB-test-choice-question-merge.json", questions)
    with pytest.raises(DataError, match="no answer"):
        load_exam(path)
    answers = read_answer_file(
        write_json(tmp_path / "answers.json", [{"id": 1, "answer": "D"}, {"id": 2, "answer": "ABD"}])
    )
    exam = load_exam(path, dataset="cmb", answers=answers)
    assert [(q.uid, q.subject, q.answer, q.multi) for q in exam.questions] == [
        ("cmb/1", "内科", "D", False),
        ("cmb/2", "外科", "ABD", True),
    ]
    by_class = load_exam(path, dataset="cmb", answers=answers, subject_field="exam_class")
    assert {q.subject for q in by_class.questions} == {"执业医师"}


def test_cmmlu_and_ceval_csv_folders_one_file_per_subject(tmp_path):
    cmmlu = tmp_path / "cmmlu" / "test"
    cmmlu.mkdir(parents=True)
    write_csv(
        cmmlu / "anatomy.csv", ["", "Question", "A", "B", "C", "D", "Answer"], [[0, "题一", "a", "b", "c", "d", "B"]]
    )
    write_csv(
        cmmlu / "arts.csv", ["", "Question", "A", "B", "C", "D", "Answer"], [[0, "题二", "a", "b", "c", "d", "A"]]
    )
    exam = load_exam(cmmlu, dataset="cmmlu", subjects=["anatomy"])
    assert [(q.dataset, q.subject, q.answer) for q in exam.questions] == [("cmmlu", "anatomy", "B")]

    ceval = tmp_path / "ceval" / "val"
    ceval.mkdir(parents=True)
    header = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
    write_csv(ceval / "clinical_medicine_val.csv", header, [[0, "题三", "a", "b", "c", "d", "D", "解析"]])
    write_csv(ceval / "physician_val.csv", header, [[0, "题四", "a", "b", "c", "d", "C", ""]])
    exam = load_exam(ceval)
    assert sorted((q.subject, q.answer) for q in exam.questions) == [("clinical_medicine", "D"), ("physician", "C")]
    assert {q.dataset for q in exam.questions} == {"val"}  # a folder of per-subject CSVs is one dataset


def test_cmexam_csv_with_options_in_one_cell(tmp_path):
    path = write_csv(
        tmp_path / "cmexam_test.csv",
        ["Question", "Options", "Answer", "Explanation", "Clinical Department"],
        [
            ["单选题干", "A 甲药\nB 乙药\nC 丙药\nD 丁药\nE 戊药", "C", "解析", "内科"],
            ["多选题干", "A. 甲\nB. 乙\nC. 丙\nD. 丁", "ABD", "", "外科"],
        ],
    )
    exam = load_exam(path, subject_field="Clinical Department")
    single, multi = exam.questions
    assert single.options == {"A": "甲药", "B": "乙药", "C": "丙药", "D": "丁药", "E": "戊药"}
    assert (single.answer, single.subject, multi.answer, multi.multi) == ("C", "内科", "ABD", True)


def test_medqa_jsonl_prefers_answer_idx_and_reads_bigbio_option_lists(tmp_path):
    path = write_jsonl(
        tmp_path / "medqa_test.jsonl",
        [
            {
                "question": "A 30-year-old presents with ...",
                "answer": "Drug three",
                "options": {"A": "Drug one", "B": "Drug two", "C": "Drug three", "D": "Drug four"},
                "meta_info": "step1",
                "answer_idx": "C",
            },
            {
                "question": "Which finding ...",
                "answer": "Finding two",
                "options": [{"key": "A", "value": "Finding one"}, {"key": "B", "value": "Finding two"}],
                "meta_info": "step2&3",
            },
        ],
    )
    first, second = load_exam(path).questions
    assert first.answer == "C"
    assert second.options == {"A": "Finding one", "B": "Finding two"} and second.answer == "B"  # by option text


def test_medmcqa_cop_base_is_detected_per_file_or_asked_for(tmp_path):
    def record(cop):
        return {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": cop, "subject_name": "Anatomy"}

    one_based = write_jsonl(tmp_path / "dev.json", [record(4), record(1)])  # GitHub release: .json holding JSON lines
    assert [q.answer for q in load_exam(one_based).questions] == ["D", "A"]
    zero_based = write_jsonl(tmp_path / "hub.jsonl", [record(0), record(1)])
    assert [q.answer for q in load_exam(zero_based).questions] == ["A", "B"]
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [record(2)])
    with pytest.raises(DataError, match="cop_base"):
        load_exam(unknown)
    assert load_exam(unknown, cop_base=1).questions[0].answer == "B"
    assert load_exam(zero_based).questions[0].subject == "Anatomy"


def test_parquet_rows_read_like_any_other_layout(tmp_path):
    table = pa.table(
        {
            "question": ["题一", "题二"],
            "A": ["a", "a"],
            "B": ["b", "b"],
            "C": ["c", "c"],
            "D": ["d", "d"],
            "answer": ["A", "D"],
        }
    )
    pq.write_table(table, tmp_path / "ceval-exam-val.parquet")
    exam = load_exam(tmp_path / "ceval-exam-val.parquet", dataset="ceval")
    assert [q.answer for q in exam.questions] == ["A", "D"]


def test_malformed_records_are_reported_with_file_and_index_or_skipped_and_counted(tmp_path):
    path = write_json(
        tmp_path / "bad.json",
        [
            {"question": "fine", "option": {"A": "x", "B": "y"}, "answer": "A"},
            {"question": "", "option": {"A": "x", "B": "y"}, "answer": "A"},
            {"question": "answer not an option", "option": {"A": "x", "B": "y"}, "answer": "E"},
            {"question": "empty option named as answer", "option": {"A": "x", "B": "y", "C": ""}, "answer": "C"},
            {"question": "no answer", "option": {"A": "x", "B": "y"}},
            {"question": "one option", "option": {"A": "x", "B": ""}, "answer": "A"},
            "not an object",
        ],
    )
    with pytest.raises(DataError) as err:
        load_exam(path)
    message = str(err.value)
    assert "6 record(s)" in message and "eval.on_error=skip" in message
    for index, reason in [
        (1, "no question text"),
        (2, "answer 'E' names option(s) E"),
        (3, "answer 'C' names option(s) C"),
        (4, "no answer"),
        (5, "only 1 non-empty option"),
        (6, "expected an object"),
    ]:
        assert f"{path}:{index}: {reason}" in message
    exam = load_exam(path, on_error="skip")
    assert len(exam.questions) == 1
    assert [s["source"] for s in exam.skipped] == [f"{path}:{i}" for i in range(1, 7)]


def test_broken_json_line_and_missing_paths_name_the_place(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "q", "option": {"A": "x", "B": "y"}, "answer": "A"}\n{"question": \n', "utf-8")
    with pytest.raises(DataError, match="broken.jsonl:2"):
        load_exam(path)
    with pytest.raises(DataError, match="no such file or folder"):
        load_exam(tmp_path / "missing.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        load_exam(tmp_path / "empty")


def test_duplicate_ids_across_files_fall_back_to_file_and_index(tmp_path):
    folder = tmp_path / "exam"
    folder.mkdir()
    record = {"id": 7, "question": "q", "option": {"A": "x", "B": "y"}, "answer": "A"}
    write_json(folder / "a.json", [record])
    write_json(folder / "b.json", [record])
    exam = load_exam(folder, dataset="same")
    assert len({q.uid for q in exam.questions}) == 2


def test_a_question_without_an_id_gets_the_same_uid_whatever_the_paths_spelling(tmp_path, monkeypatch):
    record = {"question": "q", "option": {"A": "x", "B": "y"}, "answer": "A"}
    path = write_json(tmp_path / "exam.json", [record])
    monkeypatch.chdir(tmp_path)
    absolute = load_exam(path).questions[0].uid
    relative = load_exam("exam.json").questions[0].uid
    assert absolute == relative == "exam/exam.json:0"
    for sub in ("one", "two"):  # the same file name in two folders: told apart, whatever the spelling too
        (tmp_path / "both" / sub).mkdir(parents=True)
        write_json(tmp_path / "both" / sub / "exam.json", [record])
    expected = ["d/one/exam.json:0", "d/two/exam.json:0"]
    assert sorted(q.uid for q in load_exam(tmp_path / "both", dataset="d").questions) == expected
    assert sorted(q.uid for q in load_exam("both", dataset="d").questions) == expected


def test_hub_splits_whose_ids_repeat_get_uids_of_their_own(monkeypatch):
    # C-Eval numbers its records 0..N in every subject: `ceval/0` once per split until load_suite merges them
    def split(repo, name, split, revision=None):
        return [{"id": i, "question": f"{name} {i}", "A": "x", "B": "y", "answer": "A"} for i in range(2)]

    monkeypatch.setattr("datasets.load_dataset", split)
    ev = OmegaConf.create(
        {
            "name": "ceval",
            "hub": [
                {"repo": "ceval/ceval-exam", "name": ["accountant", "physician"], "split": "val", "dataset": "ceval"}
            ],
        }  # fmt: skip
    )
    exam = load_suite(ev)
    assert len(exam.questions) == 4 and len({q.uid for q in exam.questions}) == 4
    assert exam.questions[0].uid == "ceval/hf://ceval/ceval-exam/accountant[val]:0"


def test_the_subject_filter_reads_config_and_records_normalised_on_hub_and_local_paths(monkeypatch, tmp_path):
    records = [
        {"question": "q1", "option": {"A": "x", "B": "y"}, "answer": "A", "subject": "内科"},
        {"question": "q2", "option": {"A": "x", "B": "y"}, "answer": "A", "subject": "ICU"},
    ]
    monkeypatch.setattr("datasets.load_dataset", lambda repo, name, split, revision=None: records)
    local = write_json(tmp_path / "exam.json", records)
    for source in ({"hub": [{"repo": "org/exam"}]}, {"data": str(local)}):
        exam = load_suite(OmegaConf.create({"name": "s", "subjects": ["ＩＣＵ"], **source}))  # full-width, as typed
        assert [q.question for q in exam.questions] == ["q2"] and exam.filtered == 1, source
