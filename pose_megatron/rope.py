"""RoPE inverse frequencies and attention scaling, one pure function per scaling method.

Parameters use HF's ``rope_scaling`` / ``rope_parameters`` key names, so a HF config's dictionary
maps one to one. Types:

=============  ============================================================================
``default``    plain RoPE, ``theta_j = base^(-2j/d)``
``linear``     position interpolation (PI): ``theta_j / factor``
``ntk``        fixed NTK-aware base, ``base * factor^(d/(d-2))`` (the PoSE reference's
               "vanilla" NTK; HF has no such type: it equals HF ``default`` with that theta)
``dynamic``    HF dynamic NTK, keyed on ``seq_len``; for evaluation (see ``warn_if_training``)
``yarn``       HF YaRN: blend of interpolated and extrapolated *frequencies*, plus the
               attention factor that multiplies cos and sin
``yarn_pose``  the PoSE reference's revised YaRN: blend of *wavelengths*,
               ``theta_j / ((1 - g_j) * factor + g_j)``, same attention factor
``llama3``     LLaMA-3.1 smooth wavelength-band scaling
``longrope``   Phi-3 LongRoPE: per-frequency ``short_factor`` / ``long_factor``
=============  ============================================================================

Precision: with ``dtype=torch.float32`` every function repeats the floating-point operations of
HF's ``modeling_rope_utils`` (and of Megatron-Core's own RoPE for the types it has) in the same
order, so the result is bit-identical to theirs; a model built from it therefore reproduces the
HF checkpoint's numerics exactly. ``dtype=torch.float64`` evaluates the same formulas in double
precision (the reference values the tests compare against).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # imported where used: the constants and checks serve torch-free modules
    import torch

ROPE_TYPES = ("default", "linear", "ntk", "dynamic", "yarn", "yarn_pose", "llama3", "longrope")
# LLaMA 3.1's published llama3 scaling: HF's defaults for the band factors, and the only values
# Megatron-Core's ``rope_scaling: true`` (Megatron-LM's --use-rope-scaling, Bridge's provider)
# applies, the window included (RotaryEmbedding._apply_scaling's defaults, unchanged 0.16-0.19).
LLAMA31_BANDS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
LLAMA31_ROPE = {**LLAMA31_BANDS, "original_max_position_embeddings": 8192}

# Keys every type accepts: HF v5 puts rope_theta (and partial_rotary_factor) inside the dict.
_COMMON_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
_YARN_KEYS = {"attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"}
_REQUIRED = {
    "default": set(),
    "linear": {"factor"},
    "ntk": {"factor"},
    "dynamic": {"factor"},
    "yarn": {"factor", "original_max_position_embeddings"},
    "yarn_pose": {"factor", "original_max_position_embeddings"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "longrope": {"short_factor", "long_factor", "original_max_position_embeddings"},
}
_OPTIONAL = {
    "default": {"factor"},
    "linear": set(),
    "ntk": {"original_max_position_embeddings"},
    "dynamic": {"original_max_position_embeddings"},
    "yarn": _YARN_KEYS,
    "yarn_pose": _YARN_KEYS,
    "llama3": set(),
    "longrope": {"factor", "attention_factor"},
}
# HF fills original_max_position_embeddings from the config's max_position_embeddings when a
# checkpoint omits it (``standardize_rope_params``); we do the same when the caller gives it.
_ORIGINAL_FROM_CONFIG = {"yarn", "yarn_pose", "llama3", "longrope"}


def rope_type_of(rope_scaling: Optional[dict]) -> str:
    if not rope_scaling:
        return "default"
    return rope_scaling.get("rope_type", rope_scaling.get("type", "default"))


def is_megatron_llama31(rope_scaling: Optional[dict]) -> bool:
    """True for llama3 scaling with exactly Megatron-Core's constants (``LLAMA31_ROPE``), the one
    llama3 RoPE Megatron-LM's flags and Bridge's provider can express."""
    scaling = rope_scaling or {}
    return rope_type_of(scaling) == "llama3" and all(
        float(scaling.get(k, -1)) == v for k, v in LLAMA31_ROPE.items())


def original_window(rope_scaling: Optional[dict], window: int) -> int:
    """The window a RoPE scaling extends: its ``original_max_position_embeddings``, else
    ``window`` (the model's max_position_embeddings, as HF falls back to)."""
    return int((rope_scaling or {}).get("original_max_position_embeddings") or window)


def scaled_window(rope_scaling: Optional[dict], window: int) -> int:
    """The positions a RoPE scaling is made for: ``original_window`` times its factor (1 where
    it has none)."""
    factor = float((rope_scaling or {}).get("factor", 1.0))
    return int(round(original_window(rope_scaling, window) * factor))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_rope_scaling(
    rope_scaling: Optional[dict], *, max_position_embeddings: Optional[int] = None,
    source: str = "rope_scaling",
) -> dict:
    """Check a HF-style ``rope_scaling`` dict and return a normalised copy (``rope_type`` set).

    The one RoPE validation of the package: training flags, Megatron-LM helpers, evaluation
    overrides, checkpoints and the HF converter all come through here. ``None`` or ``{}`` mean
    plain RoPE. Unknown types and missing or invalid parameters raise a ValueError that starts
    with ``source`` (a file or flag) and names the offending key and value; unknown extra keys only
    warn (HF configs carry model-specific extras).
    """
    if rope_scaling is None:
        return {"rope_type": "default"}
    if not isinstance(rope_scaling, dict):
        raise ValueError(f"{source} must be a dict or None, got {type(rope_scaling).__name__}")
    scaling = dict(rope_scaling)
    rope_type = rope_type_of(scaling)
    if rope_type not in ROPE_TYPES:
        raise ValueError(
            f"{source}: unknown rope_type {rope_type!r}; expected one of {', '.join(ROPE_TYPES)}"
        )
    scaling["rope_type"] = rope_type
    scaling.pop("type", None)
    try:
        return _check_parameters(scaling, rope_scaling, rope_type, max_position_embeddings)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def canonical_rope_scaling(
    rope_scaling: Optional[dict], *, max_position_embeddings: Optional[int] = None,
    source: str = "rope_scaling",
) -> Optional[dict]:
    """``validate_rope_scaling``, with plain RoPE as ``None`` (the form ModelArgs stores)."""
    scaling = validate_rope_scaling(rope_scaling, max_position_embeddings=max_position_embeddings,
                                    source=source)
    return None if scaling["rope_type"] == "default" else scaling


def _check_parameters(scaling, rope_scaling, rope_type, max_position_embeddings) -> dict:
    if (
        rope_type in _ORIGINAL_FROM_CONFIG
        and "original_max_position_embeddings" not in scaling
        and max_position_embeddings is not None
    ):
        scaling["original_max_position_embeddings"] = int(max_position_embeddings)

    missing = sorted(k for k in _REQUIRED[rope_type] if scaling.get(k) is None)
    if rope_type == "longrope" and scaling.get("factor") is None and max_position_embeddings is None:
        missing.append("factor (or the model's max_position_embeddings)")
    if missing:
        raise ValueError(
            f"rope_type {rope_type!r} is missing parameter(s) {missing} (got {sorted(rope_scaling)})"
        )
    unknown = sorted(set(scaling) - _REQUIRED[rope_type] - _OPTIONAL[rope_type] - _COMMON_KEYS)
    if unknown:
        warnings.warn(f"rope_scaling for rope_type {rope_type!r}: ignoring unknown keys {unknown}")

    for key in ("factor", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow",
                "mscale", "mscale_all_dim", "attention_factor"):
        value = scaling.get(key)
        if value is not None and (not _is_number(value) or value < 0
                                  or (value == 0 and key not in ("mscale", "mscale_all_dim"))):
            raise ValueError(f"{key} must be a positive number, got {value!r}")
    factor = scaling.get("factor")
    if rope_type in ("linear", "ntk", "dynamic", "yarn", "yarn_pose", "llama3") and factor < 1:
        raise ValueError(
            f"factor {factor!r} < 1 would shrink the context window of rope_type {rope_type!r}; "
            f"use factor >= 1"
        )
    omp = scaling.get("original_max_position_embeddings")
    if omp is not None and (isinstance(omp, bool) or not isinstance(omp, int) or omp <= 0):
        raise ValueError(f"original_max_position_embeddings must be a positive integer, got {omp!r}")
    if rope_type == "llama3" and not scaling["low_freq_factor"] < scaling["high_freq_factor"]:
        raise ValueError(
            f"llama3 needs low_freq_factor < high_freq_factor, got "
            f"{scaling['low_freq_factor']!r} and {scaling['high_freq_factor']!r}"
        )
    if rope_type in ("yarn", "yarn_pose") and scaling.get("beta_fast") is not None \
            and scaling.get("beta_slow") is not None \
            and not scaling["beta_slow"] < scaling["beta_fast"]:
        raise ValueError(f"{rope_type} needs beta_slow < beta_fast, got {scaling['beta_slow']!r} "
                         f"and {scaling['beta_fast']!r}")
    if rope_type == "longrope":
        for key in ("short_factor", "long_factor"):
            value = scaling[key]
            if not isinstance(value, (list, tuple)) or not value \
                    or not all(_is_number(v) and v > 0 for v in value):
                raise ValueError(f"{key} must be a non-empty list of positive numbers, got "
                                 f"{value!r}")
            scaling[key] = [float(v) for v in value]
        if len(scaling["short_factor"]) != len(scaling["long_factor"]):
            raise ValueError(f"short_factor has {len(scaling['short_factor'])} entries and "
                             f"long_factor {len(scaling['long_factor'])}; both need rotary_dim/2")
    prf = scaling.get("partial_rotary_factor", 1.0)
    if not _is_number(prf) or not 0 < prf <= 1:
        raise ValueError(f"partial_rotary_factor must be in (0, 1], got {prf!r}")
    return scaling


def warn_if_training(rope_scaling: Optional[dict]) -> bool:
    """Warn when a RoPE type that cannot take effect in PoSE training is selected for training.

    Dynamic NTK rescales only once the *sequence* is longer than the original window; PoSE trains
    on short windows whose position ids reach the target length, so with the reference's
    (HF 4.31) sequence-length keying it never activates, and with HF 5's max-position keying it
    changes the frequencies batch by batch. Either way the model does not learn one fixed RoPE.
    Returns True when it warned.
    """
    if rope_type_of(rope_scaling) == "dynamic":
        warnings.warn(
            "rope_type 'dynamic' (dynamic NTK) was selected for training: it is meant for "
            "evaluation without fine-tuning and does not give PoSE a fixed target RoPE. "
            "Train with 'linear', 'ntk', 'yarn' or 'yarn_pose' instead.",
            stacklevel=2,
        )
        return True
    return False


def _rotary_dim(head_dim: int, scaling: dict) -> int:
    return int(head_dim * scaling.get("partial_rotary_factor", 1.0))


def _plain_inv_freq(base: float, dim: int, dtype: torch.dtype) -> torch.Tensor:
    import torch

    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=dtype) / dim))


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _yarn_attention_factor(scaling: dict) -> float:
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor = scaling["factor"]
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return float(_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim))
    return _yarn_mscale(factor)


