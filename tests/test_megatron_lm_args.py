"""Megatron-LM's saved ``args`` read and written under Megatron-LM's real dest names.

The oracle is Megatron-LM itself: the dests and defaults below were read off the parser
(``megatron.training.arguments.add_megatron_arguments``) at core_v0.16.1 and core_v0.19.0, which
agree on all of them (``tools/check_megatron_lm.sh`` compares them again with a checkout), and the
model Megatron-LM builds from a namespace follows its own ``core_transformer_config_from_args``
rule: every ``TransformerConfig`` field is taken from the namespace attribute of the same name.
Every value in ``pretrain_namespace`` differs from Megatron-LM's, HF's and our own defaults, so a
field read under the wrong name cannot pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import pytest
import torch

from tests.distributed import run_distributed

# flag -> (dest, parser default), from Megatron-LM's own parser at both tags
REAL_PARSER = {
    "--num-layers": ("num_layers", None),
    "--hidden-size": ("hidden_size", None),
    "--ffn-hidden-size": ("ffn_hidden_size", None),
    "--num-attention-heads": ("num_attention_heads", None),
    "--group-query-attention": ("group_query_attention", False),
    "--num-query-groups": ("num_query_groups", 1),
    "--kv-channels": ("kv_channels", None),
    "--seq-length": ("seq_length", None),
    "--max-position-embeddings": ("max_position_embeddings", None),
    "--position-embedding-type": ("position_embedding_type", "learned_absolute"),
    "--no-position-embedding": ("add_position_embedding", True),
    "--rotary-base": ("rotary_base", 10000),
    "--rotary-percent": ("rotary_percent", 1.0),
    "--rotary-interleaved": ("rotary_interleaved", False),
    "--use-rope-scaling": ("use_rope_scaling", False),
    "--rope-scaling-factor": ("rope_scaling_factor", 8.0),
    "--rotary-seq-len-interpolation-factor": ("rotary_seq_len_interpolation_factor", None),
    "--disable-bias-linear": ("add_bias_linear", True),
    "--add-qkv-bias": ("add_qkv_bias", False),
    "--qk-layernorm": ("qk_layernorm", False),
    "--qk-l2-norm": ("qk_l2_norm", False),
    "--squared-relu": ("squared_relu", False),
    "--swiglu": ("swiglu", False),
    "--untie-embeddings-and-output-weights": ("untie_embeddings_and_output_weights", False),
    "--apply-layernorm-1p": ("layernorm_zero_centered_gamma", False),
    "--normalization": ("normalization", "LayerNorm"),
    "--norm-epsilon": ("layernorm_epsilon", 1e-5),
    "--init-method-std": ("init_method_std", 0.02),
    "--num-experts": ("num_experts", None),
    "--make-vocab-size-divisible-by": ("make_vocab_size_divisible_by", 128),
    "--bf16": ("bf16", False),
    "--fp16": ("fp16", False),
}


def test_every_flag_the_converters_use_has_megatron_lms_dest_and_default():
    from pose_megatron.convert.megatron_lm_args import (MODEL_FLAGS, megatron_lm_default,
                                                        megatron_lm_dest)

    assert set(MODEL_FLAGS) == set(REAL_PARSER)
    for flag, (dest, default) in REAL_PARSER.items():
        assert megatron_lm_dest(flag) == dest, flag
        assert megatron_lm_default(flag) == default, flag


def pretrain_namespace(**changes) -> argparse.Namespace:
    """The args a Megatron-LM ``pretrain()`` run of a tiny LLaMA saves, every value non-default:
    ``--norm-epsilon 3e-6 --rotary-base 50000 --ffn-hidden-size 96 --kv-channels 24
    --group-query-attention --num-query-groups 2 --untie-embeddings-and-output-weights
    --init-method-std 0.013`` with a 1000-token vocabulary padded to 1024."""
    ns = argparse.Namespace(
        num_layers=2, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4,
        group_query_attention=True, num_query_groups=2, kv_channels=24, seq_length=64,
        max_position_embeddings=64, position_embedding_type="rope", add_position_embedding=True,
        use_rotary_position_embeddings=False, rotary_base=50000, rotary_percent=1.0,
        rotary_interleaved=False, use_rope_scaling=False, rope_scaling_factor=8.0,
        rotary_seq_len_interpolation_factor=None, add_bias_linear=False, add_qkv_bias=False,
        qk_layernorm=False, qk_l2_norm=False, squared_relu=False, swiglu=True,
        untie_embeddings_and_output_weights=True,
        layernorm_zero_centered_gamma=False, normalization="RMSNorm", layernorm_epsilon=3e-6,
        init_method_std=0.013, num_experts=None, make_vocab_size_divisible_by=128,
        vocab_size=1000, padded_vocab_size=1024, bf16=False, fp16=False,
        apply_query_key_layer_scaling=False, attention_dropout=0.0, hidden_dropout=0.0,
        ckpt_format="torch_dist", tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
    )
    for k, v in changes.items():
        setattr(ns, k, v)
    return ns


def test_pretrain_args_read_every_field():
    from pose_megatron.convert.megatron_lm_args import model_args_from_megatron_lm

    got = model_args_from_megatron_lm(pretrain_namespace())
    assert (got.num_layers, got.hidden_size, got.intermediate_size) == (2, 64, 96)
    assert (got.num_attention_heads, got.num_query_groups, got.head_dim) == (4, 2, 24)
    assert got.norm_eps == 3e-6
    assert got.rope_theta == 50000.0 and got.rope_scaling is None
    assert got.max_position_embeddings == 64 and got.vocab_size == 1024
    assert not got.tie_word_embeddings and not got.qkv_bias and not got.rotary_interleaved
    assert got.init_method_std == 0.013 and got.torch_dtype == "float32"


@pytest.mark.parametrize("changes, field, want", [
    ({"layernorm_epsilon": 7e-7}, "norm_eps", 7e-7),
    ({"rotary_base": 250000}, "rope_theta", 250000.0),
    ({"rotary_interleaved": True}, "rotary_interleaved", True),
    ({"ffn_hidden_size": 160}, "intermediate_size", 160),
    ({"num_query_groups": 1}, "num_query_groups", 1),
    ({"group_query_attention": False}, "num_query_groups", 4),
    ({"kv_channels": 32}, "head_dim", 32),
    ({"kv_channels": None}, "head_dim", 16),  # Megatron-LM's own rule: hidden / heads
    ({"untie_embeddings_and_output_weights": False}, "tie_word_embeddings", True),
    ({"padded_vocab_size": 1152}, "vocab_size", 1152),
    ({"add_qkv_bias": True}, "qkv_bias", True),
    ({"add_qkv_bias": True}, "family", "qwen2"),
    ({"qk_layernorm": True}, "qk_layernorm", True),
    ({"qk_layernorm": True}, "family", "qwen3"),
    ({"max_position_embeddings": 96}, "max_position_embeddings", 96),
    ({"use_rope_scaling": True, "rope_scaling_factor": 16.0}, "rope_scaling",
     {"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}),
    ({"rotary_seq_len_interpolation_factor": 4}, "rope_scaling",
     {"rope_type": "linear", "factor": 4.0}),
    ({"bf16": True}, "torch_dtype", "bfloat16"),
])
def test_each_field_changes_what_is_read(changes, field, want):
    from pose_megatron.convert.megatron_lm_args import model_args_from_megatron_lm

    assert getattr(model_args_from_megatron_lm(pretrain_namespace(**changes)), field) == want


def test_release_015_dest_names_are_read():
    """Up to core_v0.15 ``--norm-epsilon`` was stored as ``norm_epsilon``."""
    from pose_megatron.convert.megatron_lm_args import model_args_from_megatron_lm

    ns = pretrain_namespace(norm_epsilon=2e-6, apply_layernorm_1p=False)
    del ns.layernorm_epsilon, ns.layernorm_zero_centered_gamma
    assert model_args_from_megatron_lm(ns).norm_eps == 2e-6


@pytest.mark.parametrize("changes, deleted, words", [
    ({}, "layernorm_epsilon", "--norm-epsilon"),
    ({}, "rotary_base", "--rotary-base"),
    ({}, "untie_embeddings_and_output_weights", "--untie-embeddings-and-output-weights"),
    ({"layernorm_zero_centered_gamma": True}, None, "--apply-layernorm-1p"),
    ({"rotary_percent": 0.5}, None, "--rotary-percent"),
    ({"squared_relu": True}, None, "--squared-relu"),
    ({"qk_l2_norm": True}, None, "--qk-l2-norm"),
])
def test_missing_or_unexportable_fields_are_refused_by_flag(changes, deleted, words):
    from pose_megatron.convert.megatron_lm_args import model_args_from_megatron_lm

    ns = pretrain_namespace(**changes)
    if deleted:
        delattr(ns, deleted)
    with pytest.raises(ValueError, match=words):
        model_args_from_megatron_lm(ns)


_MODEL_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                 "num_query_groups", "kv_channels", "layernorm_epsilon", "add_bias_linear",
                 "add_qkv_bias", "rotary_interleaved", "normalization", "gated_linear_unit",
                 "layernorm_zero_centered_gamma", "qk_layernorm")


def megatron_lm_config(ns):
    """TransformerConfig by Megatron-LM's ``core_transformer_config_from_args`` rule."""
    import torch.nn.functional as F
    from megatron.core.transformer import TransformerConfig

    kw = {f.name: getattr(ns, f.name) for f in dataclasses.fields(TransformerConfig)
          if f.init and hasattr(ns, f.name)}
    kw.update(gated_linear_unit=ns.swiglu, activation_func=F.silu, use_cpu_initialization=True,
              bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
              bias_dropout_fusion=False, apply_rope_fusion=False,
              gradient_accumulation_fusion=False)
    return TransformerConfig(**kw)


