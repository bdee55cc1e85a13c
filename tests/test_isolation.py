"""Attention isolation: with ``isolate: true`` every packed document sees only itself.

transformers builds the packed-sequence mask from position ids that restart at 0 (no attention mask, no cache:
``masking_utils.find_packed_sequence_indices``), so the logits of a document inside a packed row must equal its
logits run alone. Checked on a random tiny Llama with both SDPA and eager attention, directly and through the
prepared rows and the collator that training uses.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from huatuo.data.datamodule import PackedRowsDataset, RowCollator
from huatuo.data.packing import position_ids
from huatuo.data.prepare import prepare
from huatuo.data.settings import PackingSettings
from huatuo.data.sources import SourceSpec

ATTENTION = ["sdpa", "eager"]


def tiny_llama(attention: str, vocab: int = 4096) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        attn_implementation=attention,
    )
    return LlamaForCausalLM(config).eval()


def logits(model, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():  # as in training: no attention mask, no cache
        return model(input_ids=ids, position_ids=positions, use_cache=False).logits


@pytest.mark.parametrize("attention", ATTENTION)
def test_each_packed_document_has_the_logits_it_has_alone(attention):
    model = tiny_llama(attention, vocab=97)
    generator = torch.Generator().manual_seed(1)
    lengths = [[5, 9, 1, 7], [12, 3]]  # two rows, with a one-token document and padding at the end
    row_len = 24
    docs = [[torch.randint(4, 97, (n,), generator=generator) for n in row] for row in lengths]
    ids = torch.zeros(2, row_len, dtype=torch.long)
    for r, row in enumerate(docs):
        flat = torch.cat(row)
        ids[r, : len(flat)] = flat
    positions = torch.from_numpy(np.stack([position_ids(row, row_len, isolate=True) for row in lengths]))
    packed = logits(model, ids, positions)
    for r, row in enumerate(docs):
        start = 0
        for doc in row:
            alone = logits(model, doc[None], torch.arange(len(doc))[None])
            torch.testing.assert_close(packed[r, start : start + len(doc)], alone[0], rtol=1e-4, atol=1e-5)
            start += len(doc)


@pytest.mark.parametrize("attention", ATTENTION)
def test_without_isolation_later_documents_see_earlier_ones(attention):
    # The paper's packing (isolate: false): one causal sequence per row, so only the first document is unchanged.
    model = tiny_llama(attention, vocab=97)
    generator = torch.Generator().manual_seed(2)
    first, second = torch.randint(4, 97, (6,), generator=generator), torch.randint(4, 97, (5,), generator=generator)
    row = torch.cat([first, second])[None]
    packed = logits(model, row, torch.from_numpy(position_ids([6, 5], 11, isolate=False))[None])
    torch.testing.assert_close(packed[0, :6], logits(model, first[None], torch.arange(6)[None])[0])
    alone = logits(model, second[None], torch.arange(5)[None])[0]
    assert (packed[0, 6:] - alone).abs().max() > 1e-3


@pytest.fixture(scope="module")
def demo_rows(tmp_path_factory, tiny_tokenizer) -> PackedRowsDataset:
    """Demo Q&A pairs and dialogues prepared and packed at 512 tokens."""
    from huatuo import asset_path

    demo = [asset_path("demo/huatuo2_demo.json")]
    specs = [SourceSpec(name=name, paths=demo, format="huatuo_json") for name in ("web_cn", "web_en", "sft")]
    settings = PackingSettings(max_len=512, packing="best_fit", seed=3)
    prepared = prepare(specs, tiny_tokenizer, settings, tmp_path_factory.mktemp("isolation"))
    return PackedRowsDataset(str(prepared.dataset_dir))


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("pad_to", ["max_len", "longest"])
def test_prepared_rows_through_the_collator_keep_documents_apart(attention, pad_to, demo_rows, tiny_tokenizer):
    rows = [r for r in range(len(demo_rows)) if len(demo_rows[r]["doc_lengths"]) >= 3][:2]
    assert len(rows) == 2
    collate = RowCollator(tiny_tokenizer.pad_token_id, 512, True, pad_to, np.ones(1), 10**9, 3)
    batch = collate(demo_rows.__getitems__(rows))
    assert batch["input_ids"].shape[1] == (
        512 if pad_to == "max_len" else max(len(demo_rows[r]["input_ids"]) for r in rows)
    )
    model = tiny_llama(attention)
    packed = logits(model, batch["input_ids"], batch["position_ids"])
    for i, r in enumerate(rows):
        item, start = demo_rows[r], 0
        for n in item["doc_lengths"].tolist():
            doc = torch.as_tensor(item["input_ids"][start : start + n], dtype=torch.long)[None]
            alone = logits(model, doc, torch.arange(n)[None])[0]
            torch.testing.assert_close(packed[i, start : start + n], alone, rtol=1e-4, atol=1e-5)
            start += n
