"""Helpers for embedding PoSE in Megatron-LM's pretrain_gpt.py, on real Megatron-Core.

The helpers inside the real Megatron-LM script (both releases) are run by
tools/check_megatron_lm.sh, which needs a Megatron-LM checkout that CI does not have.
"""

import argparse
import functools
import os

import numpy as np
import pytest

from pose_megatron import megatron_lm
from tests.distributed import run_distributed


def _pose_args(*argv, **megatron_fields):
    # PoSE's own flags parsed by add_pose_args; the Megatron-LM fields the helpers read are given
    # as values (CI has no Megatron-LM checkout: tools/check_megatron_lm.sh runs the real script).
    args = megatron_lm.add_pose_args(argparse.ArgumentParser()).parse_args(list(argv))
    for name, value in megatron_fields.items():
        setattr(args, name, value)
    return args


def test_extra_args_provider_chains_the_scripts_own():
    # Megatron-LM's pretrain_gpt.py already passes a provider (ModelOpt's); PoSE's flags chain on.
    def existing(parser):
        parser.add_argument("--export-te-mcore-model", action="store_true")
        return parser

    parser = megatron_lm.pose_extra_args_provider(existing)(argparse.ArgumentParser())
    args = parser.parse_args(["--export-te-mcore-model", "--pose-target-len", "4096"])
    assert args.export_te_mcore_model and args.pose_target_len == 4096
    assert megatron_lm.pose_extra_args_provider(None)(argparse.ArgumentParser()).parse_args(
        ["--pose-target-len", "8"]).pose_target_len == 8


def test_pose_settings_of_a_megatron_lm_job_read_every_flag():
    # Every value differs from its default, so a flag read under another name would show.
    from pose_megatron.positions import PoseSettings

    args = _pose_args("--pose-target-len", "8192", "--pose-num-chunks", "3", "--pose-scheme",
                      "uniform", "--pose-content-offset", "equal_u", "--pose-short-docs", "pack",
                      "--pose-max-doc-len", "4000", seq_length=2048, seed=77)
    assert megatron_lm.pose_settings(args) == PoseSettings(
        train_len=2048, target_len=8192, num_chunks=3, scheme="uniform", content_offset="equal_u",
        seed=77, max_doc_len=4000, short_docs="pack")
    args.pose_train_len = 1024  # must equal --seq-length
    with pytest.raises(ValueError, match="--pose-train-len 1024 must equal --seq-length 2048"):
        megatron_lm.pose_settings(args)
    args.pose_train_len = None
    del args.pose_num_chunks  # add_pose_args was not chained in
    with pytest.raises(AttributeError, match="pose_num_chunks"):
        megatron_lm.pose_settings(args)


def test_rope_scaling_type_is_required_beyond_the_window():
    args = _pose_args("--pose-target-len", "8192", seq_length=2048, max_position_embeddings=2048)
    with pytest.raises(ValueError, match="--rope-scaling-type is required"):
        megatron_lm.rope_settings(args)
    args = _pose_args("--pose-target-len", "8192", "--rope-scaling-type", "linear",
                      seq_length=2048, max_position_embeddings=2048)
    assert megatron_lm.rope_settings(args)["rope_scaling"] == {"rope_type": "linear",
                                                                       "factor": 4.0}


def test_target_beyond_rope_range_is_refused():
    args = _pose_args("--pose-target-len", "32768", "--rope-scaling-type", "linear",
                      "--rope-scaling-factor", "8", seq_length=2048, max_position_embeddings=2048)
    with pytest.raises(ValueError, match="exceeds the RoPE range 16384"):
        megatron_lm.rope_settings(args)


def _wrapped_provider(rank, world):
    import torch
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    from pose_megatron import parallel

    parallel.initialize(device="cpu", seed=3)
    transformer = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4,
                                    normalization="RMSNorm", gated_linear_unit=True,
                                    add_bias_linear=False, hidden_dropout=0.0,
                                    attention_dropout=0.0, use_cpu_initialization=True)

    def gpt_builder(args, pre_process, post_process, vp_stage=None, config=None,
                    pg_collection=None):  # the signature of Megatron-LM's gpt_builders.gpt_builder
        return GPTModel(config or transformer, get_gpt_layer_local_spec(normalization="RMSNorm"), 128, 64,
                        pre_process=pre_process, post_process=post_process,
                        position_embedding_type="rope")

    args = _pose_args("--pose-target-len", "64", "--rope-scaling-type", "none", seq_length=16,
                      max_position_embeddings=64, rotary_base=10000, hidden_size=64,
                      num_attention_heads=4, kv_channels=None)

    def model_provider(model_builder, pre_process=True, post_process=True, vp_stage=None,
                       config=None, pg_collection=None):  # 0.15+: the builder comes first
        return model_builder(args, pre_process, post_process, vp_stage, config=config,
                             pg_collection=pg_collection)

    stock = model_provider(gpt_builder)
    # as pretrain() calls it: keywords only (0.19 adds config= and pg_collection=)
    pose = megatron_lm.pose_model_provider(functools.partial(model_provider, gpt_builder),
                                           get_args=lambda: args)(
        pre_process=True, post_process=True, config=None, pg_collection=None)
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