def _yarn_ramp(scaling: dict, base: float, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Ramp over the dim//2 frequencies: 0 below the beta_fast boundary, 1 above beta_slow."""
    import torch

    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1
    original = scaling["original_max_position_embeddings"]

    def correction_dim(num_rotations):
        return (dim * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a one-frequency band would divide by zero
    return torch.clamp((torch.arange(dim // 2, dtype=dtype) - low) / (high - low), 0, 1)


def compute_inv_freq(
    head_dim: int,
    rope_theta: float,
    rope_scaling: Optional[dict],
    *,
    seq_len: Optional[int] = None,
    max_position_embeddings: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``[rotary_dim // 2]`` and the attention scaling for one RoPE config.

    ``seq_len`` matters for ``dynamic`` (HF keys it on max position id + 1) and ``longrope``
    (long factors beyond the original window); for ``dynamic`` a tensor ``seq_len`` reproduces HF's
    forward-time arithmetic (float32 base), an int its init-time one (float64 base); ``max_position_embeddings`` is the HF config's
    value, needed by ``dynamic`` and as HF's fallback for ``original_max_position_embeddings``.
    The attention scaling multiplies both cos and sin (so attention logits scale by its square).
    ``dtype`` defaults to float64 (the reference values).
    """
    import torch

    dtype = torch.float64 if dtype is None else dtype
    scaling = validate_rope_scaling(rope_scaling, max_position_embeddings=max_position_embeddings)
    rope_type = scaling["rope_type"]
    base = rope_theta
    dim = _rotary_dim(head_dim, scaling)
    if dim % 2:
        raise ValueError(f"rotary dimension {dim} (head_dim {head_dim}) must be even")

    if rope_type == "default":
        return _plain_inv_freq(base, dim, dtype), 1.0

    if rope_type == "linear":
        inv_freq = _plain_inv_freq(base, dim, dtype)
        inv_freq /= scaling["factor"]
        return inv_freq, 1.0

    if rope_type == "ntk":
        ntk_base = base * scaling["factor"] ** (dim / (dim - 2))
        return _plain_inv_freq(ntk_base, dim, dtype), 1.0

    if rope_type == "dynamic":
        window = max_position_embeddings or scaling.get("original_max_position_embeddings")
        if window is None:
            raise ValueError(
                "rope_type 'dynamic' needs the model's max_position_embeddings (the window the "
                "dynamic base is keyed on); pass max_position_embeddings="
            )
        factor = scaling["factor"]
        if isinstance(seq_len, torch.Tensor) and int(seq_len) > window:
            # HF's forward-time update passes max(position_ids) + 1 as an int64 tensor, so its
            # base is computed in tensor (float32) arithmetic; mirrored for identical numbers.
            length = seq_len.to(dtype) if dtype == torch.float64 else seq_len
            dyn_base = base * ((factor * length / window) - (factor - 1)) ** (dim / (dim - 2))
            return _plain_inv_freq(dyn_base, dim, dtype), 1.0
        seq_len = window if seq_len is None else max(int(seq_len), window)
        dyn_base = base * ((factor * seq_len / window) - (factor - 1)) ** (dim / (dim - 2))
        return _plain_inv_freq(dyn_base, dim, dtype), 1.0

    if rope_type == "yarn":
        factor = scaling["factor"]
        pos_freqs = base ** (torch.arange(0, dim, 2, dtype=dtype) / dim)
        inv_freq_extrapolation = 1.0 / pos_freqs
        inv_freq_interpolation = 1.0 / (factor * pos_freqs)
        extrapolation_weight = 1 - _yarn_ramp(scaling, base, dim, dtype)
        inv_freq = (
            inv_freq_interpolation * (1 - extrapolation_weight)
            + inv_freq_extrapolation * extrapolation_weight
        )
        return inv_freq, _yarn_attention_factor(scaling)

    if rope_type == "yarn_pose":
        # The reference blends wavelengths: each frequency is divided by a factor that moves
        # from 1 (high frequencies, extrapolated) to `factor` (low ones, interpolated).
        inv_freq = _plain_inv_freq(base, dim, dtype)
        gamma = 1 - _yarn_ramp(scaling, base, dim, dtype)
        inv_freq = inv_freq / ((1 - gamma) * scaling["factor"] + gamma)
        return inv_freq, _yarn_attention_factor(scaling)

    if rope_type == "llama3":
        inv_freq = _plain_inv_freq(base, dim, dtype)
        factor = scaling["factor"]
        low_freq_factor = scaling["low_freq_factor"]
        high_freq_factor = scaling["high_freq_factor"]
        old_context_len = scaling["original_max_position_embeddings"]
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled), 1.0

    if rope_type == "longrope":
        original = scaling["original_max_position_embeddings"]
        factor = scaling.get("factor")
        if factor is None:
            factor = max_position_embeddings / original
        attention = scaling.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        long = seq_len is not None and int(seq_len) > original
        ext = torch.tensor(scaling["long_factor" if long else "short_factor"], dtype=dtype)
        if ext.shape != (dim // 2,):
            raise ValueError(
                f"rope_scaling: {'long' if long else 'short'}_factor has {ext.numel()} entries, "
                f"expected rotary_dim/2 = {dim // 2}"
            )
        inv_freq = 1.0 / (ext * base ** (torch.arange(0, dim, 2, dtype=dtype) / dim))
        return inv_freq, float(attention)

    raise AssertionError(rope_type)  # validate_rope_scaling rejected every other type


def depends_on_positions(rope_scaling: Optional[dict]) -> bool:
    """True when the frequencies change with the largest position id of the batch."""
    return rope_type_of(rope_scaling) in ("dynamic", "longrope")
