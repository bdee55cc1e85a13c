"""AdamW weight-decay groups: the same split on a plain model, under DeepSpeed ZeRO-3 partitioning and under FSDP1.

Partitioned (ZeRO-3) and flat-sharded (FSDP1) parameters are 1-D tensors whatever their real shape; a shape test
would exempt every parameter from decay. Each case runs in its own process (they set up process groups).
"""

from __future__ import annotations

import json

import pytest

from huatuo.inference.server import free_port
from tests.helpers import run_script

SCRIPT = r"""
import json, os, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from huatuo.training.module import parameter_groups

config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, attention_bias=True, tie_word_embeddings=False)

def split(model):
    names = {id(p): n.replace("_fsdp_wrapped_module.", "") for n, p in model.named_parameters()}
    groups = parameter_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    return [sorted(names[id(p)] for p in g["params"]) for g in groups]

def fsdp1(rank, port):
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = FullyShardedDataParallel(LlamaForCausalLM(config), use_orig_params=True, device_id=torch.device("cpu"))
    assert all(p.ndim == 1 for p in model.parameters())  # what makes a shape test wrong
    if rank == 0:
        print(json.dumps(split(model)), flush=True)
    dist.destroy_process_group()

if __name__ == "__main__":
    mode, port = sys.argv[1], sys.argv[2]
    if mode == "plain":
        print(json.dumps(split(LlamaForCausalLM(config))))
    elif mode == "deepspeed":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        import deepspeed
        deepspeed.init_distributed("gloo")
        with deepspeed.zero.Init(config_dict_or_path={"zero_optimization": {"stage": 3}, "train_batch_size": 1}):
            model = LlamaForCausalLM(config)
        assert all(p.ndim == 1 for p in model.parameters())  # what makes a shape test wrong
        print(json.dumps(split(model)))
    else:
        import torch.multiprocessing as mp
        mp.spawn(fsdp1, args=(port,), nprocs=2)
"""


def groups_in(mode: str, tmp_path, port: int) -> list[list[str]]:
    script = tmp_path / "groups.py"
    script.write_text(SCRIPT)
    result = run_script([str(script), mode, str(port)], timeout=300)
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("[[")][-1])


def test_plain_model_decays_matrices_only(tmp_path):
    decay, no_decay = groups_in("plain", tmp_path, 0)
    assert all(n.endswith(".weight") and "norm" not in n for n in decay)
    assert "model.embed_tokens.weight" in decay and "lm_head.weight" in decay
    assert "model.layers.0.self_attn.q_proj.weight" in decay and "model.layers.1.mlp.down_proj.weight" in decay
    norms = ("input_layernorm", "post_attention_layernorm")
    projections = ("q_proj", "k_proj", "v_proj", "o_proj")
    assert set(no_decay) == {
        *(f"model.layers.{i}.{norm}.weight" for i in (0, 1) for norm in norms),
        *(f"model.layers.{i}.self_attn.{proj}.bias" for i in (0, 1) for proj in projections),
        "model.norm.weight",
    }
    assert len(decay) == 2 + 2 * 7  # embeddings, head, and 4 attention + 3 MLP matrices per layer


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["deepspeed", "fsdp1"])
def test_sharded_parameters_get_the_same_groups(mode, tmp_path):
    assert groups_in(mode, tmp_path, free_port()) == groups_in("plain", tmp_path, 0)
