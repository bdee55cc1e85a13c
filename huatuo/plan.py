"""``python -m huatuo.plan`` (``huatuo-plan``): the GPU memory a training command needs, before you rent the GPUs.

    python -m huatuo.plan experiment=huatuogpt2_7b
    python -m huatuo.plan backbone=baichuan2_13b strategy=deepspeed_zero3 trainer.devices=8 trainer.precision=bf16-mixed

Composes ``conf/plan.yaml`` (the train.py composition), builds the model on the meta device (no weights are read)
and prints the memory per GPU and the largest micro-batch that fits; nothing is written. The planner itself is
``huatuo.training.plan``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from huatuo import conf_dir
from huatuo.core.cli import reports_errors


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="plan")
@reports_errors
def main(cfg: DictConfig) -> float:
    """Print the memory plan of the composed config; returns the GiB per GPU."""
    from huatuo.training.memory import GIB
    from huatuo.training.plan import plan_from_config, render

    plan = plan_from_config(cfg)
    render(plan, name=str(cfg.backbone.get("name", "")))
    return plan.total / GIB


if __name__ == "__main__":
    main()
