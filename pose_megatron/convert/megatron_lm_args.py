"""``ModelArgs`` <-> the ``args`` namespace Megatron-LM keeps in a checkpoint's common state.

Megatron-LM's ``save_checkpoint`` stores its whole ``argparse.Namespace`` as ``state["args"]``;
``--use-checkpoint-args`` (``load_args_from_checkpoint`` in ``megatron/training/checkpointing.py``,
the same field list at core_v0.16.1 and core_v0.19.0) takes the model shape from it, and
``load_checkpoint`` reads the TP/PP sizes it was saved with. ``megatron_lm_args`` writes those
fields for a converted model; ``model_args_from_megatron_lm`` reads a checkpoint saved by
Megatron-LM's own ``pretrain()``, with or without the PoSE helpers, refusing what it cannot
export exactly.

Every field is addressed by its Megatron-LM *flag* and stored under the flag's argparse ``dest``,
which is not always the flag's name: since core_v0.16 the flags generated from
``TransformerConfig`` fields store under the field's name (``--norm-epsilon`` ->
``layernorm_epsilon``, ``--apply-layernorm-1p`` -> ``layernorm_zero_centered_gamma``; up to 0.15
they were ``norm_epsilon`` and ``apply_layernorm_1p``). ``megatron_lm_dest`` derives the dest from
the installed megatron-core's ``TransformerConfig`` argparse metadata, by the rule Megatron-LM's
``ArgumentGroupFactory`` applies; flags ``arguments.py`` writes by hand are in ``_HAND_WRITTEN``
(``tools/check_megatron_lm.sh`` compares both with the real parser at each tag). A field the
reader cannot find under any release's dest is an error naming the flag, never a silent default.

Megatron-LM does not restore everything from the checkpoint: ``--norm-epsilon`` and the RoPE
scaling flags are not in its list, so a job loading with ``--use-checkpoint-args`` still passes
them (docs/embedding.md). They are written all the same, for the reverse conversion.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from typing import Any, Optional

from pose_megatron.config import ModelArgs
from pose_megatron.rope import LLAMA31_ROPE, is_megatron_llama31

CKPT_FORMATS = {"torch_dist": "torch_dist", "legacy": "torch"}

# Flags Megatron-LM's arguments.py defines by hand (not generated from TransformerConfig): their
# dest and parser default (tools/megatron_lm/check_dests.py compares them with the real parser).
_HAND_WRITTEN = {
    "--no-position-embedding": ("add_position_embedding", True),
    "--group-query-attention": ("group_query_attention", False),
    "--position-embedding-type": ("position_embedding_type", "learned_absolute"),
    "--use-rotary-position-embeddings": ("use_rotary_position_embeddings", False),
    "--rotary-base": ("rotary_base", 10000),
    "--rotary-percent": ("rotary_percent", 1.0),
    "--use-rope-scaling": ("use_rope_scaling", False),
    "--rope-scaling-factor": ("rope_scaling_factor", 8.0),
    "--rotary-seq-len-interpolation-factor": ("rotary_seq_len_interpolation_factor", None),
    "--swiglu": ("swiglu", False),
    "--squared-relu": ("squared_relu", False),
    "--untie-embeddings-and-output-weights": ("untie_embeddings_and_output_weights", False),
    "--seq-length": ("seq_length", None),
    "--max-position-embeddings": ("max_position_embeddings", None),
    "--num-experts": ("num_experts", None),
    "--make-vocab-size-divisible-by": ("make_vocab_size_divisible_by", 128),
    "--vocab-size": ("vocab_size", None),
    "--ckpt-format": ("ckpt_format", "torch_dist"),
    "--bf16": ("bf16", False),
    "--fp16": ("fp16", False),
}
# Dests of earlier releases, read where the current one is absent (checkpoints saved by them).
_EARLIER_DESTS = {
    "--norm-epsilon": ("norm_epsilon",),  # core_v0.15 and before
    "--apply-layernorm-1p": ("apply_layernorm_1p",),  # core_v0.15 and before
}
# Every flag whose value the converters write or read: tests set each to a non-default value.
MODEL_FLAGS = (
    "--num-layers", "--hidden-size", "--ffn-hidden-size", "--num-attention-heads",
    "--group-query-attention", "--num-query-groups", "--kv-channels", "--seq-length",
    "--max-position-embeddings", "--position-embedding-type", "--no-position-embedding",
    "--rotary-base", "--rotary-percent", "--rotary-interleaved", "--use-rope-scaling",
    "--rope-scaling-factor", "--rotary-seq-len-interpolation-factor", "--disable-bias-linear",
    "--add-qkv-bias", "--qk-layernorm", "--qk-l2-norm", "--squared-relu", "--swiglu",
    "--untie-embeddings-and-output-weights", "--apply-layernorm-1p", "--normalization",
    "--norm-epsilon", "--init-method-std",
    "--num-experts", "--make-vocab-size-divisible-by", "--bf16", "--fp16",
)


@functools.lru_cache(maxsize=None)
def _config_flags() -> dict:
    """{flag: (dest, default)} of the flags Megatron-LM generates from ``TransformerConfig``.

    The rule of Megatron-LM's ``ArgumentGroupFactory`` (core_v0.16+): the dest is the field's
    name; the flags are ``argparse_meta["arg_names"]`` if given, else ``--no-<name>`` and
    ``--disable-<name>`` for a bool defaulting to True, else ``--<name>``; the default is
    ``argparse_meta["default"]`` if given, else the field's.
    """
    from megatron.core.transformer import TransformerConfig

    out = {}
    for field in dataclasses.fields(TransformerConfig):
        if not field.init:
            continue
        meta = dict(field.metadata.get("argparse_meta", {}))
        default = field.default if field.default is not dataclasses.MISSING else None
        default = meta.get("default", default)
        dashed = field.name.replace("_", "-")
        names = meta.get("arg_names") or (
            [f"--no-{dashed}", f"--disable-{dashed}"] if default is True else [f"--{dashed}"])
        for name in names:
            out.setdefault(name, (field.name, default))
    return out


def megatron_lm_dest(flag: str) -> str:
    """The attribute of Megatron-LM's ``args`` that ``flag`` sets (at the installed release)."""
    if flag in _HAND_WRITTEN:
        return _HAND_WRITTEN[flag][0]
    if flag in _config_flags():
        return _config_flags()[flag][0]
    return flag.lstrip("-").replace("-", "_")


