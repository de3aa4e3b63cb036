"""``ModelArgs`` <-> the ``args`` namespace Megatron-LM keeps in a checkpoint's common state.

Megatron-LM's ``save_checkpoint`` stores its whole ``argparse.Namespace`` as ``state["args"]``;
``--use-checkpoint-args`` (``load_args_from_checkpoint`` in ``megatron/training/checkpointing.py``,
the same field list at core_v0.16.1 and core_v0.19.0) takes the model shape from it, and
``load_checkpoint`` reads the TP/PP sizes it was saved with. ``megatron_lm_args`` writes those
fields for a converted model; ``model_args_from_megatron_lm`` reads a checkpoint saved by
Megatron-LM's own ``pretrain()``, with or without the PoSE helpers, refusing what it cannot
export exactly.

Megatron-LM does not restore everything from the checkpoint: ``--norm-epsilon`` and the RoPE
scaling flags are not in its list, so a job loading with ``--use-checkpoint-args`` still passes
them (docs/embedding.md). They are written all the same, for the reverse conversion.
"""

from __future__ import annotations

import argparse
from typing import Optional

from pose_megatron.config import ModelArgs

# Megatron-LM's LLaMA 3.1 scaling (``--use-rope-scaling``) has fixed constants: megatron-core's
# RotaryEmbedding._apply_scaling defaults, unchanged 0.16-0.19.
MEGATRON_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192}
CKPT_FORMATS = {"torch_dist": "torch_dist", "legacy": "torch"}


def _rotary_base(theta: float):
    # Megatron-LM parses --rotary-base as an int
    return int(theta) if float(theta).is_integer() else float(theta)


def megatron_lm_args(args: ModelArgs, *, fmt: str, tp: int = 1, pp: int = 1) -> argparse.Namespace:
    """The Megatron-LM ``args`` a converted checkpoint carries (what ``--use-checkpoint-args`` reads).

    Megatron-LM's own RoPE flags are set where they express the model's scaling exactly (LLaMA 3.1
    with Megatron's constants, linear by an integer factor); ``pose_model`` holds the complete
    description, so the reverse conversion of this checkpoint is exact whatever the scaling.
    """
    scaling = dict(args.rope_scaling or {})
    kind = scaling.get("rope_type")
    llama3 = kind == "llama3" and all(
        float(scaling.get(k, -1)) == v for k, v in MEGATRON_LLAMA3_ROPE.items())
    factor = float(scaling.get("factor", 1.0))
    return argparse.Namespace(
        num_layers=args.num_layers, hidden_size=args.hidden_size,
        ffn_hidden_size=args.intermediate_size, num_attention_heads=args.num_attention_heads,
        group_query_attention=args.num_query_groups != args.num_attention_heads,
        num_query_groups=args.num_query_groups, kv_channels=args.head_dim,
        seq_length=args.max_position_embeddings,
        max_position_embeddings=args.max_position_embeddings,
        position_embedding_type="rope", add_position_embedding=False,
        use_rotary_position_embeddings=True, rotary_base=_rotary_base(args.rope_theta),
        rotary_percent=1.0, rotary_interleaved=args.rotary_interleaved,
        use_rope_scaling=llama3, rope_scaling_factor=factor if llama3 else 8.0,
        rotary_seq_len_interpolation_factor=(
            int(factor) if kind == "linear" and factor.is_integer() else None),
        add_bias_linear=False, add_qkv_bias=args.qkv_bias, qk_layernorm=args.qk_layernorm,
        squared_relu=False, swiglu=True,
        untie_embeddings_and_output_weights=not args.tie_word_embeddings,
        apply_layernorm_1p=False, normalization="RMSNorm", norm_epsilon=args.norm_eps,
        apply_query_key_layer_scaling=False, attention_dropout=0.0, hidden_dropout=0.0,
        num_experts=None, padded_vocab_size=args.vocab_size, vocab_size=args.vocab_size,
        make_vocab_size_divisible_by=1, init_method_std=args.init_method_std,
        ckpt_format=CKPT_FORMATS[fmt], tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=None,
        expert_model_parallel_size=1, context_parallel_size=1,
        bf16=args.torch_dtype == "bfloat16", fp16=args.torch_dtype == "float16",
        pose_model=args.to_dict(),
    )


def _get(ns, name: str, flag: str, what: str):
    value = getattr(ns, name, None)
    if value is None:
        raise ValueError(f"the checkpoint's Megatron-LM args have no {name}: cannot determine "
                         f"the {what}; it is set by {flag} (pass it to the training job)")
    return value


def _require(ns, name: str, expected, flag: str) -> None:
    value = getattr(ns, name, expected)
    if value != expected:
        raise ValueError(f"the checkpoint was trained with {name}={value!r}; only {expected!r} "
                         f"converts to a LLaMA-family HF model ({flag})")


