"""The embedded demo backbone's tokenizer: a small BPE with byte fallback trained on the project's own demo text.

Rebuild the committed asset with ``python -m huatuo.models.tiny`` (deterministic for the same demo files). Byte fallback
means any text encodes, including Chinese characters the demo never shows: unseen characters become their
UTF-8 bytes (``<0xE8>`` ...), as in Llama and Baichuan2 tokenizers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from huatuo import ASSETS_DIR

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, as in Baichuan2 for the first three
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
DEFAULT_OUT = ASSETS_DIR / "tiny_tokenizer"


def demo_texts(folder: Path = ASSETS_DIR / "demo") -> Iterator[str]:
    """Every string in the bundled demo JSON/JSONL files (training data, exam, questions, passages)."""

    def strings(value) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    for path in sorted(folder.glob("*.json*")):
        text = path.read_text(encoding="utf-8")
        records = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if path.suffix == ".jsonl"
            else [json.loads(text)]
        )
        for record in records:
            yield from strings(record)
    yield from ["<问>：", "<答>：", "\n<答>：", "\n<问>："]


def build_tokenizer(texts: Iterator[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a SentencePiece-style BPE (``▁`` for spaces, no dummy prefix) with byte fallback."""
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        min_frequency=2,
        show_progress=False,
        max_token_length=8,
    )
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split("\n", behavior="isolated")  # never merge across lines
    bpe.train_from_iterator(texts, trainer=trainer)

    # Re-number: specials, then the 256 byte tokens byte fallback needs, then the learned pieces.
    learned = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS + BYTE_TOKENS:
        vocab[token] = len(vocab)
    for token, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        if token not in vocab:
            vocab[token] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    final = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    final.normalizer = normalizers.Replace(" ", "▁")
    final.pre_tokenizer = pre_tokenizers.Split("\n", behavior="isolated")
    final.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    final.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=final,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def main() -> None:
    """Rebuild ``huatuo/assets/tiny_tokenizer`` from the demo text."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()
    tokenizer = build_tokenizer(demo_texts(), args.vocab_size)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out} (vocab {len(tokenizer)})")


if __name__ == "__main__":
    main()
