"""Every option of every config group composes, and every ``_target_`` binds, without loading large weights."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from huatuo import conf_dir
from huatuo.core.errors import ConfigError
from huatuo.training.validation import check_train_config
from tests.helpers import compose_config

CONF = Path(conf_dir())
ENTRY_POINTS = sorted(p.stem for p in CONF.glob("*.yaml"))
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def group_cases() -> list[tuple[str, str, str]]:
    cases = []
    for entry in ENTRY_POINTS:
        defaults = OmegaConf.load(CONF / f"{entry}.yaml").get("defaults", [])
        groups = {next(iter(d)) for d in defaults if isinstance(d, DictConfig | dict)}
        for group in sorted(groups & set(GROUPS)):
            cases += [(entry, group, option) for option in options(group)]
    return cases


def walk_targets(node, path="") -> list[tuple[str, DictConfig]]:
    found = []
    if isinstance(node, DictConfig):
        if "_target_" in node:
            found.append((path, node))
        for key in node:
            found += walk_targets(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            found += walk_targets(item, f"{path}[{i}]")
    return found


def import_target(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


# Options with required (`???`) values: what a user must pass for them to compose.
REQUIRED = {("backbone", "hf"): ["backbone.path=Qwen/Qwen2.5-0.5B"]}


def run_dir_overrides(tmp_path) -> list[str]:
    return [f"paths.run_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"]


@pytest.mark.parametrize(("entry", "group", "option"), group_cases())
def test_every_option_composes_and_every_target_binds(entry, group, option, tmp_path):
    required = REQUIRED.get((group, option), [])
    cfg = compose_config(entry, [f"{group}={option}", *required, *run_dir_overrides(tmp_path)])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    for path, node in walk_targets(cfg):
        target = import_target(node._target_)
        kwargs = {k: v for k, v in node.items() if not str(k).startswith("_")}
        inspect.signature(target).bind_partial(**kwargs)  # every key is an argument of the target
        assert path


@pytest.mark.parametrize("option", options("strategy"))
def test_every_strategy_builds_its_lightning_object(option, tmp_path):
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    cfg = compose_config("train", [f"strategy={option}", *run_dir_overrides(tmp_path)])
    strategy = instantiate(cfg.strategy)
    expected = {
        "auto": str,
        "ddp": DDPStrategy,
        "fsdp": FSDPStrategy,
        "fsdp2": ModelParallelStrategy,
    }.get(option, DeepSpeedStrategy)
    assert isinstance(strategy, expected)
    if expected is DeepSpeedStrategy:
        zero = strategy.config["zero_optimization"]
        assert zero["stage"] == int(option.split("zero")[1][0])
        assert ("offload_param" in zero) == option.endswith("offload")


@pytest.mark.parametrize("option", options("logger"))
def test_every_logger_instantiates_without_network(option, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_config("train", [f"logger={option}", *run_dir_overrides(tmp_path)])
    from huatuo.training.run import build_loggers

    loggers = build_loggers(cfg)
    assert len(loggers) == (0 if option == "none" else 1)
    if option == "wandb":
        assert loggers[0]._offline  # no credentials: offline, never a prompt


def test_the_demo_backbone_builds_and_matches_its_tokenizer(tmp_path):
    cfg = compose_config("train", run_dir_overrides(tmp_path))
    tokenizer = instantiate(cfg.backbone.tokenizer)
    model = instantiate(cfg.backbone.model)()
    assert model.config.vocab_size == len(tokenizer)
    assert 2e6 < sum(p.numel() for p in model.parameters()) < 1e7
    assert model.config.eos_token_id == tokenizer.eos_token_id


def test_validator_collects_every_problem_at_once(tmp_path):
    cfg = compose_config(
        "train",
        [
            "strategy=deepspeed_zero2",
            "trainer.accelerator=cpu",
            "data.micro_batch_size=0",
            "data.max_len=100000",
            "resume=/no/such.ckpt",
            *run_dir_overrides(tmp_path),
        ],
    )
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)
    message = str(err.value)
    for key in ("strategy=deepspeed", "data.micro_batch_size=0", "data.max_len=100000", "resume="):
        assert key in message


@pytest.mark.parametrize("name", ["huatuogpt2_7b", "huatuogpt2_13b", "huatuogpt2_34b"])
def test_paper_experiments_validate_and_keep_the_recipe(name, tmp_path, monkeypatch):
    import huatuo.training.validation

    cfg = compose_config("train", [f"experiment={name}", *run_dir_overrides(tmp_path)])
    with pytest.raises(ConfigError, match="no CUDA device is visible") as raised:
        check_train_config(cfg)  # on this CPU machine the only complaint is the missing GPUs
    assert str(raised.value).count("\n  - ") == 1
    monkeypatch.setattr(
        huatuo.training.validation, "_cuda_available", lambda: True
    )  # as on a node of the assumed hardware
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    check_train_config(cfg)
    t, d = cfg.trainer, cfg.data
    rows = d.micro_batch_size * t.devices * t.num_nodes * t.accumulate_grad_batches
    assert rows == cfg.global_batch_size == 128 and d.max_len == 4096 and rows * d.max_len == 524_288
    assert cfg.optimizer.lr == 1e-4 and cfg.weight_decay == 0.1 and cfg.scheduler.warmup_ratio == 0.01
    assert t.max_epochs == 2 and t.precision == "bf16-mixed" and cfg.backbone.model.gradient_checkpointing
    assert cfg.finetune._target_ == "huatuo.models.finetune.full_finetune" and cfg.strategy.stage == 3
    assert list(cfg.evaluate_with) == ["eval=pharmacist", "eval.mode=generate"]
    # the paper's mixture, read from the data its authors released on the hub
    sources = cfg.data.sources
    priorities = {name: (s.priority, s.epochs) for name, s in sources.items()}
    assert priorities == {
        "web_cn": (32, 1), "web_en": (32, 1), "literature_cn": (16, 1), "literature_en": (16, 1),
        "encyclopedia_cn": (8, 1), "encyclopedia_en": (8, 1), "books_cn": (4, 1), "books_en": (4, 1), "sft": (1, 3),
    }  # fmt: skip
    assert {s.hf_name for s in sources.values()} == {
        "FreedomIntelligence/HuatuoGPT2-Pretraining-Instruction",
        "FreedomIntelligence/HuatuoGPT2-SFT-GPT4-140K",
    }


def test_prepare_and_plan_read_a_train_command_line_as_train_does(tmp_path):
    # `python -m huatuo.prepare experiment=...` must prepare exactly the data the training run will look for
    overrides = ["experiment=huatuogpt2_13b", "data.sources.sft.priority=2", *run_dir_overrides(tmp_path)]
    train = compose_config("train", overrides)
    for entry in ("prepare", "plan"):
        other = compose_config(entry, overrides)
        for key in ("data", "backbone"):
            assert OmegaConf.to_container(other[key]) == OmegaConf.to_container(train[key]), (entry, key)
        assert other.seed == train.seed
    assert compose_config("prepare", overrides).force is False
