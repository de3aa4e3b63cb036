"""Helpers for embedding PoSE in a Megatron-LM pretrain_gpt.py job (0.16 and 0.19 argument shapes)."""

import argparse
import types

import numpy as np
import pytest

from pose_megatron import megatron_lm
from tests.distributed import run_distributed


def _megatron_like_parser():
    # The few Megatron-LM flags the helpers read, under Megatron-LM's names and defaults.
    p = argparse.ArgumentParser()
    p.add_argument("--seq-length", type=int)
    p.add_argument("--max-position-embeddings", type=int)
    p.add_argument("--rotary-base", type=int, default=10000)
    p.add_argument("--rope-scaling-factor", type=float, default=8.0)  # Megatron-LM's LLaMA-3.1 flag
    p.add_argument("--seed", type=int, default=1234)
    return p


def test_extra_args_provider_keeps_megatron_flags_and_adds_pose():
    parser = megatron_lm.add_pose_args(_megatron_like_parser())
    args = parser.parse_args(["--seq-length", "2048", "--max-position-embeddings", "2048",
                              "--pose-target-len", "16384", "--rope-scaling-factor", "8"])
    s = megatron_lm.pose_settings(args)
    assert (s["train_len"], s["target_len"], s["num_chunks"], s["scheme"]) == \
        (2048, 16384, 2, "reference")
    assert s["rope"] == {"rope_theta": 10000.0, "rope_scaling": {"rope_type": "linear",
                         "factor": 8.0}, "max_position": 16384, "max_position_embeddings": 2048}


def test_config_container_shape_of_0_19():
    # 0.19 groups fields into sub-configs of one container; the helpers look one level down.
    container = types.SimpleNamespace(
        model=types.SimpleNamespace(seq_length=4096, max_position_embeddings=4096,
                                    rotary_base=500000),
        pose={"pose_target_len": 131072, "rope_scaling_type": "yarn",
              "rope_scaling_factor": 32.0},
    )
    s = megatron_lm.pose_settings(container)
    assert s["train_len"] == 4096 and s["target_len"] == 131072
    assert s["rope"]["rope_scaling"] == {"rope_type": "yarn", "factor": 32.0,
                                         "original_max_position_embeddings": 4096}
    assert s["rope"]["rope_theta"] == 500000.0
    with pytest.raises(AttributeError, match="extra_args_provider"):
        megatron_lm.pose_arg(container, "no_such_flag")


def test_target_beyond_rope_range_is_refused():
    args = megatron_lm.add_pose_args(_megatron_like_parser()).parse_args(
        ["--seq-length", "2048", "--max-position-embeddings", "2048", "--pose-target-len",
         "32768", "--rope-scaling-factor", "8"])
    with pytest.raises(ValueError, match="exceeds the RoPE range 16384"):
        megatron_lm.pose_settings(args)


def _wrapped_provider(rank, world):
    import torch
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    from pose_megatron import parallel

    parallel.initialize(device="cpu", seed=3)
    config = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4,
                               normalization="RMSNorm", gated_linear_unit=True,
                               add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0,
                               use_cpu_initialization=True)

    def model_provider(pre_process=True, post_process=True, vp_stage=None):  # Megatron-LM's shape
        return GPTModel(config, get_gpt_layer_local_spec(normalization="RMSNorm"), 128, 64,
                        pre_process=pre_process, post_process=post_process,
                        position_embedding_type="rope")

    args = megatron_lm.add_pose_args(_megatron_like_parser()).parse_args(
        ["--seq-length", "16", "--max-position-embeddings", "64", "--pose-target-len", "64",
         "--rope-scaling-type", "none"])
    stock = model_provider()
    pose = megatron_lm.pose_model_provider(model_provider, get_args=lambda: args)()
    pose.load_state_dict(stock.state_dict())
    tokens = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(0))
    contiguous = torch.arange(16)[None]
    skipped = torch.cat([torch.arange(8), torch.arange(40, 48)])[None]
    with torch.no_grad():
        out = {name: m(tokens, pos, None).numpy()
               for name, m, pos in [("stock", stock, contiguous), ("stock_skip", stock, skipped),
                                    ("pose", pose, contiguous), ("pose_skip", pose, skipped)]}
    return out


def test_wrapped_model_provider_honours_position_ids():
    out = run_distributed(_wrapped_provider, 1)[0]
    # Stock Megatron-Core RoPE ignores position_ids; the wrapped model uses them ...
    np.testing.assert_array_equal(out["stock"], out["stock_skip"])
    assert np.abs(out["pose_skip"] - out["pose"]).max() > 1e-3
    # ... and with positions 0..L-1 (no scaling) it is the stock model.
    np.testing.assert_allclose(out["pose"], out["stock"], rtol=1e-5, atol=1e-5)


def _get_batch(rank, world):
    from pose_megatron import parallel
    from pose_megatron.training.batch import collate
    from pose_megatron.training.data import SyntheticPoseDataset

    parallel.initialize(device="cpu")
    dataset = SyntheticPoseDataset(2, 256, 16, 64, seed=2)
    batch = collate([dataset[0], dataset[1]])
    out = megatron_lm.pose_get_batch(iter([batch]), device="cpu")
    return [None if t is None else t.numpy() for t in out], {k: v.numpy() for k, v in batch.items()}


def test_pose_get_batch_has_megatron_lm_tuple_order():
    (tokens, labels, loss_mask, attention_mask, position_ids), batch = \
        run_distributed(_get_batch, 1)[0]
    np.testing.assert_array_equal(tokens, batch["tokens"])
    np.testing.assert_array_equal(labels, batch["labels"])
    np.testing.assert_array_equal(loss_mask, batch["loss_mask"])
    np.testing.assert_array_equal(position_ids, batch["position_ids"])
    assert attention_mask is None and position_ids.max() >= 16
