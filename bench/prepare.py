"""Prepare-stage benchmark: ``huatuo.data.prepare`` versus a straightforward per-sample implementation of the same
algorithm (one sample tokenized at a time, packing in a Python loop, as the paper's ``data_process.py`` did).

    python bench/prepare.py                      # 200k samples, baseline on 50k, peak RSS at 1M
    python bench/prepare.py --samples 20000 --baseline-samples 5000 --rss-samples 0   # a quick look

Data: the 2,000 real Chinese patient questions and doctor answers in ../shared/data (repeated to scale) arranged
as the paper's nine-source mixture: short single-round Q&A, multi-round dialogues, and long answers (several doctor
answers joined) for the literature/encyclopedia/books sources, written as JSONL in the formats the pipeline reads
(unify, turn lists, OpenAI messages, ShareGPT). Everything is generated on the fly in a temporary folder.

Tokenizer: by default the real Baichuan2 SentencePiece model (../shared/assets/baichuan2/tokenizer.model) rebuilt as
a fast tokenizer by ``huatuo.models.loading.load_tokenizer`` (as for a released Baichuan2/HuatuoGPT2 folder) and checked
against ``sentencepiece`` on a few hundred texts; ``--tokenizer`` takes any ``tokenizer.model`` or a folder/hub name
that ``load_tokenizer`` loads. Both sides use the same tokenizer object.

Prints samples/s of both and their ratio (the baseline and the pipeline run on the same samples, and their rows
are checked to be identical), the packing fill of greedy (the paper's) and best_fit at ``--max-len``, and the peak
resident memory of a pipeline run on ``--rss-samples`` samples in a fresh process.

``--end-to-end`` measures the whole command instead, as a user runs it: ``python -m huatuo.prepare`` as a fresh
process on a fresh cache, on the same mixture written as a data config, with the Baichuan2 tokenizer as a released
folder holds it (``tokenizer.model`` + ``tokenizer_config.json``). Each size runs the command twice: cold (nothing
cached) and again with ``force=true`` (the data rebuilt, the tokenizer read from its cache: what a priority sweep
pays per trial). Beside it, in the same run: the per-sample baseline as its own process, and with ``--reference DIR``
the same command from another checkout of huatuo (an earlier commit), both on the smaller sizes
(``--compare-max``). Reported per run: wall, CPU, cores busy, peak RSS (the largest process, and all processes of
the command together), and the phases from ``stats.json``.

    python bench/prepare.py --end-to-end --reference /tmp/huatuo-before     # 123k and 1M conversations
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CSV = SHARED / "data" / "medical_dialogue_zh" / "internal_medicine_2000.csv"
SPM = SHARED / "assets" / "baichuan2" / "tokenizer.model"
sys.path.insert(0, str(ROOT))

# The paper's nine sources and priorities; SFT is read for 3 epochs. Shares of the samples, the record layout
# written, and how many doctor answers one long answer joins (min, max).
MIXTURE = [
    ("web_cn", 32, 1, 0.20, "unify", (1, 2)),
    ("web_en", 32, 1, 0.10, "unify", (1, 2)),
    ("literature_cn", 16, 1, 0.12, "turns", (1, 6)),
    ("literature_en", 16, 1, 0.06, "turns", (1, 6)),
    ("encyclopedia_cn", 8, 1, 0.12, "openai", (1, 3)),
    ("encyclopedia_en", 8, 1, 0.06, "openai", (1, 3)),
    ("books_cn", 4, 1, 0.05, "turns", (4, 40)),
    ("books_en", 4, 1, 0.04, "turns", (4, 40)),
    ("sft", 1, 3, 0.25, "sharegpt", (1, 1)),
]


# ---------------------------------------------------------------------------------------------------- tokenizer
def load_bench_tokenizer(spec: str):
    """A ``tokenizer.model`` or a folder/hub name, loaded as users get it (``huatuo.models.loading.load_tokenizer``)."""
    from huatuo.models.loading import load_tokenizer

    if spec.endswith(".model"):
        if Path(spec).name != "tokenizer.model":
            sys.exit(f"{spec}: name the SentencePiece model tokenizer.model, or pass its folder")
        return load_tokenizer(str(Path(spec).parent), from_sentencepiece=True)
    return load_tokenizer(spec)


def check_against_sentencepiece(tokenizer, model_file: str, texts: list[str]) -> int:
    """Number of texts the fast tokenizer encodes differently from ``sentencepiece``."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=model_file)
    return sum(processor.encode(t) != tokenizer.encode(t, add_special_tokens=False) for t in texts)