def _yarn_provider(rank, world):
    import math

    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    from pose_megatron import parallel

    parallel.initialize(device="cpu", seed=3)
    args = _pose_args("--pose-target-len", "64", "--rope-scaling-type", "yarn", seq_length=16,
                      max_position_embeddings=16, rotary_base=10000, hidden_size=64,
                      num_attention_heads=4, kv_channels=None)
    seen = {}

    def model_provider(pre_process=True, post_process=True, vp_stage=None):
        # Megatron-LM's core_transformer_config_from_args copies args.softmax_scale into the config
        seen["softmax_scale"] = args.softmax_scale
        config = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4,
                                   normalization="RMSNorm", gated_linear_unit=True,
                                   add_bias_linear=False, use_cpu_initialization=True,
                                   softmax_scale=args.softmax_scale)
        return GPTModel(config, get_gpt_layer_local_spec(normalization="RMSNorm"), 128, 16,
                        position_embedding_type="rope")

    megatron_lm.pose_model_provider(model_provider, get_args=lambda: args)()
    # YaRN x4 scales cos and sin by 0.1 ln 4 + 1, so the logits by its square; head dim 16
    return seen["softmax_scale"], (0.1 * math.log(4) + 1) ** 2 / math.sqrt(16)


def test_wrapped_provider_gives_megatron_lm_yarns_attention_scale():
    got, want = run_distributed(_yarn_provider, 1)[0]
    assert got == pytest.approx(want, rel=1e-12)


def _get_batch(rank, world):
    from pose_megatron import parallel
    from pose_megatron.training.batch import collate
    from pose_megatron.data.synthetic import SyntheticPoseDataset
    from pose_megatron.positions import PoseSettings

    parallel.initialize(device="cpu")
    dataset = SyntheticPoseDataset(2, 256, PoseSettings(16, 64, seed=2))
    batch = collate([dataset[0], dataset[1]])
    out = megatron_lm.pose_get_batch(iter([batch]), None, device="cpu")
    keyed = megatron_lm.pose_get_batch(iter([batch]), None, keys=["position_ids", "cu_seqlens",
                                                                   "tokens"], device="cpu")
    as_np = lambda ts: [None if t is None else t.numpy() for t in ts]  # noqa: E731
    return as_np(out), as_np(keyed), {k: v.numpy() for k, v in batch.items()}


def test_pose_get_batch_has_megatron_lm_tuple_order():
    out, keyed, batch = run_distributed(_get_batch, 1)[0]
    # 0.16's get_batch: six values, packed_seq_params last
    tokens, labels, loss_mask, attention_mask, position_ids, packed_seq_params = out
    np.testing.assert_array_equal(tokens, batch["tokens"])
    np.testing.assert_array_equal(labels, batch["labels"])
    np.testing.assert_array_equal(loss_mask, batch["loss_mask"])
    np.testing.assert_array_equal(position_ids, batch["position_ids"])
    assert attention_mask is None and packed_seq_params is None and position_ids.max() >= 16
    # 0.19's: one value per requested key, in the caller's order
    np.testing.assert_array_equal(keyed[0], batch["position_ids"])
    assert keyed[1] is None
    np.testing.assert_array_equal(keyed[2], batch["tokens"])


def _as_saved_by_pretrain(ckpt, **flags):
    """Make a converted legacy checkpoint look as Megatron-LM's pretrain() leaves one: no
    pose_model.json, and in the common state the job's own args (its flags) instead of ours."""
    import glob
    import os

    import torch

    from pose_megatron.checkpoint import store

    for path in glob.glob(os.path.join(ckpt, "**", "pose_model.json"), recursive=True):
        os.remove(path)
    for path in glob.glob(os.path.join(ckpt, "release", "mp_rank_*", "model_optim_rng.pt")):
        blob = store.load_rank_file(path)
        args = blob["args"]
        vars(args).pop("pose_model", None)  # our converter adds it; a job's args do not have it
        for name, value in flags.items():
            setattr(args, name, value)
        torch.save(blob, path + ".tmp")  # a new file: the loaded one is memory-mapped
        os.replace(path + ".tmp", path)