def megatron_lm_default(flag: str) -> Any:
    """The value Megatron-LM's parser gives ``flag``'s dest when the flag is not passed."""
    if flag in _HAND_WRITTEN:
        return _HAND_WRITTEN[flag][1]
    return _config_flags().get(flag, (None, None))[1]


_ABSENT = object()


def read_flag(ns, flag: str, what: str) -> Any:
    """The value of ``flag`` in a saved Megatron-LM namespace, under this release's dest or an
    earlier one's; a missing field is an error naming the flag (a silent default would export
    another model)."""
    dests = (megatron_lm_dest(flag),) + _EARLIER_DESTS.get(flag, ())
    for dest in dests:
        value = getattr(ns, dest, _ABSENT)
        if value is not _ABSENT:
            return value
    raise ValueError(f"the checkpoint's Megatron-LM args have no {' or '.join(dests)} ({flag}): "
                     f"cannot determine the {what}")


def _rotary_base(theta: float):
    # Megatron-LM parses --rotary-base as an int
    return int(theta) if float(theta).is_integer() else float(theta)


def megatron_lm_args(args: ModelArgs, *, fmt: str, tp: int = 1, pp: int = 1,
                     add_position_embedding: bool = True) -> argparse.Namespace:
    """The Megatron-LM ``args`` a converted checkpoint carries (what ``--use-checkpoint-args`` reads).

    Megatron-LM's own RoPE flags are set where they express the model's scaling exactly (LLaMA 3.1
    with Megatron's constants, linear by an integer factor); ``pose_model`` holds the complete
    description, so the reverse conversion of this checkpoint is exact whatever the scaling.

    ``add_position_embedding``: Megatron-LM's ``load_checkpoint`` compares it with the loading
    job's value unless that job passes ``--use-checkpoint-args`` or ``--finetune``. For RoPE it
    changes nothing, and both conventions are in use: True is the parser's default (its LLaMA-3
    example, its own converters), False is what ``--no-position-embedding`` (its LLaMA-2 docs) sets.
    """
    scaling = dict(args.rope_scaling or {})
    kind = scaling.get("rope_type")
    llama3 = is_megatron_llama31(scaling)
    factor = float(scaling.get("factor", 1.0))
    by_flag = {
        "--num-layers": args.num_layers, "--hidden-size": args.hidden_size,
        "--ffn-hidden-size": args.intermediate_size,
        "--num-attention-heads": args.num_attention_heads,
        "--group-query-attention": args.num_query_groups != args.num_attention_heads,
        "--num-query-groups": args.num_query_groups, "--kv-channels": args.head_dim,
        "--seq-length": args.max_position_embeddings,
        "--max-position-embeddings": args.max_position_embeddings,
        "--position-embedding-type": "rope",
        "--no-position-embedding": bool(add_position_embedding),
        "--use-rotary-position-embeddings": True,
        "--rotary-base": _rotary_base(args.rope_theta), "--rotary-percent": 1.0,
        "--rotary-interleaved": args.rotary_interleaved, "--use-rope-scaling": llama3,
        "--rope-scaling-factor": factor if llama3 else megatron_lm_default("--rope-scaling-factor"),
        "--rotary-seq-len-interpolation-factor": (
            int(factor) if kind == "linear" and factor.is_integer() else None),
        "--disable-bias-linear": False, "--add-qkv-bias": args.qkv_bias,
        "--qk-layernorm": args.qk_layernorm, "--qk-l2-norm": False,
        "--squared-relu": False, "--swiglu": True,
        "--untie-embeddings-and-output-weights": not args.tie_word_embeddings,
        "--apply-layernorm-1p": False, "--normalization": "RMSNorm",
        "--norm-epsilon": args.norm_eps, "--apply-query-key-layer-scaling": False,
        "--attention-dropout": 0.0, "--hidden-dropout": 0.0, "--num-experts": None,
        "--vocab-size": args.vocab_size, "--make-vocab-size-divisible-by": 1,
        "--init-method-std": args.init_method_std, "--ckpt-format": CKPT_FORMATS[fmt],
        "--tensor-model-parallel-size": tp, "--pipeline-model-parallel-size": pp,
        "--expert-model-parallel-size": 1, "--context-parallel-size": 1,
        "--bf16": args.torch_dtype == "bfloat16", "--fp16": args.torch_dtype == "float16",
    }
    ns = argparse.Namespace(**{megatron_lm_dest(flag): v for flag, v in by_flag.items()})
    # Not flags: set by Megatron-LM's validate_args / tokenizer set-up.
    ns.padded_vocab_size = args.vocab_size
    ns.virtual_pipeline_model_parallel_size = None
    ns.pose_model = args.to_dict()
    return ns