def rope_from_megatron_lm(ns) -> tuple:
    """(rope_theta, rope_scaling or None, original window) of the RoPE the job trained with.

    A job run with the PoSE helpers (its args hold ``pose_target_len``) used the scaling
    ``pose_megatron.megatron_lm.pose_settings`` derives from its flags, the one its models were
    built with. Otherwise the model had Megatron-LM's stock RoPE: plain, ``--use-rope-scaling``
    (LLaMA 3.1) or ``--rotary-seq-len-interpolation-factor`` (linear).
    """
    theta = float(_get(ns, "rotary_base", "--rotary-base", "RoPE base"))
    window = int(_get(ns, "max_position_embeddings", "--max-position-embeddings",
                      "model's original window"))
    if getattr(ns, "pose_target_len", None) is not None:
        from pose_megatron.megatron_lm import pose_settings

        rope = pose_settings(ns)["rope"]
        return theta, rope["rope_scaling"], rope["max_position_embeddings"]
    if getattr(ns, "use_rope_scaling", False):
        factor = float(_get(ns, "rope_scaling_factor", "--rope-scaling-factor",
                            "LLaMA 3.1 RoPE scaling factor"))
        return theta, {"rope_type": "llama3", "factor": factor, **MEGATRON_LLAMA3_ROPE}, window
    interpolation = getattr(ns, "rotary_seq_len_interpolation_factor", None)
    if interpolation not in (None, 1):
        return theta, {"rope_type": "linear", "factor": float(interpolation)}, window
    return theta, None, window


def model_args_from_megatron_lm(ns, *, dtype: Optional[str] = None) -> ModelArgs:
    """ModelArgs of a model trained by Megatron-LM, from the args in its checkpoint."""
    if isinstance(getattr(ns, "pose_model", None), dict):  # written by our converter: exact
        return ModelArgs.from_dict(ns.pose_model)
    _require(ns, "position_embedding_type", "rope", "--position-embedding-type rope")
    _require(ns, "normalization", "RMSNorm", "--normalization RMSNorm")
    _require(ns, "swiglu", True, "--swiglu")
    _require(ns, "add_bias_linear", False, "--disable-bias-linear")
    _require(ns, "rotary_percent", 1.0, "--rotary-percent 1.0")
    _require(ns, "apply_layernorm_1p", False, "no --apply-layernorm-1p")
    _require(ns, "qk_l2_norm", False, "no --qk-l2-norm")
    if getattr(ns, "num_experts", None):
        raise ValueError(f"the checkpoint is a mixture of experts (num_experts="
                         f"{ns.num_experts}); only dense models convert")
    theta, scaling, window = rope_from_megatron_lm(ns)
    heads = int(_get(ns, "num_attention_heads", "--num-attention-heads", "attention heads"))
    groups = ns.num_query_groups if getattr(ns, "group_query_attention", False) else heads
    hidden = int(_get(ns, "hidden_size", "--hidden-size", "hidden size"))
    if dtype is None:
        dtype = "bfloat16" if getattr(ns, "bf16", False) else (
            "float16" if getattr(ns, "fp16", False) else "float32")
    from pose_megatron import families

    family = families.family_from_megatron(
        {k: getattr(ns, k, False) for k in families.MEGATRON_FIELDS},
        "the checkpoint's Megatron-LM args")
    return ModelArgs(
        family=family.name,
        vocab_size=int(_get(ns, "padded_vocab_size", "the tokenizer flags", "vocabulary size")),
        hidden_size=hidden, intermediate_size=int(_get(ns, "ffn_hidden_size",
                                                       "--ffn-hidden-size", "FFN size")),
        num_layers=int(_get(ns, "num_layers", "--num-layers", "number of layers")),
        num_attention_heads=heads, num_query_groups=int(groups),
        head_dim=getattr(ns, "kv_channels", None) or hidden // heads,
        norm_eps=float(getattr(ns, "norm_epsilon", None) or 1e-5),  # Megatron-LM's default
        tie_word_embeddings=not getattr(ns, "untie_embeddings_and_output_weights", False),
        max_position_embeddings=int(window), rope_theta=theta, rope_scaling=scaling,
        rotary_interleaved=bool(getattr(ns, "rotary_interleaved", False)),
        init_method_std=float(getattr(ns, "init_method_std", 0.02)),
        bos_token_id=None, eos_token_id=None, torch_dtype=dtype,
    )


# Fields whose disagreement means a different model or a different RoPE.
_COMPARED = ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
             "num_attention_heads", "num_query_groups", "head_dim", "qkv_bias", "qk_layernorm",
             "tie_word_embeddings", "rope_theta", "rope_scaling", "rotary_interleaved")


def _rope_key(scaling: Optional[dict]) -> Optional[dict]:
    if not scaling:
        return None
    return {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
            for k, v in scaling.items()}


def disagreements(described: ModelArgs, trained: ModelArgs) -> list:
    """``name: described vs trained`` for each field where two descriptions differ."""
    out = []
    for name in _COMPARED:
        a, b = getattr(described, name), getattr(trained, name)
        if name == "rope_scaling":
            a, b = _rope_key(a), _rope_key(b)
        if a != b:
            out.append(f"{name}: {a!r} vs {b!r}")
    return out
