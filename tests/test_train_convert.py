"""The README's main job: HF model -> Megatron (converter) -> PoSE training -> HF again."""

import json

import numpy as np
import pytest

from tests.distributed import run_distributed


def _job(rank, world, root, family):
    import torch
    import transformers
    from safetensors.numpy import load_file

    from pose_megatron.convert.api import hf_to_megatron, megatron_to_hf
    from pose_megatron.train import main

    shape = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if family == "qwen3":  # QK norm, head_dim != hidden/heads, tied
        shape.update(head_dim=24, tie_word_embeddings=True)
    name = {"llama": "Llama", "qwen3": "Qwen3"}[family]
    cfg = getattr(transformers, f"{name}Config")(**shape)
    torch.manual_seed(0)
    getattr(transformers, f"{name}ForCausalLM")(cfg).save_pretrained(f"{root}/hf")
    hf_to_megatron(f"{root}/hf", f"{root}/mg", progress=False)
    history = main(["--mock-data", "--device", "cpu", "--load", f"{root}/mg", "--save",
                    f"{root}/out", "--pose-train-len", "32", "--pose-target-len", "256",
                    "--rope-scaling-type", "linear", "--train-iters", "3", "--lr", "1e-3"])
    megatron_to_hf(f"{root}/out", f"{root}/hf2", progress=False)
    before = load_file(f"{root}/hf/model.safetensors")
    after = load_file(f"{root}/hf2/model.safetensors")
    changed = min(float(np.abs(before[k] - after[k]).max()) for k in before)  # every tensor
    return [h["loss"] for h in history], changed, sorted(after) == sorted(before)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_hf_to_pose_training_to_hf(tmp_path, family):
    losses, changed, same_keys = run_distributed(_job, 1, str(tmp_path), family)[0]
    assert len(losses) == 3 and abs(losses[0] - np.log(256)) < 0.2
    assert same_keys and changed > 0  # trained weights came back under HF's names
    config = json.loads((tmp_path / "hf2" / "config.json").read_text())
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    assert config["architectures"] == [{"llama": "LlamaForCausalLM",
                                        "qwen3": "Qwen3ForCausalLM"}[family]]
    assert (tmp_path / "out" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