@pytest.mark.parametrize("changes", [{}, {"kv_channels": 32, "layernorm_epsilon": 7e-7,
                                          "rotary_interleaved": True, "add_qkv_bias": True},
                                     {"qk_layernorm": True}])
def test_read_model_has_the_config_megatron_lm_builds_from_the_args(changes):
    from pose_megatron.config import model_args_to_transformer_config
    from pose_megatron.convert.megatron_lm_args import model_args_from_megatron_lm

    ns = pretrain_namespace(**changes)
    theirs = megatron_lm_config(ns)
    ours = model_args_to_transformer_config(model_args_from_megatron_lm(ns))
    for name in _MODEL_FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name


def test_written_args_use_megatron_lms_dests_and_read_back():
    from pose_megatron.config import ModelArgs
    from pose_megatron.convert.megatron_lm_args import (disagreements, megatron_lm_args,
                                                        model_args_from_megatron_lm)

    args = ModelArgs(vocab_size=1152, hidden_size=64, intermediate_size=96, num_layers=2,
                     num_attention_heads=4, num_query_groups=2, head_dim=24, norm_eps=3e-6,
                     max_position_embeddings=64, rope_theta=50000.0, init_method_std=0.013,
                     rope_scaling={"rope_type": "linear", "factor": 4.0})
    ns = megatron_lm_args(args, fmt="torch_dist")
    assert ns.layernorm_epsilon == 3e-6 and not hasattr(ns, "norm_epsilon")
    assert ns.layernorm_zero_centered_gamma is False and not hasattr(ns, "apply_layernorm_1p")
    assert ns.add_position_embedding is True and ns.add_bias_linear is False
    assert not megatron_lm_args(args, fmt="legacy", add_position_embedding=False) \
        .add_position_embedding
    del ns.pose_model  # read as a Megatron-LM run's args, from the fields alone
    assert disagreements(args, model_args_from_megatron_lm(ns)) == []


