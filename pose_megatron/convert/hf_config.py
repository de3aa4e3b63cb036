"""HF ``config.json`` <-> ``ModelArgs``, both RoPE styles, and RoPE export to a form HF computes.

transformers 4.x writes ``rope_theta`` + ``rope_scaling`` (sometimes with ``"type"`` instead of
``"rope_type"``); 5.x writes ``rope_parameters`` holding ``rope_theta`` too. Both are read. The
export writes ``rope_parameters`` and the 4.x keys side by side, which both versions read the same.

RoPE variants of the plugin that HF has no name for are exported as an exactly equivalent HF form
or refused (``export_rope``): ``ntk`` (fixed NTK-aware base) becomes a plain RoPE with the scaled
base; ``yarn_pose`` (the PoSE reference's revised YaRN, wavelength blend) becomes ``longrope`` with
per-dimension factors and the YaRN attention factor, after checking HF's own computation.
"""

from __future__ import annotations

from typing import Optional, Tuple

from pose_megatron import dtypes, families
from pose_megatron.config import ModelArgs
from pose_megatron.rope import original_window, scaled_window

# Rope types HF computes under the same name as the plugin.
HF_NATIVE_ROPE = ("linear", "dynamic", "yarn", "llama3", "longrope")


def read_rope(cfg: dict, source: str = "config.json") -> Tuple[float, Optional[dict]]:
    """(rope_theta, validated rope_scaling in HF dict form or None) from either config style.

    Unknown rope types and missing parameters (``linear`` without ``factor``...) are refused
    here, naming ``source``, rather than carried into a converted checkpoint.
    """
    from pose_megatron.rope import canonical_rope_scaling

    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" not in params and params:
        # per-layer-type form ({"full_attention": {...}}): LLaMA-family models have one kind
        params = next(iter(params.values()))
    if params:
        params = dict(params)
        theta = float(params.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        scaling = params
    else:
        theta = float(cfg.get("rope_theta", 10000.0))
        scaling = dict(cfg["rope_scaling"]) if cfg.get("rope_scaling") else None
    if scaling is not None:
        kind = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
        scaling.pop("type", None)
        if float(scaling.pop("partial_rotary_factor", 1.0)) != 1.0:
            raise ValueError(f"{source}: partial_rotary_factor != 1 is not supported")
        scaling = {"rope_type": kind, **scaling}
    window = cfg.get("max_position_embeddings")
    return theta, canonical_rope_scaling(
        scaling, max_position_embeddings=int(window) if isinstance(window, int) else None,
        source=f"{source}: rope_scaling")


def args_from_hf_config(cfg: dict, source: str = "config.json") -> ModelArgs:
    family = families.from_hf_config(cfg, source)
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported (only silu)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError(
            f"{source}: attention_bias/mlp_bias (biases on o_proj or the MLP) are not supported; "
            "only Qwen2-style q/k/v biases are (families: pose_megatron/families.py)"
        )
    if float(cfg.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError(f"{source}: partial_rotary_factor != 1 is not supported")
    theta, scaling = read_rope(cfg, source)
    heads = int(cfg["num_attention_heads"])
    sliding = cfg.get("sliding_window") if family.sliding_window != "none" else None
    if family.sliding_window == "use_sliding_window" and not cfg.get("use_sliding_window", False):
        sliding = None
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return ModelArgs(
        family=family.name,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_query_groups=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg["head_dim"]) if cfg.get("head_dim") else None,
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=int(sliding) if sliding else None,
        init_method_std=float(cfg.get("initializer_range", 0.02)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
        torch_dtype=dtypes.lookup(dtype, "float32"),
    )


# ----------------------------------------------------------------------------- export


def yarn_pose_factors(args: ModelArgs, scaling: dict):
    """Per-frequency divisors and attention factor of the revised YaRN, from the plugin's RoPE.

    yarn_pose divides frequency j by (1 - g_j) * s + g_j; HF's longrope divides it by
    ``ext_factors[j]``, so the divisors are exactly longrope's factors.
    """
    import torch

    from pose_megatron.rope import compute_inv_freq

    plain, _ = compute_inv_freq(args.head_dim, args.rope_theta, None, dtype=torch.float64)
    scaled, attention = compute_inv_freq(
        args.head_dim, args.rope_theta, scaling,
        max_position_embeddings=args.max_position_embeddings, dtype=torch.float64)
    return (plain / scaled).tolist(), float(attention)


def export_rope(args: ModelArgs, source: str = "the model's RoPE") -> Tuple[float, Optional[dict]]:
    """(rope_theta, HF rope_scaling dict or None) that make HF compute the plugin's RoPE.

    The plugin's RoPE is validated first (``source`` names where it came from), so an unknown
    type or a missing parameter is refused instead of written into config.json.
    """
    from pose_megatron.rope import canonical_rope_scaling

    scaling = canonical_rope_scaling(args.rope_scaling,
                                     max_position_embeddings=args.max_position_embeddings,
                                     source=f"{source}: rope_scaling")
    if scaling is None:
        return args.rope_theta, None
    kind = scaling["rope_type"]
    if kind in HF_NATIVE_ROPE:
        return args.rope_theta, scaling
    d = args.head_dim
    if kind == "ntk":
        s = float(scaling["factor"])
        return args.rope_theta * s ** (d / (d - 2)), None
    if kind == "yarn_pose":
        original = original_window(scaling, args.max_position_embeddings)
        s = float(scaling["factor"])
        factors, mscale = yarn_pose_factors(args, scaling)
        hf = {
            "rope_type": "longrope",
            # same factors short and long: HF switches between them by sequence length
            "short_factor": factors,
            "long_factor": factors,
            "factor": s,
            "attention_factor": mscale,
            "original_max_position_embeddings": original,
        }
        _verify_longrope(args, hf, factors, mscale)
        return args.rope_theta, hf
    raise ValueError(
        f"RoPE type {kind!r} (rope_scaling={scaling}) has no HF equivalent known to the converter; "
        f"supported: default, {', '.join(HF_NATIVE_ROPE)}, ntk, yarn_pose"
    )


def _verify_longrope(args: ModelArgs, hf: dict, factors, mscale) -> None:
    """Refuse unless HF's own longrope code yields the plugin's inverse frequencies and scale."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from pose_megatron.rope import compute_inv_freq

    cfg = LlamaConfig(
        hidden_size=args.head_dim * args.num_attention_heads, num_attention_heads=args.num_attention_heads,
        head_dim=args.head_dim, max_position_embeddings=args.max_position,
        rope_parameters={"rope_theta": args.rope_theta, **hf},
    )
    d = args.head_dim
    expected, _ = compute_inv_freq(
        d, args.rope_theta, args.rope_scaling,
        max_position_embeddings=args.max_position_embeddings, dtype=torch.float64)
    for seq_len in (None, args.max_position):
        inv_freq, scale = ROPE_INIT_FUNCTIONS["longrope"](cfg, "cpu", seq_len=seq_len)
        err = ((inv_freq.double() - expected).abs() / expected).max().item()
        if err > 1e-6 or abs(scale - mscale) > 1e-9:
            raise ValueError(
                "cannot export rope_type 'yarn_pose' exactly: HF's longrope computes inverse "
                f"frequencies off by {err:.2e} (relative) or attention factor {scale} != {mscale}; "
                "refusing to write a config HF would compute differently"
            )


def exported_window(args: ModelArgs, scaling: Optional[dict]) -> int:
    """max_position_embeddings of the exported config.

    transformers (5.x, RotaryEmbeddingConfigMixin._validate_yarn_rope_parameters) takes a YaRN
    factor to be max_position_embeddings / original_max_position_embeddings and warns on every
    load when that ratio is neither the factor nor 1. Its YaRN reads only the factor and the
    original window, so writing the window YaRN extends to (original * factor) changes no
    number and silences the warning; it is also the length serving stacks cap the context at.
    """
    if scaling and scaling.get("rope_type") == "yarn" and scaling.get("factor"):
        return scaled_window(scaling, args.max_position_embeddings)
    return args.max_position_embeddings


def hf_config_from_args(args: ModelArgs, dtype: Optional[str] = None,
                        source: str = "the model's RoPE") -> dict:
    theta, scaling = export_rope(args, source)
    family = families.get(args.family)
    cfg = {
        "architectures": [family.architecture],
        "model_type": family.model_type,
        "vocab_size": args.vocab_size,
        "hidden_size": args.hidden_size,
        "intermediate_size": args.intermediate_size,
        "num_hidden_layers": args.num_layers,
        "num_attention_heads": args.num_attention_heads,
        "num_key_value_heads": args.num_query_groups,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": args.norm_eps,
        "tie_word_embeddings": args.tie_word_embeddings,
        "max_position_embeddings": exported_window(args, scaling),
        "initializer_range": args.init_method_std,
        "bos_token_id": args.bos_token_id,
        "eos_token_id": args.eos_token_id,
        "pad_token_id": args.pad_token_id,
        "dtype": dtype or args.torch_dtype,
        "torch_dtype": dtype or args.torch_dtype,
        "use_cache": True,
        "attention_dropout": 0.0,
        "rope_theta": theta,
        "rope_scaling": scaling,
        "rope_parameters": {"rope_theta": theta, **(scaling or {"rope_type": "default"})},
    }
    cfg.update(family.hf_extra)
    if family.sliding_window != "none":
        cfg["sliding_window"] = args.sliding_window
    if family.sliding_window == "use_sliding_window":
        # every layer full attention, as trained (a window is recorded, not applied)
        cfg["use_sliding_window"] = args.sliding_window is not None
        cfg["max_window_layers"] = args.num_layers
    return cfg