def _require(ns, flag: str, expected, what: str) -> None:
    value = read_flag(ns, flag, what)
    if value != expected:
        raise ValueError(f"the checkpoint was trained with {megatron_lm_dest(flag)}={value!r} "
                         f"({flag}); only {expected!r} converts to a LLaMA-family HF model")


def rope_from_megatron_lm(ns) -> tuple:
    """(rope_theta, rope_scaling or None, original window) of the RoPE the job trained with.

    A job run with the PoSE helpers (its args hold ``pose_target_len``) used the scaling
    ``pose_megatron.megatron_lm.rope_settings`` derives from its flags, the one its models were
    built with. Otherwise the model had Megatron-LM's stock RoPE: plain, ``--use-rope-scaling``
    (LLaMA 3.1) or ``--rotary-seq-len-interpolation-factor`` (linear).
    """
    theta = float(read_flag(ns, "--rotary-base", "RoPE base"))
    window = read_flag(ns, "--max-position-embeddings", "model's original window")
    if getattr(ns, "pose_target_len", None) is not None:
        from pose_megatron.megatron_lm import rope_settings

        rope = rope_settings(ns)
        return theta, rope["rope_scaling"], rope["max_position_embeddings"]
    if read_flag(ns, "--use-rope-scaling", "LLaMA 3.1 RoPE scaling switch"):
        factor = float(read_flag(ns, "--rope-scaling-factor", "LLaMA 3.1 RoPE scaling factor"))
        return theta, {"rope_type": "llama3", "factor": factor, **LLAMA31_ROPE}, window
    interpolation = read_flag(ns, "--rotary-seq-len-interpolation-factor",
                              "linear RoPE interpolation factor")
    if interpolation not in (None, 1):
        return theta, {"rope_type": "linear", "factor": float(interpolation)}, window
    return theta, None, window