def _save_and_logits(rank, world, ns, ckpt):
    """A GPTModel built from the namespace as Megatron-LM builds it, saved as its pretrain()
    would (torch_dist, the args in the common state, no pose_model.json); its logits."""
    from megatron.core import dist_checkpointing
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from pose_megatron import parallel

    parallel.initialize(1, 1, device="cpu")
    torch.manual_seed(7)
    config = megatron_lm_config(ns)
    model = GPTModel(config, get_gpt_layer_local_spec(normalization="RMSNorm"),
                     vocab_size=ns.padded_vocab_size, max_sequence_length=ns.seq_length,
                     position_embedding_type="rope", rotary_base=ns.rotary_base,
                     share_embeddings_and_output_weights=not ns.untie_embeddings_and_output_weights)
    with torch.no_grad():  # norms away from 1, so the epsilon and a dropped norm show
        for name, p in model.named_parameters():
            if "layernorm" in name or "final_layernorm" in name:
                p.copy_(torch.rand_like(p) * 0.2 + 0.01)
    model.eval()
    ids = torch.randint(0, 1000, (1, 48), generator=torch.Generator().manual_seed(3))
    pos = torch.arange(48).unsqueeze(0)
    mask = torch.ones(1, 1, 48, 48, dtype=torch.bool).triu(1)
    with torch.no_grad():
        logits = model(ids, pos, mask)
    path = os.path.join(ckpt, "iter_0000003")
    os.makedirs(path)
    dist_checkpointing.save({"model": model.sharded_state_dict(), "args": ns,
                             "checkpoint_version": 3.0, "iteration": 3}, path)
    with open(os.path.join(ckpt, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("3")
    parallel.destroy()
    return ids, logits


def test_pretrain_checkpoint_exports_with_megatron_lms_logits(tmp_path):
    """The norm epsilon and every shape field travel into the HF export: logits equal the model
    Megatron-LM builds from the args (a 1e-5 fallback for 3e-6 misses by ~1e-2)."""
    from transformers import AutoModelForCausalLM

    from pose_megatron.convert import megatron_to_hf

    ns = pretrain_namespace()
    (ids, want), = run_distributed(_save_and_logits, 1, ns, str(tmp_path / "mlm"))
    megatron_to_hf(str(tmp_path / "mlm"), str(tmp_path / "hf"), progress=False)
    config = json.load(open(tmp_path / "hf" / "config.json"))
    assert config["rms_norm_eps"] == 3e-6 and config["head_dim"] == 24
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), torch_dtype=torch.float32)
    with torch.no_grad():
        got = hf(input_ids=ids).logits
    assert (got - want).abs().max().item() <= 1e-4
