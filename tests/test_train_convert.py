"""The README's main job: HF model -> Megatron (converter) -> PoSE training -> HF again.

On megatron-core 0.19+ also with ``--model-class hybrid``: the converter's GPT-layout checkpoint
loads into the HybridModel through Megatron-Core's load-time translation, the run saves a
hybrid-layout checkpoint, and its HF export computes the logits of the run's own model."""

import json

import numpy as np
import pytest

from tests.distributed import run_distributed
from tests.model_classes import HYBRID


def _job(rank, world, root, family, model_class):
    import torch
    import transformers
    from safetensors.numpy import load_file

    from pose_megatron import parallel
    from pose_megatron.convert.api import hf_to_megatron, megatron_to_hf
    from pose_megatron.positions import pose_position_ids_batch
    from pose_megatron.training.arguments import parse_args
    from pose_megatron.training.loop import setup, train

    shape = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if family == "qwen3":  # QK norm, head_dim != hidden/heads, tied
        shape.update(head_dim=24, tie_word_embeddings=True)
    name = {"llama": "Llama", "qwen3": "Qwen3"}[family]
    cfg = getattr(transformers, f"{name}Config")(**shape)
    torch.manual_seed(0)
    getattr(transformers, f"{name}ForCausalLM")(cfg).save_pretrained(f"{root}/hf")
    hf_to_megatron(f"{root}/hf", f"{root}/mg", progress=False)
    trainer = setup(parse_args([
        "--mock-data", "--device", "cpu", "--load", f"{root}/mg", "--save", f"{root}/out",
        "--pose-train-len", "32", "--pose-target-len", "256", "--rope-scaling-type", "linear",
        "--train-iters", "3", "--lr", "1e-3", "--model-class", model_class]))
    history = train(trainer)
    trainer.save_lock.release()
    # the run's own model, after its last step, at PoSE positions reaching toward the target
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(3))
    pos = torch.as_tensor(pose_position_ids_batch(32, 256, [0, 1], seed=4).position_ids)
    model = trainer.model.module.eval()
    assert type(model).__name__ == {"gpt": "PoseGPTModel", "hybrid": "PoseHybridModel"}[model_class]
    with torch.no_grad():
        own = model(ids, pos)
    parallel.destroy()
    megatron_to_hf(f"{root}/out", f"{root}/hf2", progress=False)
    before = load_file(f"{root}/hf/model.safetensors")
    after = load_file(f"{root}/hf2/model.safetensors")
    changed = min(float(np.abs(before[k] - after[k]).max()) for k in before)  # every tensor
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(f"{root}/hf2", dtype=torch.float32)
    hf2.eval()
    with torch.no_grad():
        exported = hf2(input_ids=ids, position_ids=pos).logits
    return ([h["loss"] for h in history], changed, sorted(after) == sorted(before),
            float((exported - own).abs().max()))


@pytest.mark.parametrize("family,model_class", [("llama", "gpt"), ("qwen3", "gpt"),
                                                pytest.param("llama", "hybrid",
                                                             marks=HYBRID.marks)])
def test_hf_to_pose_training_to_hf(tmp_path, family, model_class):
    losses, changed, same_keys, diff = run_distributed(_job, 1, str(tmp_path), family,
                                                       model_class)[0]
    assert len(losses) == 3 and abs(losses[0] - np.log(256)) < 0.2
    assert same_keys and changed > 0  # trained weights came back under HF's names
    print(f"{model_class}: HF export vs the run's own model, max |logit diff| {diff:.3g}")
    assert diff <= 1e-4, f"{model_class}: HF export vs the run's own model: {diff}"
    config = json.loads((tmp_path / "hf2" / "config.json").read_text())
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    assert config["architectures"] == [{"llama": "LlamaForCausalLM",
                                        "qwen3": "Qwen3ForCausalLM"}[family]]
    assert (tmp_path / "out" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