def _blocks(ns) -> int:
    """Transformer blocks: a hybrid run (pretrain_hybrid.py) counts each attention ('*') and MLP
    ('-') layer in --num-layers; a LLaMA-family block is one of each (--hybrid-layer-pattern
    '*-' per block, '|' between pipeline stages, '/' before MTP layers)."""
    pattern = getattr(ns, "hybrid_layer_pattern", None) or getattr(ns, "hybrid_override_pattern",
                                                                  None)
    if not pattern:
        return int(read_flag(ns, "--num-layers", "number of layers"))
    main = pattern.split("/")[0].replace("|", "")
    if main != "*-" * (len(main) // 2) or not main:
        raise ValueError(f"--hybrid-layer-pattern {pattern!r}: only the LLaMA-family pattern "
                         "'*-' per block (one attention, then one MLP layer) converts")
    return len(main) // 2


def model_args_from_megatron_lm(ns, *, dtype: Optional[str] = None) -> ModelArgs:
    """ModelArgs of a model trained by Megatron-LM, from the args in its checkpoint."""
    if isinstance(getattr(ns, "pose_model", None), dict):  # written by our converter: exact
        return ModelArgs.from_dict(ns.pose_model)
    _require(ns, "--position-embedding-type", "rope", "position embedding")
    _require(ns, "--normalization", "RMSNorm", "normalization")
    _require(ns, "--swiglu", True, "MLP activation")
    _require(ns, "--squared-relu", False, "MLP activation")
    _require(ns, "--disable-bias-linear", False, "linear biases")
    _require(ns, "--rotary-percent", 1.0, "RoPE fraction")
    _require(ns, "--apply-layernorm-1p", False, "norm weights (zero-centred gamma)")
    _require(ns, "--qk-l2-norm", False, "query/key normalisation")
    experts = read_flag(ns, "--num-experts", "number of experts")
    if experts:
        raise ValueError(f"the checkpoint is a mixture of experts (num_experts={experts}); "
                         f"only dense models convert")
    theta, scaling, window = rope_from_megatron_lm(ns)
    heads = int(read_flag(ns, "--num-attention-heads", "attention heads"))
    groups = (read_flag(ns, "--num-query-groups", "query groups")
              if read_flag(ns, "--group-query-attention", "attention kind") else heads)
    hidden = int(read_flag(ns, "--hidden-size", "hidden size"))
    vocab = getattr(ns, "padded_vocab_size", None)  # set by Megatron-LM's tokenizer set-up
    if vocab is None:
        raise ValueError("the checkpoint's Megatron-LM args have no padded_vocab_size: cannot "
                         "determine the vocabulary size")
    if window is None:
        raise ValueError("the checkpoint's Megatron-LM args have max_position_embeddings=None "
                         "(--max-position-embeddings): cannot determine the model's window")
    if dtype is None:
        dtype = "bfloat16" if read_flag(ns, "--bf16", "dtype") else (
            "float16" if read_flag(ns, "--fp16", "dtype") else "float32")
    from pose_megatron import families

    family = families.family_from_megatron(
        {megatron_lm_dest(flag): read_flag(ns, flag, what) for flag, what in
         (("--add-qkv-bias", "QKV bias"), ("--qk-layernorm", "query/key norm"))},
        "the checkpoint's Megatron-LM args")
    return ModelArgs(
        family=family.name,
        vocab_size=int(vocab), hidden_size=hidden,
        intermediate_size=int(read_flag(ns, "--ffn-hidden-size", "FFN size")),
        num_layers=_blocks(ns),
        num_attention_heads=heads, num_query_groups=int(groups),
        # None: Megatron-LM's validate_args sets hidden / heads, as here
        head_dim=read_flag(ns, "--kv-channels", "head dimension") or hidden // heads,
        norm_eps=float(read_flag(ns, "--norm-epsilon", "norm epsilon")),
        tie_word_embeddings=not read_flag(ns, "--untie-embeddings-and-output-weights",
                                          "embedding tying"),
        max_position_embeddings=int(window), rope_theta=theta, rope_scaling=scaling,
        rotary_interleaved=bool(read_flag(ns, "--rotary-interleaved", "RoPE layout")),
        init_method_std=float(read_flag(ns, "--init-method-std", "initialisation std")),
        bos_token_id=None, eos_token_id=None, torch_dtype=dtype,
    )


# Fields whose disagreement means a different model or a different RoPE.
_COMPARED = ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
             "num_attention_heads", "num_query_groups", "head_dim", "norm_eps", "qkv_bias",
             "qk_layernorm",
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