# --------------------------------------------------------------------------------------------------------- data
def read_dialogues(path: Path) -> tuple[list[tuple[str, str, str]], int]:
    """(title, question, answer) rows of the CSV; rows with an empty field (a cut-off last row) are left out."""
    rows, bad = [], 0
    with path.open(encoding="utf-8", newline="") as handle:
        for record in csv.DictReader(handle):
            fields = (record.get("title") or "", record.get("ask") or "", record.get("answer") or "")
            if all(f.strip() for f in fields):
                rows.append(fields)
            else:
                bad += 1
    return rows, bad


def write_mixture(rows: list[tuple[str, str, str]], folder: Path, samples: int, seed: int = 0) -> dict[str, dict]:
    """Write ``samples`` conversations as the nine-source mixture; returns the ``data.sources`` mapping."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sources = {}
    counts = np.floor(np.asarray([m[3] for m in MIXTURE]) * samples).astype(int)
    counts[-1] += samples - counts.sum()
    for (name, priority, epochs, _, layout, (lo, hi)), count in zip(MIXTURE, counts, strict=True):
        path = folder / f"{name}.jsonl"
        picks = rng.integers(0, len(rows), size=(count, 4))
        joins = rng.integers(lo, hi + 1, size=count)
        rounds = rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1], size=count)
        with path.open("w", encoding="utf-8") as out:
            for i in range(count):
                title, ask, answer = rows[picks[i, 0]]
                if joins[i] > 1:  # a long answer: several doctors' answers in a row
                    extra = rng.integers(0, len(rows), size=joins[i] - 1)
                    answer = "\n".join([answer, *(rows[j][2] for j in extra)])
                if layout == "unify":
                    record = {"id": f"{name}-{i}", "question": title + ask, "answer": answer}
                elif layout == "turns":
                    record = [ask, answer]
                elif layout == "openai":
                    record = {"messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]}
                else:  # sharegpt: a multi-round dialogue from consecutive rows
                    turns = []
                    for r in range(rounds[i]):
                        _, q, a = rows[(picks[i, 0] + r) % len(rows)]
                        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
                    record = {"conversations": turns}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        sources[name] = {"paths": [str(path)], "priority": priority, "epochs": epochs}
    return sources


# ----------------------------------------------------------------------------------------------------- baseline
def _turns(record) -> list[str]:
    if isinstance(record, list):
        return record
    if "conversations" in record:
        return [m["value"] for m in record["conversations"]]
    if "messages" in record:
        return [m["content"] for m in record["messages"]]
    return [record["question"], record["answer"]]


def baseline_prepare(sources: dict[str, dict], tokenizer, max_len: int, seed: int, packing: str, out: Path) -> dict:
    """The same algorithm written the straightforward way: one sample at a time, Python lists, a packing loop."""
    from datasets import Dataset

    from huatuo.data.sampler import PrioritySampler

    eos = tokenizer.eos_token_id
    encode, paper = tokenizer.encode, {"add_special_tokens": False, "max_length": max_len, "truncation": True}
    marker = tokenizer.encode("\n<答>：", add_special_tokens=False)
    per_source = []
    for settings in sources.values():
        samples = []
        for path in settings["paths"]:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    turns = _turns(json.loads(line))
                    ids, labels = [], []
                    for i, text in enumerate(turns):
                        if i % 2 == 0:  # the call of the paper's script
                            piece = encode(("\n" if i else "") + "<问>：" + text, **paper)
                            ids += piece
                            labels += [eos if i else -100] + [-100] * (len(piece) - 1)
                        else:
                            piece = encode(text, **paper)
                            ids += marker + piece
                            labels += [-100] * len(marker) + piece
                    ids.append(eos)
                    labels.append(eos)
                    samples.append((ids[:max_len], labels[:max_len]))
        per_source.append(samples)
    sampler = PrioritySampler(
        [len(s) for s in per_source],
        [v["priority"] for v in sources.values()],
        [v["epochs"] for v in sources.values()],
        seed,
    )
    order = sampler.order()
    docs = [(s, per_source[s][j]) for s, j in zip(order.source.tolist(), order.sample.tolist(), strict=True)]
    rows = pack_loop(docs, max_len, packing)
    columns = {"input_ids": [], "labels": [], "doc_sources": []}
    for row in rows:
        ids, labels = [], []
        for _, (doc_ids, doc_labels) in row:
            ids += doc_ids
            labels += doc_labels
        columns["input_ids"].append(ids)
        columns["labels"].append(labels)
        columns["doc_sources"].append([source for source, _ in row])
    Dataset.from_dict(columns).save_to_disk(str(out))
    return {"samples": sum(map(len, per_source)), "rows": len(rows)}


def pack_loop(docs: list, max_len: int, packing: str, window: int = 256, open_rows: int = 8) -> list[list]:
    """Greedy windows (the paper's loop) or best fit over a few open rows, on Python lists."""
    rows: list[list] = []
    if packing == "greedy":
        for start in range(0, len(docs), window):
            row, fill = [], 0
            for doc in docs[start : start + window]:
                n = len(doc[1][0])
                if fill + n > max_len:
                    rows.append(row)
                    row, fill = [], 0
                row.append(doc)
                fill += n
            rows.append(row)
        return rows
    open_, fills, born, created = [], [], [], 0
    for doc in docs:
        n = len(doc[1][0])
        best = max((j for j in range(len(open_)) if fills[j] + n <= max_len), key=lambda j: fills[j], default=-1)
        if best < 0:
            while open_ and (len(open_) == open_rows or born[0] <= created - open_rows):
                rows.append(open_.pop(0))
                fills.pop(0)
                born.pop(0)
            open_.append([])
            fills.append(0)
            born.append(created)
            created += 1
            best = len(open_) - 1
        open_[best].append(doc)
        fills[best] += n
        if fills[best] == max_len:
            rows.append(open_.pop(best))
            fills.pop(best)
            born.pop(best)
    return rows + open_


# ----------------------------------------------------------------------------------------------------- pipeline
def pipeline_prepare(sources: dict[str, dict], tokenizer, max_len: int, seed: int, packing: str, cache: Path):
    """``huatuo.data.prepare.prepare`` on the same sources, from scratch."""
    from huatuo.data.prepare import prepare
    from huatuo.data.settings import PackingSettings, sources_from_config

    specs = sources_from_config(sources)
    settings = PackingSettings(max_len=max_len, packing=packing, seed=seed)
    return prepare(specs, tokenizer, settings, cache, force=True)


def same_rows(pipeline_dir: Path, baseline_dir: Path) -> bool:
    """Whether both wrote the same rows (tokens, labels, document sources) in the same order."""
    from datasets import load_from_disk

    a, b = load_from_disk(str(pipeline_dir)), load_from_disk(str(baseline_dir))
    if len(a) != len(b):
        return False
    for column in ("input_ids", "labels", "doc_sources"):
        if a.data.column(column).to_pylist() != b.data.column(column).to_pylist():
            return False
    return True


def fills(prepared, max_len: int) -> dict[str, float]:
    """Packing fill of greedy (the paper's windows of 256) and best_fit (several open_rows) on the same order."""
    from datasets import load_from_disk

    from huatuo.data.packing import pack_best_fit, pack_greedy
    from huatuo.data.sampler import PrioritySampler

    rows = load_from_disk(str(prepared.dataset_dir)).data
    sources = np.concatenate(rows.column("doc_sources").to_numpy(zero_copy_only=False)).astype(np.int64)
    samples = np.concatenate(rows.column("doc_samples").to_numpy(zero_copy_only=False))
    lengths = np.concatenate(rows.column("doc_lengths").to_numpy(zero_copy_only=False))
    stats = prepared.stats["sources"]
    sizes = [v["samples"] for v in stats.values()]
    table = [np.zeros(n, dtype=np.int64) for n in sizes]
    for s in range(len(sizes)):
        mask = sources == s
        table[s][samples[mask]] = lengths[mask]
    order = PrioritySampler(
        sizes, [v["priority"] for v in stats.values()], [v["epochs"] for v in stats.values()], 0
    ).order()
    base = np.concatenate([[0], np.cumsum(sizes)])
    doc_lengths = np.concatenate(table)[base[order.source] + order.sample]  # lengths in training order
    total = doc_lengths.sum()
    out = {"greedy (paper, window 256)": total / (len(pack_greedy(doc_lengths, max_len, 256)) * max_len)}
    for k in (1, 4, 8, 16):
        out[f"best_fit (open_rows {k})"] = total / (len(pack_best_fit(doc_lengths, max_len, k)) * max_len)
    return out


def tokenizer_only_seconds(sources: dict[str, dict], tokenizer) -> float:
    """CPU seconds the tokenizer alone needs for every text of these sources, in one batched Rust call."""
    texts = []
    for settings in sources.values():
        for path in settings["paths"]:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    for i, text in enumerate(_turns(json.loads(line))):
                        texts.append(text if i % 2 else ("\n" if i else "") + "<问>：" + text)
    started = time.process_time()
    tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    return time.process_time() - started


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it does not inherit the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_rss(folder: Path, tokenizer_spec: str, max_len: int) -> None:
    """Run the pipeline on a generated folder in this (fresh) process and print its peak RSS as JSON."""
    tokenizer = load_bench_tokenizer(tokenizer_spec)
    sources = json.loads((folder / "sources.json").read_text())
    before = peak_rss_mib()  # imports and tokenizer
    started = time.perf_counter()
    prepared = pipeline_prepare(sources, tokenizer, max_len, 0, "best_fit", folder / "cache")
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    samples = sum(v["records_read"] for v in prepared.stats["sources"].values())
    print(json.dumps({"samples": samples, "seconds": seconds, "peak_rss_mib": peak, "rss_before_mib": before}))


# ------------------------------------------------------------------------------------------------- end to end
def tokenizer_folder(model_file: Path, folder: Path) -> Path:
    """A folder laid out like the released Baichuan2 ones: ``tokenizer.model`` and a config naming its class."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model_file.read_bytes())
    config = {
        "tokenizer_class": "BaichuanTokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "model_max_length": 4096,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def data_config(sources: dict[str, dict], conf: Path, name: str, max_len: int) -> None:
    """``conf/data/<name>.yaml`` for these sources, with the demo mixture's other settings."""
    from omegaconf import OmegaConf

    from huatuo import conf_dir

    settings = OmegaConf.to_container(OmegaConf.load(Path(conf_dir()) / "data" / "demo.yaml"))
    settings.update(sources=sources, max_len=max_len, cache_dir="${paths.cache_dir}/prepared")
    (conf / "data").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(settings), conf / "data" / f"{name}.yaml")


