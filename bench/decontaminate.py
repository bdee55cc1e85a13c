"""Decontamination benchmark: documents/s and peak memory of the exam n-gram scan on a synthetic corpus, and the
measurement behind the default n.

    python bench/decontaminate.py                          # 1M documents against 5,000 questions, 100 planted
    python bench/decontaminate.py --documents 20000 --questions 500 --planted 10   # a quick look
    python bench/decontaminate.py --choose-n               # the demo exam against two clean corpora, n = 6..20

Corpus: the 2,000 real Chinese patient questions and doctor answers in ../shared/data, recombined at random into
one JSONL source of ``[question, answer]`` turn lists (~330 characters a document), written to a temporary folder.
Exam: synthetic questions (a stem and five options of Han characters drawn with the corpus's character frequencies)
that share nothing with the corpus by construction; ``--planted`` of them are copied verbatim into as many
documents, each written out as an exam dump would (``A. ...`` lines after the stem), so exactly those documents
must be found. The scan runs in a fresh process through ``huatuo.evaluation.contamination.scan_sources`` (reading
the JSONL, the index, the hits file and the report), which prints its peak resident memory, then reads the same
file alone (``iter_conversations``) to show what the scan adds to reading.

``--choose-n`` indexes the demo exam (48 questions) at each n and counts the questions flagged in the demo mixture
and in the 2,000 dialogues (none of which holds an exam question: every flag is a false positive), and the
questions found when their stem is planted alone, with one or two characters changed, or as the options alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT.parent / "shared" / "data" / "medical_dialogue_zh" / "internal_medicine_2000.csv"
sys.path.insert(0, str(ROOT))


def read_dialogues() -> list[tuple[str, str]]:
    """(question, answer) of every complete row of the CSV (title and ask joined as the patient's question)."""
    with CSV.open(encoding="utf-8", newline="") as handle:
        rows = [(r["title"] + r["ask"], r["answer"]) for r in csv.DictReader(handle)]
    return [(q, a) for q, a in rows if q.strip() and a.strip()]


def synthetic_exam(dialogues: list[tuple[str, str]], questions: int, seed: int) -> list[dict]:
    """Questions of Han characters drawn with the corpus's frequencies: realistic sizes, no chance overlaps."""
    rng = random.Random(seed)
    pool = [c for q, a in dialogues for c in q + a if "\u4e00" <= c <= "\u9fff"]
    exam = []
    for i in range(questions):
        stem = "".join(rng.choices(pool, k=rng.randint(20, 60)))
        options = {letter: "".join(rng.choices(pool, k=rng.randint(4, 14))) for letter in "ABCDE"}
        exam.append({"id": f"syn-{i}", "question": stem, "option": options, "answer": "A"})
    return exam


def write_corpus(dialogues, exam, documents: int, planted: int, folder: Path, seed: int) -> tuple[Path, list[int]]:
    """The JSONL corpus, and the line numbers (1-based) of the documents that hold a planted question."""
    rng = random.Random(seed)
    hosts = sorted(rng.sample(range(documents), planted))
    planted_at = dict(zip(hosts, rng.sample(range(len(exam)), planted), strict=True))
    path = folder / "corpus.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for i in range(documents):
            question, answer = dialogues[rng.randrange(len(dialogues))]
            if i in planted_at:
                q = exam[planted_at[i]]
                lines = "\n".join(f"{k}. {v}" for k, v in q["option"].items())
                answer = f"{answer[:80]}\n例题：{q['question']}\n{lines}\n答案：A。{answer[80:]}"
            out.write(json.dumps([question, answer], ensure_ascii=False) + "\n")
    return path, [h + 1 for h in hosts]


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss it does not inherit the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(folder: Path, n: int) -> None:
    """Scan the corpus in this fresh process and print the numbers as one JSON line."""
    from huatuo.data.sources import SourceSpec
    from huatuo.evaluation.contamination import HITS, build_exam_index
    from huatuo.evaluation.exam_files import load_exam

    imports = peak_rss_mib()
    exams = build_exam_index({"synthetic": load_exam(folder / "exam.json")}, n)
    from huatuo.evaluation.contamination import scan_sources

    before = peak_rss_mib()
    spec = SourceSpec(name="corpus", paths=[str(folder / "corpus.jsonl")], format="jsonl")
    started = time.perf_counter()
    result = scan_sources([spec], exams, folder / "out", progress=False)
    seconds = time.perf_counter() - started
    found = sorted({int(json.loads(line)["document"].rsplit(":", 1)[1]) for line in open(folder / "out" / HITS)})
    from huatuo.data.sources import LoadReport, iter_conversations

    started = time.perf_counter()
    for _ in iter_conversations(spec, "raise", LoadReport()):  # the same file read alone: the scan's share
        pass
    reading = time.perf_counter() - started
    print(
        json.dumps(
            {
                "documents": result["documents"],
                "seconds": seconds,
                "reading_seconds": reading,
                "peak_rss_mib": peak_rss_mib(),
                "rss_before_scan_mib": before,
                "rss_imports_mib": imports,
                "index_mib": exams.index.nbytes() / 2**20,
                "ngrams": len(exams.index),
                "found": found,
            }
        )
    )


def choose_n(low: int, high: int) -> None:
    """Print false positives on clean corpora and planted recall for the demo exam at each n."""
    from huatuo.core.assets import asset_path
    from huatuo.data.contamination import NgramIndex
    from huatuo.evaluation.contamination import question_texts
    from huatuo.evaluation.exam_files import load_exam

    questions = load_exam(asset_path("demo/exam_demo.json")).questions
    demo = json.loads(Path(asset_path("demo/huatuo2_demo.json")).read_text(encoding="utf-8"))
    mixture = ["\n".join(turns) for source in demo.values() for turns in source]
    dialogues = ["\n".join(pair) for pair in read_dialogues()]

    def changed(text: str, edits: int) -> str:
        chars = list(text)
        for k in range(1, edits + 1):
            chars[k * len(chars) // (edits + 1)] = "某"  # evenly spread: the longest intact run is len/(edits+1)
        return "".join(chars)

    plants = {
        "stem": lambda q: q.question,
        "stem, 1 edit": lambda q: changed(q.question, 1),
        "stem, 2 edits": lambda q: changed(q.question, 2),
        "options only": lambda q: "；".join(q.options.values()),
        "stem + options": lambda q: question_texts(q)[0],
    }
    print(f"demo exam: {len(questions)} questions; clean corpora: demo mixture {len(mixture)} documents, "
          f"dialogues {len(dialogues)} documents")  # fmt: skip
    print("| n | flagged in demo mixture | flagged in dialogues | " + " | ".join(f"found: {k}" for k in plants) + " |")
    print("| ---: | ---: | ---: | " + " | ".join("---:" for _ in plants) + " |")
    for n in range(low, high + 1):
        index = NgramIndex.build([question_texts(q) for q in questions], n)
        false_mixture = len({o.reference for o in index.scan(mixture)})
        false_dialogues = len({o.reference for o in index.scan(dialogues)})
        found = []
        for make in plants.values():
            texts = [f"病例讨论：{make(q)}。以上内容供复习参考。" for q in questions]
            found.append(len({o.document for o in index.scan(texts) if o.reference == o.document}))
        cells = [str(n), str(false_mixture), str(false_dialogues), *(f"{k}/{len(questions)}" for k in found)]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    """Run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--questions", type=int, default=5000, help="synthetic exam size (the index side)")
    parser.add_argument("--planted", type=int, default=100, help="documents that get a verbatim exam question")
    parser.add_argument("--n", type=int, default=None, help="units per n-gram (default: huatuo's)")
    parser.add_argument("--choose-n", action="store_true", help="print the n table on the demo exam instead")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from huatuo.data.contamination import DEFAULT_N

    n = args.n or DEFAULT_N
    if args.child is not None:
        child(args.child, n)
        return
    if args.choose_n:
        choose_n(6, 20)
        return
    dialogues = read_dialogues()
    with tempfile.TemporaryDirectory(prefix="bench-decontaminate-") as tmp:
        folder = Path(tmp)
        exam = synthetic_exam(dialogues, args.questions, seed=0)
        (folder / "exam.json").write_text(json.dumps(exam, ensure_ascii=False), encoding="utf-8")
        started = time.perf_counter()
        corpus, hosts = write_corpus(dialogues, exam, args.documents, args.planted, folder, seed=1)
        size = corpus.stat().st_size
        print(f"corpus: {args.documents:,} documents, {size / 2**20:,.0f} MiB JSONL, written in "
              f"{time.perf_counter() - started:.0f}s; exam: {args.questions:,} synthetic questions, "
              f"{args.planted} planted")  # fmt: skip
        command = [sys.executable, __file__, "--child", str(folder), "--n", str(n)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"the scan failed:\n{result.stderr[-3000:]}")
        numbers = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"n={n}: {numbers['documents']:,} documents in {numbers['seconds']:.1f}s = "
            f"{numbers['documents'] / numbers['seconds']:,.0f} documents/s "
            f"({size / 2**20 / numbers['seconds']:.1f} MiB/s of JSONL, one core); reading the JSONL alone takes "
            f"{numbers['reading_seconds']:.1f}s"
        )
        print(
            f"index: {numbers['ngrams']:,} n-grams, {numbers['index_mib']:.1f} MiB; peak RSS "
            f"{numbers['peak_rss_mib']:,.0f} MiB: {numbers['rss_imports_mib']:,.0f} MiB after imports, "
            f"{numbers['rss_before_scan_mib']:,.0f} MiB once the exam is read and indexed (the build's peak), "
            f"+{numbers['peak_rss_mib'] - numbers['rss_before_scan_mib']:,.0f} MiB over the whole scan"
        )
        found = numbers["found"]
        print(f"planted found: {len(set(found) & set(hosts))}/{len(hosts)}; other documents flagged: "
              f"{len(set(found) - set(hosts))}")  # fmt: skip


if __name__ == "__main__":
    main()
