"""LoRA and QLoRA train on CPU; the export merges the adapters into plain weights that transformers (and
``transformers serve``) load without peft or remote code; the adapter alone is saved too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from transformers import AutoModelForCausalLM

from huatuo.training.run import train
from tests.servers import transformers_serve

PROMPT = torch.tensor([[1, 300, 301, 302, 303, 304, 305, 306]])


class KeepModel(Callback):
    """Holds the trained (peft) model and the frozen backbone's weights as they were at the start."""

    def __init__(self) -> None:
        self.model = None
        self.base_state: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        base = pl_module.model.get_base_model().state_dict()  # peft's wrappers sit inside the backbone
        self.base_state = {k.replace(".base_layer", ""): v.clone() for k, v in base.items() if "lora_" not in k}

    def on_train_end(self, trainer, pl_module) -> None:
        self.model = pl_module.model


def finetune(train_config, tmp_path: Path, mode: str, *overrides: str):
    keep = KeepModel()
    cfg = train_config(
        f"finetune={mode}",
        f"paths.run_dir={tmp_path / mode}",
        "trainer.max_steps=2",
        "optimizer.lr=1e-2",  # LoRA's B starts at zero: move it visibly in two steps
        "finetune.dropout=0.0",
        *overrides,
    )
    train(cfg, extra_callbacks=[keep])
    return Path(cfg.paths.run_dir), keep


def logits(model, ids: torch.Tensor = PROMPT, train_mode: bool = False) -> torch.Tensor:
    # train_mode: bitsandbytes' CPU eval path repacks 4-bit weights and needs layer widths divisible by 32 (the
    # tiny model's 688 is not); with every dropout at 0 the train-mode forward is the same function.
    model.train(train_mode)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from tests.helpers import FAST, compose_config

    tmp = tmp_path_factory.mktemp("lora")

    def make(*overrides: str):
        base = [f"paths.run_dir={tmp / 'run'}", f"paths.cache_dir={tmp / 'cache'}"]
        return compose_config("train", base + FAST + list(overrides))

    return finetune(make, tmp, "lora")


def test_lora_trains_adapters_only_and_checkpoints_them_alone(lora_run):
    run, keep = lora_run
    trainable = {n for n, p in keep.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["state_dict"] and all("lora_" in k for k in checkpoint["state_dict"])
    lora_b = [p for n, p in keep.model.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in lora_b)  # trained away from its zero init


def test_lora_export_is_a_plain_model_with_the_adapters_merged(lora_run):
    run, keep = lora_run
    export = run / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=False)
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(logits(merged), logits(keep.model), rtol=1e-4, atol=1e-4)

    # the adapter alone, stacked on the untouched backbone, gives the same model
    from peft import PeftModel

    base = AutoModelForCausalLM.from_config(merged.config)
    base.load_state_dict(keep.base_state)
    assert not torch.allclose(logits(base), logits(merged), atol=1e-3)  # the adapters change the model
    stacked = PeftModel.from_pretrained(base, export / "adapter")
    torch.testing.assert_close(logits(stacked), logits(merged), rtol=1e-4, atol=1e-4)


def test_qlora_trains_on_a_4bit_backbone_and_exports_dequantized_merged_weights(train_config, tmp_path):
    import bitsandbytes as bnb

    run, keep = finetune(train_config, tmp_path, "qlora", "finetune.compute_dtype=float32")
    layers = [m for m in keep.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 4 * 7  # q, k, v, o, gate, up, down in each of the 4 layers; the head stays dense
    assert layers[0].weight.quant_type == "nf4"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all("lora_" in k for k in checkpoint["state_dict"])
    merged = AutoModelForCausalLM.from_pretrained(run / "export", trust_remote_code=False)
    assert "quantization_config" not in json.loads((run / "export" / "config.json").read_text())
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    torch.testing.assert_close(logits(merged), logits(keep.model, train_mode=True), rtol=1e-3, atol=1e-3)
    assert (run / "export" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_the_export_answers_a_chat_completion_from_transformers_serve(lora_run):
    import openai

    run, _ = lora_run
    export = run / "export"
    with transformers_serve(export) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="no-key", timeout=120)
        reply = client.chat.completions.create(
            model=str(export),
            messages=[{"role": "user", "content": "肚子疼怎么办？"}],
            max_tokens=8,
            temperature=0.0,
        )
    text = reply.choices[0].message.content
    assert isinstance(text, str) and text.strip()
