"""Baichuan2 tokenizer construction: huatuo's (``huatuo.models.sentencepiece``) against transformers'.

    .venv/bin/python bench/tokenizer.py [--model ../shared/assets/baichuan2/tokenizer.model] [--repeat 3]

Both are built from the same ``tokenizer.model`` in this process and encode the same texts: the questions and
answers of the patient dialogues in ``../shared/data/medical_dialogue_zh``, or the demo dialogues when
that folder is absent. Prints CPU microseconds per text for each (two alternating rounds, the best of each), their
ratio, whether their ids agree on every text, and how many single vocabulary pieces each encodes unlike
``sentencepiece``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def texts_to_encode(repeat: int) -> list[str]:
    texts: list[str] = []
    for path in sorted((SHARED / "data" / "medical_dialogue_zh").glob("*.csv")):
        with path.open(encoding="utf-8", errors="replace", newline="") as handle:
            for row in csv.DictReader(handle):
                texts += [row.get("ask") or "", row.get("answer") or ""]
    if not texts:  # no shared data: the project's own demo dialogues
        import json

        demo = json.loads((ROOT / "huatuo/assets/demo/huatuo2_demo.json").read_text(encoding="utf-8"))
        texts = [turn for dialogues in demo.values() for dialogue in dialogues for turn in dialogue]
    return texts * repeat


def cpu_per_text(tokenizer, texts: list[str]) -> float:
    start = time.process_time()
    tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    return 1e6 * (time.process_time() - start) / len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHARED / "assets/baichuan2/tokenizer.model"))
    parser.add_argument("--repeat", type=int, default=3, help="copies of the text set")
    args = parser.parse_args()
    import sentencepiece
    from transformers import TokenizersBackend

    from huatuo.models.loading import load_tokenizer

    folder = Path(tempfile.mkdtemp())
    try:
        shutil.copy(args.model, folder / "tokenizer.model")
        theirs = TokenizersBackend.from_pretrained(str(folder), add_bos_token=False, add_eos_token=False)
        ours = load_tokenizer(str(folder), from_sentencepiece=True)
    finally:
        shutil.rmtree(folder)
    texts = texts_to_encode(args.repeat)
    rounds = {"transformers": [], "huatuo": []}
    for _ in range(2):
        rounds["transformers"].append(cpu_per_text(theirs, texts))
        rounds["huatuo"].append(cpu_per_text(ours, texts))
    best = {name: min(values) for name, values in rounds.items()}
    print(f"{len(texts):,} texts; CPU per text: transformers' converter {best['transformers']:.0f} us, huatuo's "
          f"{best['huatuo']:.0f} us = {best['transformers'] / best['huatuo']:.2f}x")  # fmt: skip
    sample = texts[: min(len(texts), 5000)]
    same = [e.ids for e in theirs.backend_tokenizer.encode_batch(sample, add_special_tokens=False)] == [
        e.ids for e in ours.backend_tokenizer.encode_batch(sample, add_special_tokens=False)
    ]
    print(f"identical ids on {len(sample):,} texts: {same}")
    sp = sentencepiece.SentencePieceProcessor(model_file=args.model)
    pieces = [sp.id_to_piece(i).replace("\u2581", " ") for i in range(3, sp.get_piece_size()) if not sp.is_byte(i)]
    reference = sp.encode(pieces)
    for name, tokenizer in (("transformers", theirs), ("huatuo", ours)):
        ids = [e.ids for e in tokenizer.backend_tokenizer.encode_batch_fast(pieces, add_special_tokens=False)]
        wrong = [p for p, a, b in zip(pieces, ids, reference, strict=True) if a != b]
        print(f"{name}: {len(wrong)} of {len(pieces):,} single pieces encode unlike sentencepiece {wrong[:4]}")


if __name__ == "__main__":
    main()