def test_reverse_conversion_reads_the_args_of_a_megatron_lm_job(tmp_path):
    import json
    import os
    import shutil

    import torch

    from pose_megatron.config import ModelArgs
    from pose_megatron.convert import hf_to_megatron, megatron_to_hf
    from tests.hf_families import hf_state, make_hf_model, save_hf_model

    src = save_hf_model(make_hf_model("llama2"), str(tmp_path / "hf"))
    base = tmp_path / "base"
    hf_to_megatron(src, str(base), fmt="legacy", progress=False)
    window = ModelArgs.load(str(base)).max_position_embeddings
    job = tmp_path / "job"
    shutil.copytree(base, job)
    # a PoSE job: window -> 4x window, linear scaling, factor from the target
    pose_flags = dict(seq_length=window, pose_train_len=None, pose_target_len=4 * window,
                      rope_scaling_type="linear", rope_scaling_factor=None,
                      rope_original_max_position=None)
    _as_saved_by_pretrain(str(job), **pose_flags)
    megatron_to_hf(str(job), str(tmp_path / "out"), progress=False)
    config = json.load(open(tmp_path / "out" / "config.json"))
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    assert config["num_key_value_heads"] == 4 and config["vocab_size"] == 256
    got = hf_state(str(tmp_path / "out"))
    for name, tensor in hf_state(src).items():
        assert torch.equal(got[name], tensor), name

    # the base's pose_model.json copied beside the job's weights: plain RoPE, not what was trained
    shutil.copy(base / "pose_model.json", job / "pose_model.json")
    with pytest.raises(ValueError, match="disagrees with the Megatron-LM args.*rope_scaling"):
        megatron_to_hf(str(job), str(tmp_path / "refused"), progress=False)
    assert not os.path.exists(tmp_path / "refused")
    os.remove(job / "pose_model.json")

    # a target beyond the window with no scaling type named: cannot tell the trained RoPE
    _as_saved_by_pretrain(str(job), rope_scaling_type=None)
    with pytest.raises(ValueError, match="--rope-scaling-type is required"):
        megatron_to_hf(str(job), str(tmp_path / "unknown"), progress=False)

    # Megatron-LM's own LLaMA 3.1 scaling (no PoSE helpers)
    _as_saved_by_pretrain(str(job), pose_target_len=None, use_rope_scaling=True,
                          rope_scaling_factor=8.0)
    megatron_to_hf(str(job), str(tmp_path / "llama3"), progress=False)
    scaling = json.load(open(tmp_path / "llama3" / "config.json"))["rope_scaling"]
    assert scaling["rope_type"] == "llama3" and scaling["factor"] == 8.0
    assert scaling["original_max_position_embeddings"] == 8192


# ---------------------------------------------------------------------------------------------
# The patches of Megatron-LM's scripts apply to the scripts of their tags

_PATCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "examples", "megatron_lm")
# plain extracted trees of the tags (core_v0.16.1/, core_v0.19.0/); tools/check_megatron_lm.sh
# applies the patches to a whole checkout and runs them
MEGATRON_LM_TREES = os.environ.get("POSE_MEGATRON_LM_TREES", "/work/mlm")


@pytest.mark.parametrize("patch", sorted(n for n in os.listdir(_PATCH_DIR) if n.endswith(".patch")))
def test_patch_applies_at_its_tag(patch, tmp_path):
    import re
    import shutil
    import subprocess

    script, tag = re.fullmatch(r"(pretrain_\w+?)_(core_v[\d.]+)\.patch", patch).groups()
    src = os.path.join(MEGATRON_LM_TREES, tag, f"{script}.py")
    if not os.path.isfile(src):
        pytest.skip(f"no Megatron-LM {tag} tree at {os.path.dirname(src)} "
                    "(POSE_MEGATRON_LM_TREES names the folder of the tags' trees)")
    shutil.copy(src, tmp_path / f"{script}.py")
    out = subprocess.run(["git", "apply", "--check", os.path.join(_PATCH_DIR, patch)],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
