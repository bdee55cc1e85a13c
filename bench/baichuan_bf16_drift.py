"""bf16 against fp32 logits of the native Baichuan2 classes, and of the original's inference-time ALiBi form.

    python bench/baichuan_bf16_drift.py [--length 1024]

Random-init models (4 layers), the same weights in fp32 and bf16. For ALiBi it also runs the original code's
inference path (written out in tests/baichuan_reference.py), whose bias is ``slope * key index``: numbers up to
``slope * length`` that bf16 rounds in steps of up to 16, against huatuo's ``slope * (key - query)``.
Results: docs/backbones.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.baichuan_reference, from a checkout

from huatuo.models.baichuan.config import BaichuanConfig
from huatuo.models.baichuan.modeling import BaichuanForCausalLM
from tests.baichuan_reference import reference_logits  # noqa: E402


def drift(candidate: torch.Tensor, reference: torch.Tensor) -> str:
    """Max and mean absolute logit difference, and how often the top token agrees."""
    diff = (candidate.float() - reference).abs()
    agree = (candidate.float().argmax(-1) == reference.argmax(-1)).float().mean()
    return f"max {diff.max():.4f}  mean {diff.mean():.5f}  argmax agreement {agree:.3f}"


def main() -> None:
    """Print the drift table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1024)
    args = parser.parse_args()
    for position_embedding, heads, hidden in (("rope", 8, 256), ("alibi", 8, 256), ("alibi", 40, 320)):
        config = BaichuanConfig(
            vocab_size=1000,
            hidden_size=hidden,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=heads,
            position_embedding=position_embedding,
            model_max_length=args.length,
        )
        torch.manual_seed(0)
        model = BaichuanForCausalLM(config).eval()
        ids = torch.randint(3, 1000, (1, args.length), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            reference = model(ids, use_cache=False).logits
            state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
            original = reference_logits(state, config, ids)
            native = model.to(torch.bfloat16)(ids, use_cache=False).logits
        label = f"{position_embedding:5s} {heads:2d} heads, {args.length} tokens"
        print(f"{label}  huatuo bf16:           {drift(native, reference)}")
        print(f"{label}  original-form bf16:    {drift(original, reference)}")
        print(f"{label}  (mean |logit| {reference.abs().mean():.3f})")


if __name__ == "__main__":
    main()
