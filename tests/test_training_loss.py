"""The objective: the mean over every supervised token of the global batch, whatever the accumulation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict

from huatuo.core.template import IGNORE_INDEX
from huatuo.training.module import loss_multiplier, token_statistics
from huatuo.training.run import train

# Four conversations whose answers differ ~40x in length: one packed row each (greedy packing, window 1).
CONVERSATIONS = [
    ["头痛怎么办？", "休息。"],
    [
        "感冒要吃抗生素吗？",
        "大多数感冒由病毒引起，抗生素只对细菌起作用，普通感冒一般不需要吃抗生素，多休息、多喝水即可。",
    ],
    ["高血压患者饮食要注意什么？", "少盐。"],
    [
        "糖尿病患者如何控制血糖？",
        "控制血糖要从饮食、运动、药物和监测四个方面入手：饮食上定时定量，少吃精制糖和油炸食品，多吃蔬菜和全谷物；"
        "运动上每周至少一百五十分钟中等强度有氧运动；药物上遵医嘱按时服用降糖药或注射胰岛素，不要自行停药；"
        "监测上定期测量空腹和餐后血糖，每三个月复查糖化血红蛋白，出现低血糖症状时及时补充含糖食物。",
    ],
]


class Recorder(Callback):
    """Keeps the initial weights, the rows of every micro-batch and the gradients of the first optimizer step."""

    def __init__(self) -> None:
        self.initial: dict[str, torch.Tensor] = {}
        self.rows: list[list[int]] = []
        self.grads: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rows.append(batch["rows"].tolist())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.grads:  # before clipping (clipping is off here anyway)
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()}


def run_one_step(train_config, tmp_path, name: str, micro_batch_size: int, accumulate: int):
    data_file = tmp_path / "uneven.jsonl"
    data_file.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in CONVERSATIONS))
    cfg = train_config(
        f"paths.run_dir={tmp_path / name}",
        "trainer.max_steps=1",
        f"data.micro_batch_size={micro_batch_size}",
        f"trainer.accumulate_grad_batches={accumulate}",
        "trainer.gradient_clip_val=null",
        "data.packing=greedy",
        "data.window=1",
        "export.enabled=false",
    )
    with open_dict(cfg):
        cfg.data.sources = {"uneven": {"paths": [str(data_file)], "format": "jsonl", "priority": 1, "epochs": 1}}
    recorder = Recorder()
    metrics = train(cfg, extra_callbacks=[recorder])
    return cfg, metrics, recorder


def test_four_accumulated_micro_batches_of_one_equal_one_micro_batch_of_four(train_config, tmp_path):
    cfg, whole, one = run_one_step(train_config, tmp_path, "whole", micro_batch_size=4, accumulate=1)
    _, accumulated, four = run_one_step(train_config, tmp_path, "accumulated", micro_batch_size=1, accumulate=4)
    assert one.rows == [[0, 1, 2, 3]] and four.rows == [[0], [1], [2], [3]]  # the same rows, split differently
    assert one.initial.keys() == four.initial.keys()
    assert all(torch.equal(one.initial[k], four.initial[k]) for k in one.initial)

    # The reference: one forward of the four rows, summed token losses over the supervised-token count.
    from datasets import load_from_disk

    from huatuo.data.prepare import prepare
    from huatuo.data.settings import settings_from_config, sources_from_config

    tokenizer = instantiate(cfg.backbone.tokenizer)
    data = dict(cfg.data)
    prepared = prepare(
        sources_from_config({"uneven": dict(cfg.data.sources.uneven)}),
        tokenizer,
        settings_from_config(data),
        cfg.data.cache_dir,
    )
    rows = load_from_disk(str(prepared.dataset_dir)).with_format("numpy")[:4]
    supervised = [int(n) for n in rows["n_supervised"]]
    assert max(supervised) > 20 * min(supervised)  # very different numbers of supervised tokens per row
    model = instantiate(cfg.backbone.model)()
    model.load_state_dict(one.initial)
    token_losses, token_counts = [], []
    for ids, labels in zip(rows["input_ids"], rows["labels"], strict=True):
        ids, labels = torch.as_tensor(ids)[None].long(), torch.as_tensor(labels)[None].long()
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        targets = labels[0, 1:]
        losses = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none")
        token_losses.append(losses.sum())
        token_counts.append(int((targets != IGNORE_INDEX).sum()))
    expected = float(sum(token_losses) / sum(token_counts))
    mean_of_row_means = float(sum(loss / n for loss, n in zip(token_losses, token_counts, strict=True)) / 4)
    assert abs(expected - mean_of_row_means) > 1e-3  # the test tells the two objectives apart

    assert whole["train/loss"] == pytest.approx(expected, rel=1e-5)
    assert accumulated["train/loss"] == pytest.approx(expected, rel=1e-5)
    for name, grad in one.grads.items():
        torch.testing.assert_close(four.grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_token_statistics_sum_losses_and_count_per_source():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, 2, IGNORE_INDEX, 4, 5], [IGNORE_INDEX, 6, 0, IGNORE_INDEX, IGNORE_INDEX]])
    sources = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, -1, -1]])
    stats = token_statistics(logits, labels, sources, n_sources=2)
    # position t predicts label t+1: supervised targets are (row 0) 2, 4, 5 and (row 1) 6, 0
    expected = [F.cross_entropy(logits[0, t][None], labels[0, t + 1][None]) for t in (0, 2, 3)]
    expected += [F.cross_entropy(logits[1, t][None], labels[1, t + 1][None]) for t in (0, 1)]
    assert stats["supervised"].item() == 5
    assert stats["loss_sum"].item() == pytest.approx(float(sum(expected)), rel=1e-6)
    # the source of a target token is the source of the label position: source 0 has one target (label 2)
    assert stats["source_tokens"].tolist() == [1.0, 4.0]
    assert stats["source_loss"][0].item() == pytest.approx(float(expected[0]), rel=1e-6)


@pytest.mark.parametrize(
    ("world", "accumulate", "deepspeed", "expected"),
    [(1, 1, False, 1), (1, 4, False, 4), (8, 4, False, 32), (8, 4, True, 128), (2, 1, True, 2)],
)
def test_loss_multiplier_undoes_what_each_strategy_divides_by(world, accumulate, deepspeed, expected):
    # Lightning divides by accumulate, ranks average (x world); DeepSpeed's engine divides by accumulate again.
    assert loss_multiplier(world, accumulate, deepspeed) == expected


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_precisions_train_on_cpu(train_config, tmp_path, precision):
    cfg = train_config(f"trainer.precision={precision}", "trainer.max_steps=2", f"paths.run_dir={tmp_path / precision}")
    metrics = train(cfg)
    assert metrics["global_step"] == 2
    assert abs(metrics["train/loss"] - 8.3) < 0.2  # ~ln(4096) at random init, computed in fp32 from bf16 logits
    config = json.loads((tmp_path / precision / "export" / "config.json").read_text())
    assert config["dtype"] == ("bfloat16" if precision == "bf16-true" else "float32")