def _tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (counts pages shared after fork once per process)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def run_measured(command: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Wall, CPU and peak memory of a command (and its workers) run as a fresh process."""
    import threading

    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tree_peak, done = 0.0, threading.Event()

    def sample() -> None:
        nonlocal tree_peak
        while not done.wait(0.05):
            tree_peak = max(tree_peak, _tree_rss_mib(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed ({process.returncode}):\n{output.decode(errors='replace')[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime  # the command and every worker it waited for
    return {"wall": wall, "cpu": cpu, "rss": usage.ru_maxrss / 1024, "tree_rss": tree_peak}


def child_baseline(folder: Path, tokenizer_spec: str, max_len: int) -> None:
    """The per-sample baseline as its own process: load the tokenizer, prepare, write (what a user would run)."""
    tokenizer = load_bench_tokenizer(tokenizer_spec)
    sources = json.loads((folder / "sources.json").read_text())
    baseline_prepare(sources, tokenizer, max_len, 0, "best_fit", folder / "baseline-out")


def end_to_end(args, rows: list[tuple[str, str, str]]) -> None:
    """The whole prepare command, cold and warm, beside the baseline process and the reference checkout."""
    sizes = [int(n) for n in args.e2e_samples.split(",")]
    started = time.perf_counter()
    torch_import = min(
        run_measured([sys.executable, "-c", "import torch"], ROOT, dict(os.environ))["wall"] for _ in range(3)
    )
    print(f"python -c 'import torch': {torch_import:.2f}s (best of 3)")
    table = []
    with tempfile.TemporaryDirectory(prefix="huatuo-e2e-") as tmp:
        tmp = Path(tmp)
        given = Path(args.tokenizer)
        tokenizer = given if given.is_dir() else tokenizer_folder(given, tmp / "tokenizer")
        for n in sizes:
            folder = tmp / f"data-{n}"
            sources = write_mixture(rows, folder, n, seed=4)
            (folder / "sources.json").write_text(json.dumps(sources))
            data_config(sources, tmp / "conf", f"bench{n}", args.max_len)
            pool = sum(int(n_s * v["epochs"]) for n_s, v in zip(_source_sizes(sources), sources.values(), strict=True))

            def command(label: str, *extra: str, n: int = n) -> list[str]:
                return [
                    sys.executable,
                    "-m",
                    "huatuo.prepare",
                    f"hydra.searchpath=[file://{tmp / 'conf'}]",
                    f"data=bench{n}",
                    f"backbone.tokenizer.path={tokenizer}",
                    f"backbone.max_len={args.max_len}",
                    f"paths.cache_dir={tmp / f'cache-{label}-{n}'}",
                    f"hydra.run.dir={tmp / 'runs' / f'{label}-{n}'}",
                    *extra,
                ]

            env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
            runs = [("huatuo, cold", command("ours"), ROOT, env)]
            runs.append(("huatuo, warm tokenizer", command("ours", "force=true"), ROOT, env))
            if n <= args.compare_max and args.reference:
                reference = Path(args.reference).resolve()
                runs.append(("reference checkout", command("ref"), reference, {**env, "PYTHONPATH": str(reference)}))
            if n <= args.compare_max:
                baseline = [sys.executable, __file__, "--child-baseline", str(folder), "--tokenizer", str(tokenizer)]
                runs.append(("per-sample baseline", [*baseline, "--max-len", str(args.max_len)], ROOT, env))
            for label, cmd, cwd, run_env in runs:
                measured = run_measured(cmd, cwd, run_env)
                stats = _stats(tmp, label, n)
                table.append((n, pool, label, measured, stats))
                print(_row(n, pool, label, measured, stats, torch_import), flush=True)
    print()
    print(
        "| conversations (pool) | run | wall s | CPU s | cores busy | peak RSS MiB (largest / all) | start-up s | "
        "read+tokenize s (cores) | order+pack s | write s | plots s |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, pool, label, measured, stats in table:
        print(_row(n, pool, label, measured, stats, torch_import))
    for n in sizes:
        runs = {label: m for size, _, label, m, _ in table if size == n}
        for ours in ("huatuo, cold", "huatuo, warm tokenizer"):
            for other in ("reference checkout", "per-sample baseline"):
                if other in runs:
                    ratio = runs[other]["wall"] / runs[ours]["wall"]
                    print(f"{n:,} conversations: {ours} is {ratio:.2f}x faster than the {other}")
    print(f"bench wall {time.perf_counter() - started:.0f}s; load average {os.getloadavg()[0]:.1f} at the end")


def _source_sizes(sources: dict[str, dict]) -> list[int]:
    return [sum(1 for path in v["paths"] for _ in open(path, encoding="utf-8")) for v in sources.values()]


def _stats(tmp: Path, label: str, n: int) -> dict | None:
    tag = {"huatuo, cold": "ours", "huatuo, warm tokenizer": "ours", "reference checkout": "ref"}.get(label)
    found = sorted((tmp / f"cache-{tag}-{n}").glob("prepared/*/stats.json")) if tag else []
    return json.loads(found[0].read_text()) if found else None


def _row(n: int, pool: int, label: str, measured: dict, stats: dict | None, torch_import: float) -> str:
    wall, cpu = measured["wall"], measured["cpu"]
    cells = [f"{n:,} ({pool:,})", label, f"{wall:.1f}", f"{cpu:.1f}", f"{cpu / wall:.2f}"]
    cells.append(f"{measured['rss']:,.0f} / {measured['tree_rss']:,.0f}")
    if stats is None:
        return "| " + " | ".join(cells + ["-"] * 5) + " |"
    phases, busy = stats.get("phase_seconds", {}), stats.get("phase_cores_busy") or {}
    start_up = stats.get("start_up_seconds")
    if start_up is None:  # an older checkout: everything before the build
        start_up = wall - stats.get("seconds", 0.0)
    cells.append(f"{start_up:.2f} (+{start_up - torch_import:.2f} vs torch)")
    tokenize = phases.get("read_and_tokenize", 0.0)
    cells.append(
        f"{tokenize:.1f} ({busy['read_and_tokenize']:.2f})" if "read_and_tokenize" in busy else f"{tokenize:.1f}"
    )
    cells.append(f"{phases.get('order', 0.0) + phases.get('pack', 0.0):.2f}")
    cells += [f"{phases.get('write', 0.0):.2f}", f"{phases.get('schedule', 0.0):.2f}"]
    return "| " + " | ".join(cells) + " |"


def timed(call) -> tuple[object, float, float]:
    """Result, wall seconds and CPU seconds (all threads of this process) of ``call()``."""
    started, cpu = time.perf_counter(), time.process_time()
    result = call()
    return result, time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    """Run the benchmark and print the numbers."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # before datasets reads it
    import datasets  # noqa: F401  (imported before any timing: both sides use it)

    import huatuo.data.prepare  # noqa: F401

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200_000, help="samples through the pipeline")
    parser.add_argument("--baseline-samples", type=int, default=50_000, help="samples through both (rates compared)")
    parser.add_argument("--rss-samples", type=int, default=1_000_000, help="peak-RSS run in a fresh process; 0 skips")
    parser.add_argument("--tokenizer", default=str(SPM), help="a tokenizer.model, or a folder/hub name")
    parser.add_argument("--csv", type=Path, default=CSV, help="dialogues: a CSV with title, ask, answer columns")
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--packing", default="best_fit", choices=["best_fit", "greedy"])
    parser.add_argument("--check-texts", type=int, default=600, help="texts checked against sentencepiece")
    parser.add_argument("--end-to-end", action="store_true", help="time the whole command as fresh processes")
    parser.add_argument("--e2e-samples", default="123000,1000000", help="conversations per end-to-end size")
    parser.add_argument("--compare-max", type=int, default=123_000, help="largest size the comparisons also run")
    parser.add_argument("--reference", help="another huatuo checkout whose prepare command runs beside ours")
    parser.add_argument("--child-rss", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-baseline", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        child_rss(args.child_rss, args.tokenizer, args.max_len)
        return
    if args.child_baseline:
        child_baseline(args.child_baseline, args.tokenizer, args.max_len)
        return
    if args.end_to_end:
        rows, _ = read_dialogues(args.csv)
        print(f"machine: {len(os.sched_getaffinity(0))} cores; load average {os.getloadavg()[0]:.1f} at the start")
        end_to_end(args, rows)
        return

    rows, cut = read_dialogues(args.csv)
    tokenizer = load_bench_tokenizer(args.tokenizer)
    cores = len(os.sched_getaffinity(0))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"machine: {cores} cores, {memory:.0f} GiB; load average {os.getloadavg()[0]:.1f} at the start")
    print(f"dialogues: {len(rows)} rows of {args.csv.name} ({cut} cut-off rows left out)")
    if args.tokenizer.endswith(".model"):
        texts = [t for title, ask, answer in rows[: args.check_texts // 3] for t in ("<问>：" + ask, answer, title)]
        texts += ["\n<答>：", "\n<问>：", "<p>表格</p><br/>", "１２３ｍｇ，每日3次。", "  多个  空格 ", "emoji 😀"]
        bad = check_against_sentencepiece(tokenizer, args.tokenizer, texts)
        print(
            f"tokenizer: {args.tokenizer} rebuilt by load_tokenizer; {len(texts) - bad}/{len(texts)} texts encode "
            "exactly as sentencepiece does"
        )
        if bad:
            sys.exit("the converted tokenizer disagrees with sentencepiece; pass --tokenizer <folder> instead")
    else:
        print(f"tokenizer: {args.tokenizer}")

    with tempfile.TemporaryDirectory(prefix="huatuo-bench-") as tmp:
        tmp = Path(tmp)
        n = args.baseline_samples
        small = write_mixture(rows, tmp / "small", n)
        _, base_wall, base_cpu = timed(
            lambda: baseline_prepare(small, tokenizer, args.max_len, 0, args.packing, tmp / "baseline")
        )
        same, same_wall, same_cpu = timed(
            lambda: pipeline_prepare(small, tokenizer, args.max_len, 0, args.packing, tmp / "cache-small")
        )
        identical = same_rows(same.dataset_dir, tmp / "baseline")
        tokenizer_cpu = tokenizer_only_seconds(small, tokenizer)
        print(
            f"baseline, one sample at a time ({n:,} samples): {n / base_wall:,.0f} samples/s "
            f"({1e6 * base_cpu / n:.0f} us CPU per sample)"
        )
        print(
            f"pipeline, same samples: {n / same_wall:,.0f} samples/s = {base_wall / same_wall:.1f}x baseline "
            f"({1e6 * same_cpu / n:.0f} us CPU per sample); rows identical to the baseline's: {identical}"
        )
        print(
            f"the tokenizer alone (one batched Rust call): {1e6 * tokenizer_cpu / n:.0f} us CPU per sample = "
            f"{100 * tokenizer_cpu / base_cpu:.0f}% of the baseline's CPU; best possible with it on {cores} cores: "
            f"{cores * base_cpu / tokenizer_cpu:.1f}x"
        )

        big = write_mixture(rows, tmp / "big", args.samples, seed=1)
        prepared, wall, cpu = timed(
            lambda: pipeline_prepare(big, tokenizer, args.max_len, 0, args.packing, tmp / "cache-big")
        )
        docs, tokens = prepared.stats["packing"]["documents"], prepared.stats["packing"]["tokens"]
        print(
            f"pipeline, {args.samples:,} samples ({docs:,} documents after epochs, {tokens / docs:.0f} tokens each): "
            f"{args.samples / wall:,.0f} samples/s in {wall:.1f}s = {args.samples / wall / (n / base_wall):.1f}x "
            f"baseline ({cpu / wall:.2f} cores busy)"
        )
        print(f"  phases (s): {json.dumps(prepared.stats['phase_seconds'])}")
        for name, fill in fills(prepared, args.max_len).items():
            print(f"fill at {args.max_len}: {name}: {100 * fill:.2f}% (padding {100 * (1 - fill):.2f}%)")
        del prepared

        if args.rss_samples:
            folder = tmp / "rss"
            (folder / "sources.json").parent.mkdir(parents=True)
            sources = write_mixture(rows, folder, args.rss_samples, seed=2)
            (folder / "sources.json").write_text(json.dumps(sources))
            tokenizer.save_pretrained(tmp / "tokenizer")  # the child loads it ready-made, as training would
            command = [sys.executable, __file__, "--child-rss", str(folder), "--tokenizer", str(tmp / "tokenizer")]
            result = subprocess.run([*command, "--max-len", str(args.max_len)], capture_output=True, text=True)
            if result.returncode:
                sys.exit(f"the peak-RSS run failed:\n{result.stderr[-3000:]}")
            child = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"peak RSS at {child['samples']:,} samples: {child['peak_rss_mib']:,.0f} MiB, of which "
                f"{child['rss_before_mib']:,.0f} MiB imports and tokenizer before the first sample "
                f"({child['samples'] / child['seconds']:,.0f} samples/s in a fresh process)"
            )
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
