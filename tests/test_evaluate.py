"""evaluate(cfg) end to end on the demo exam and small local exams: reports, both modes, loggers, config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from huatuo.core.errors import ConfigError, DataError
from huatuo.evaluation.run import evaluate
from huatuo.evaluation.run_folder import RunFolderError, expand_run
from huatuo.evaluation.validation import check_eval_config
from tests.helpers import ROOT, compose_config, run_script
from tests.servers import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "export")


def config(tmp_path, *overrides):
    return compose_config("evaluate", [f"paths.run_dir={tmp_path / 'run'}", "progress=false", *overrides])


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_demo_exam_in_loglik_mode_writes_every_report(tmp_path, tiny_export):
    results = evaluate(config(tmp_path, f"model_path={tiny_export}"))
    run = tmp_path / "run"
    assert json.loads((run / "results.json").read_text()) == json.loads(json.dumps(results))
    s = results["summary"]
    assert results["mode"] == "loglik" and s["n"] == 48 and s["misses"] == 0
    rows = read_jsonl(run / "predictions.jsonl")
    assert len(rows) == 48 and len({r["uid"] for r in rows}) == 48  # every question accounted for, once
    assert s["correct"] == sum(r["correct"] for r in rows)
    assert all(r["correct"] == (r["extracted"] == r["gold"]) for r in rows)
    assert all(
        r["prompt"].startswith("<问>：请回答下面选择题。\n[") and r["prompt"].endswith("\n<答>：答案是") for r in rows
    )
    assert sum(g["n"] for g in s["by_answer_count"].values()) == sum(g["n"] for g in s["by_subject"].values()) == 48
    assert s["by_question_type"]["多项选择题"]["n"] == 12
    assert all(len(r["extracted"]) >= 2 for r in rows if r["multi"])  # multi-answer: a set of 2+ letters
    text = (run / "results.md").read_text()
    assert "# demo (loglik mode)" in text and "## By subject" in text and "| 多项选择题 | 12 |" in text
    assert (run / "subject_accuracy.png").stat().st_size > 1000
    assert (run / "resolved_config.yaml").is_file()
    again = evaluate(config(tmp_path, f"model_path={tiny_export}", f"paths.run_dir={tmp_path / 'again'}"))
    assert again["summary"]["by_subject"] == s["by_subject"]  # deterministic


def test_generate_mode_reads_replies_back_and_reports_misses(tmp_path, tiny_export):
    results = evaluate(
        config(
            tmp_path,
            f"model_path={tiny_export}",
            "eval.mode=generate",
            "eval.limit=8",
            "eval.generate.max_new_tokens=6",
            "batch_size=4",
        )
    )
    rows = read_jsonl(tmp_path / "run" / "predictions.jsonl")
    s = results["summary"]
    assert s["n"] == 8 and all(isinstance(r["reply"], str) for r in rows)
    assert s["misses"] == sum(r["miss"] for r in rows) and s["miss_rate"] == pytest.approx(s["misses"] / 8)
    assert all(r["extracted"] == "" and not r["correct"] for r in rows if r["miss"])  # never a guessed letter
    assert results["settings"]["temperature"] == 0.5 and results["settings"]["top_p"] == 0.7


def test_a_local_folder_suite_with_skipped_records_and_two_datasets(tmp_path, tiny_export):
    folder = tmp_path / "exam"
    folder.mkdir()
    good = {
        "question": "题干",
        "option": {"A": "甲", "B": "乙", "C": "丙"},
        "answer": "B",
        "question_type": "最佳选择题",
    }
    (folder / "pharmacy.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in [good, {**good, "answer": "Z"}]), encoding="utf-8"
    )
    (folder / "tcm.json").write_text(json.dumps([good, good], ensure_ascii=False), encoding="utf-8")
    overrides = [f"model_path={tiny_export}", "eval=pharmacist", f"eval.data={folder}"]
    with pytest.raises(Exception, match="pharmacy.jsonl:1"):
        evaluate(config(tmp_path, *overrides))
    results = evaluate(config(tmp_path, *overrides, "eval.on_error=skip"))
    assert results["skipped"] == 1 and set(results["summary"]["by_dataset"]) == {"pharmacy", "tcm"}
    skipped = read_jsonl(tmp_path / "run" / "skipped.jsonl")
    assert skipped[0]["source"].endswith("pharmacy.jsonl:1")


def test_records_that_cannot_be_scored_are_named_at_once_or_listed_beside_the_accuracy(tmp_path, tiny_export):
    letters = "ABCDEFGH"
    records = [
        {"id": "ok", "question": "题干", "option": {"A": "甲", "B": "乙"}, "answer": "A"},
        {"id": "empty", "question": "选项全空", "option": {"A": "", "B": " ", "C": "　"}, "answer": "A"},
        {  # 8 options, multi-answer: 247 candidate sets, over the limit set below
            "id": "wide",
            "question": "多选",
            "option": {c: f"项{c}" for c in letters},
            "answer": "AC",
            "question_type": "多项选择题",
        },
        {"id": "ok2", "question": "题干二", "option": {"A": "甲", "B": "乙"}, "answer": "B"},
    ]
    exam = tmp_path / "exam.json"
    exam.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    overrides = [f"model_path={tiny_export}", "eval=mcq", f"eval.data={exam}", "eval.loglik.max_candidates=100"]
    with pytest.raises(DataError) as err:  # both problems in one error, before the model loads
        evaluate(config(tmp_path, *overrides))
    message = str(err.value)
    assert "2 record(s) cannot be scored" in message
    assert f"{exam}:1: only 0 non-empty option(s)" in message
    assert f"{exam}:2 (exam/wide): 247 candidate answers exceed eval.loglik.max_candidates=100" in message
    results = evaluate(config(tmp_path, *overrides, "eval.on_error=skip"))
    assert (results["summary"]["n"], results["skipped"], results["summary"]["skipped"]) == (2, 2, 2)
    assert [r["reason"].split(" ")[0] for r in results["skipped_records"]] == ["only", "247"]
    assert results["summary"]["by_dataset"]["exam"]["skipped"] == 2
    text = (tmp_path / "run" / "results.md").read_text(encoding="utf-8")
    assert "| miss % | skipped |" in text and "| 1 | exam | 2 |" in text and text.count(" 2 |\n") >= 1


def test_random_init_backbone_without_a_model_path(tmp_path):
    results = evaluate(config(tmp_path, "eval.limit=4"))
    assert results["model"].startswith("tiny") and results["summary"]["n"] == 4


def test_config_problems_are_collected_into_one_error(tmp_path):
    cfg = config(tmp_path, "eval.mode=sample", "batch_size=0", "eval.data=/no/such/exam.json", "eval.cop_base=2")
    with pytest.raises(ConfigError) as err:
        check_eval_config(cfg)
    for key in ("eval.mode='sample'", "batch_size=0", "eval.data='/no/such/exam.json'", "eval.cop_base=2"):
        assert key in str(err.value)
    with pytest.raises(ConfigError, match="eval.data is not set"):
        check_eval_config(config(tmp_path, "eval=mcq"))
    with pytest.raises(ConfigError, match="eval.model_b needs answers"):
        check_eval_config(config(tmp_path, "eval=judge_inst"))
    with pytest.raises(ConfigError, match="eval.rule='best'"):
        check_eval_config(config(tmp_path, "eval=judge_conv", "eval.rule=best", "eval.model_b.model_path=x"))


def test_wandb_logger_gets_the_tables_offline(tmp_path, tiny_export, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    evaluate(config(tmp_path, f"model_path={tiny_export}", "logger=wandb", "eval.limit=12"))
    media = list((tmp_path / "run" / "wandb").glob("offline-run-*/files/media/**/*"))
    names = {p.name.split("_")[0] for p in media if p.is_file()}
    assert {"predictions", "subjects", "subject"} <= names
    table = next(p for p in media if p.name.startswith("predictions"))
    assert len(json.loads(table.read_text())["data"]) == 12


@pytest.mark.slow
def test_evaluate_script_runs_from_the_command_line(tmp_path, tiny_export):
    run = tmp_path / "cli"
    result = run_script(
        ["evaluate.py", f"model_path={tiny_export}", f"hydra.run.dir={run}", "eval.limit=6", "logger=csv"], cwd=ROOT
    )
    assert "accuracy" in result.stderr + result.stdout
    assert json.loads((run / "results.json").read_text())["summary"]["n"] == 6
    assert (run / "metrics.csv").is_file()


def test_named_suites_read_their_hub_splits_through_the_same_record_reader(tmp_path, monkeypatch):
    """No network: datasets.load_dataset is replaced by a recorder that serves rows in each hub's layout."""
    import datasets

    from huatuo.evaluation.exam_files import load_suite

    calls = []

    def fake_load_dataset(repo, name=None, split=None, revision=None):
        calls.append((repo, name, split, revision))
        if repo == "haonan-li/cmmlu":
            return [{"Question": f"{name} 题", "A": "a", "B": "b", "C": "c", "D": "d", "Answer": "C"}]
        if repo == "openlifescienceai/medmcqa":
            row = {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "subject_name": "Anatomy"}
            return [{**row, "cop": 0}, {**row, "cop": 3}]
        return [{"question": "题干", "option": {"A": "甲", "B": "乙"}, "answer": "B", "question_type": "最佳选择题"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cmmlu = load_suite(config(tmp_path, "eval=cmmlu_med").eval)
    assert [c[1] for c in calls] == list(config(tmp_path, "eval=cmmlu_med").eval.subjects)
    assert {c[0] for c in calls} == {"haonan-li/cmmlu"} and {c[3] for c in calls} == {"refs/convert/parquet"}
    assert {q.dataset for q in cmmlu.questions} == {"cmmlu"} and len({q.subject for q in cmmlu.questions}) == 9

    calls.clear()
    medmcqa = load_suite(config(tmp_path, "eval=medmcqa").eval)
    assert calls == [("openlifescienceai/medmcqa", None, "validation", None)]
    assert [q.answer for q in medmcqa.questions] == ["A", "D"] and medmcqa.questions[0].subject == "Anatomy"

    calls.clear()
    pharmacist = load_suite(config(tmp_path, "eval=pharmacist", "eval.limit=1").eval)
    assert [c[0].rsplit("-", 1)[-1] for c in calls] == ["Pharmacy_track", "TCM_track"]
    assert len(pharmacist.questions) == 1 and pharmacist.filtered == 1  # every question accounted for


def fake_run(folder: Path, evaluate_with: list[str] | None) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    config = {"seed": 1} if evaluate_with is None else {"evaluate_with": evaluate_with}
    (folder / ".hydra" / "config.yaml").write_text(json.dumps(config))
    (folder / "export").mkdir()
    (folder / "export" / "config.json").write_text("{}")
    return folder


def test_run_folder_expands_to_its_export_and_its_suite_and_the_command_line_wins(tmp_path):
    run = fake_run(tmp_path / "run", ["eval=pharmacist", "eval.mode=generate"])
    export = f"model_path={run / 'export'}"
    assert expand_run([f"run={run}"]) == [f"run={run}", export, "eval=pharmacist", "eval.mode=generate"]
    # a key given on the command line is kept and the run's is left out
    mode = "eval.mode=loglik"
    assert expand_run([f"run={run}", mode]) == [f"run={run}", export, "eval=pharmacist", mode]
    # another suite drops every eval setting of the run (judge suites have no eval.mode)
    assert expand_run([f"run={run}", "eval=judge_inst"]) == [f"run={run}", export, "eval=judge_inst"]
    suite = ["eval=pharmacist", "eval.mode=generate"]
    assert expand_run(["-m", f"run={run}", "model_path=X"]) == ["-m", f"run={run}", *suite, "model_path=X"]
    # flags keep their place: the added overrides sit right after run=, where the parser expects overrides
    assert expand_run([f"run={run}", "--cfg", "job"]) == [f"run={run}", export, *suite, "--cfg", "job"]
    assert expand_run(["model_path=X", "eval=cmb"]) == ["model_path=X", "eval=cmb"]  # no run=: untouched
    older = fake_run(tmp_path / "older", None)  # a run from before evaluate_with existed: the default suite
    assert expand_run([f"run={older}"]) == [f"run={older}", f"model_path={older / 'export'}"]


def test_run_folder_problems_name_the_folder_and_the_fix(tmp_path):
    with pytest.raises(RunFolderError, match=r"run=.*nowhere: .*config.yaml not found; give the folder a train run"):
        expand_run([f"run={tmp_path / 'nowhere'}"])
    unfinished = fake_run(tmp_path / "unfinished", [])
    (unfinished / "export" / "config.json").unlink()
    with pytest.raises(RunFolderError, match=r"no export in .*resume=auto"):
        expand_run([f"run={unfinished}"])
    with pytest.raises(RunFolderError, match="give one train run folder"):
        expand_run(["run=a,b"])
