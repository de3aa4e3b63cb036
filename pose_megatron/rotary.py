"""Position-id-aware rotary embedding for Megatron-Core attention.

Megatron-Core's ``GPTModel`` asks its ``rotary_pos_emb`` module for the RoPE *angles* of positions
``0..S-1`` (an ``[S, 1, 1, D]`` tensor) and self-attention turns them into cos/sin (times an
``mscale`` read from the config) right before core attention. PoSE needs each sample's own
position ids, so this module returns the angles of the ids bound for the current forward:
``[S, B, 1, D]``, which Megatron's unfused apply broadcasts against ``[S, B, H, D]`` queries and keys
unchanged. Tensor and sequence parallelism see the full-length sequence at that point, so they are
unaffected; context parallelism slices the table like the stock module does.

With no ids bound (or ``position_ids=None``) it returns the stock ``[S, 1, 1, D]`` table computed
with the same float32 operations as Megatron-Core, so outputs are bit-identical to stock RoPE.

Attention scaling (YaRN's, LongRoPE's) reaches attention the way Megatron-Core's own YaRN does it:
through the config's ``yarn_*`` attributes, which attention turns into the ``mscale`` multiplying
both cos and sin (HF multiplies both by ``attention_scaling`` too, so logits scale by its square).

Precision (``rope_precision``):
- ``"float32"`` (default): angle = float32(position) * float32(inv_freq), exactly HF and stock
  Megatron. The angle's rounding error grows with the position: about ulp(position * inv_freq),
  i.e. up to 0.0078 rad at position 131072 for the highest frequency.
- ``"float64"``: the PoSE reference's choice. The same float32 inv_freq times the position in
  float64, reduced modulo 2*pi, then cast: cos/sin are then accurate to float32 rounding (~1e-7)
  at any position. Costs a table over 0..max(position id) (``max_pos * D/2`` floats, grown on
  demand) and a gather; it departs from HF/stock numerics by that rounding-error difference.

Behaviour worth knowing:
- ``dynamic`` and ``longrope`` pick their frequencies from max(position ids) + 1 of the whole
  batch, as HF 5 does. HF's dynamic module is stateful (it keeps the largest frequencies seen
  until a batch fits the original window again); this one is stateless, so the two agree on a
  fresh HF module or on non-decreasing lengths.
- Each forward reads min/max of the position ids (one host sync) to check the range and size
  tables; that rules out CUDA-graph capture of the rotary step.
- THD (packed) batches take ids ``[1, total_tokens]``; Megatron maps such a table token by
  token. Inference with a KV cache asks for the cache's whole length and gets the contiguous
  table (decoding is contiguous).
- Transformer Engine's fused RoPE kernel takes ``[S, 1, 1, D]`` only: when the config asks for
  it, each forward turns ``apply_rope_fusion`` on for micro-batch 1 and off for per-sample
  tables (B > 1), where Megatron's unfused apply runs. Megatron also falls back to unfused
  whenever the attention scaling is not 1 (YaRN).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from megatron.core.models.common.embeddings.rope_utils import get_pos_emb_on_this_cp_rank
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

from pose_megatron import rope

PRECISIONS = ("float32", "float64")


@dataclasses.dataclass
class RopeSettings:
    """Everything the rotary module needs; ``from_model_args`` reads it off a ``ModelArgs``."""

    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    max_position: Optional[int] = None  # exclusive limit on position ids; None: no check
    max_position_embeddings: Optional[int] = None  # the HF config's value (dynamic NTK, fallbacks)
    rope_precision: str = "float32"

    @classmethod
    def from_model_args(cls, args, rope_precision: str = "float32") -> "RopeSettings":
        return cls(
            rope_theta=args.rope_theta,
            rope_scaling=args.rope_scaling,
            max_position=args.max_position,
            max_position_embeddings=args.max_position_embeddings,
            rope_precision=rope_precision,
        )

    @classmethod
    def coerce(cls, value) -> "RopeSettings":
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"unknown RoPE settings {unknown}; known: {sorted(known)}")
            return cls(**value)
        if hasattr(value, "rope_scaling") and hasattr(value, "max_position"):
            return cls.from_model_args(value)
        raise TypeError(
            f"expected ModelArgs, RopeSettings or a dict of RoPE settings, got {type(value).__name__}"
        )


def _interleave_or_concat(freqs: Tensor, interleaved: bool) -> Tensor:
    # Megatron's layouts: halves [f, f] (HF/LLaMA) or pairs [f0, f0, f1, f1, ...] (GPT-J style).
    if not interleaved:
        return torch.cat((freqs, freqs), dim=-1)
    return torch.stack((freqs, freqs), dim=-1).flatten(-2)


def mscale_config_values(attention_scaling: float) -> tuple[float, float, float]:
    """``(yarn_rotary_scaling_factor, yarn_mscale, yarn_mscale_all_dim)`` that make Megatron-Core's
    attention multiply cos and sin by exactly ``attention_scaling``.

    Attention computes ``0.1 * mscale * ln(s) + 1`` (divided by the same with ``mscale_all_dim``,
    which 0 makes exactly 1). With ``s = e`` we search the float ``mscale`` whose evaluation rounds
    to ``attention_scaling`` bit for bit, checking with Megatron-Core's own function.
    """
    from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
        _yarn_get_concentration_factor,
    )

    evaluate = getattr(_yarn_get_concentration_factor, "__wrapped__", _yarn_get_concentration_factor)
    target = float(attention_scaling)
    if target == 1.0:
        return 1.0, 1.0, 1.0
    scale = math.e
    guess = (target - 1.0) / (0.1 * math.log(scale))
    candidates = [guess]
    up = down = guess
    for _ in range(256):
        up, down = math.nextafter(up, math.inf), math.nextafter(down, -math.inf)
        candidates += [up, down]
    for mscale in candidates:
        if evaluate(scale, mscale, 0.0) == target:
            return scale, mscale, 0.0
    warnings.warn(f"attention scaling {target!r} is not exactly representable; off by < 1e-15")
    return scale, guess, 0.0


def configure_attention_scaling(config, attention_scaling: float, model=None) -> None:
    """Set the config attributes through which Megatron-Core attention applies the scaling.

    Megatron-Core 0.16 reads them on every forward; 0.19 caches the factor in each attention
    module at construction (``_yarn_concentration_factor``), so with ``model`` given those
    cached values are updated too.
    """
    from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
        _yarn_get_concentration_factor_from_config,
    )

    if attention_scaling != 1.0 or hasattr(config, "yarn_rotary_scaling_factor"):
        scale, mscale, mscale_all_dim = mscale_config_values(attention_scaling)
        config.yarn_rotary_scaling_factor = scale
        config.yarn_mscale = mscale
        config.yarn_mscale_all_dim = mscale_all_dim
    got = _yarn_get_concentration_factor_from_config(config)
    if abs(got - attention_scaling) > 1e-12:
        raise RuntimeError(
            f"Megatron-Core attention would scale RoPE by {got}, expected {attention_scaling}"
        )
    if model is not None:
        for module in model.modules():
            if hasattr(module, "_yarn_concentration_factor"):
                module._yarn_concentration_factor = got


class PoseRotaryEmbedding(RotaryEmbedding):
    """Drop-in for ``GPTModel.rotary_pos_emb`` that honours per-sample position ids.

    ``GPTModel`` calls ``module(seq_len, packed_seq=..., cp_group=...)`` without position ids, so
    the model binds them first (``bind``/``PoseGPTModel.forward``, or the hooks that
    ``enable_pose_rope`` installs). Holds no parameters or persistent buffers, so a model's
    ``state_dict`` keys stay exactly the stock ones.
    """

    def __init__(
        self,
        kv_channels: int,
        settings: RopeSettings,
        *,
        rotary_percent: float = 1.0,
        rotary_interleaved: bool = False,
        config=None,
        cp_group=None,
    ) -> None:
        nn.Module.__init__(self)  # the stock __init__ allocates on CUDA; we need none of it
        if settings.rope_precision not in PRECISIONS:
            raise ValueError(
                f"rope_precision must be one of {PRECISIONS}, got {settings.rope_precision!r}"
            )
        self.settings = settings
        self.scaling = rope.validate_rope_scaling(
            settings.rope_scaling, max_position_embeddings=settings.max_position_embeddings
        )
        self.rope_type = self.scaling["rope_type"]
        if rotary_percent < 1.0:
            self.scaling["partial_rotary_factor"] = rotary_percent
        self.head_dim = kv_channels
        self.rotary_interleaved = rotary_interleaved
        self.seq_len_interpolation_factor = None
        self.max_position = settings.max_position
        self.precision = settings.rope_precision
        self.config = config
        self._fusion_requested = bool(config is not None and config.apply_rope_fusion)
        if self.rope_type == "yarn" and rotary_interleaved:
            raise ValueError("YaRN RoPE with rotary_interleaved=True is not supported (as in HF)")

        # Plain attribute, not a buffer, as in the stock module (keeps state_dict keys stock).
        self.inv_freq, self.attention_scaling = self._inv_freq(seq_len=None)
        self.cp_group = cp_group
        if cp_group is None:
            from megatron.core import parallel_state

            self.cp_group = parallel_state.get_context_parallel_group(check_initialized=False)
        self._position_ids: Optional[Tensor] = None
        self._tables: dict = {}
        self._warned_training = False

    # ---- frequencies -----------------------------------------------------------------------

    def _inv_freq(self, seq_len: Optional[int]) -> tuple[Tensor, float]:
        return rope.compute_inv_freq(
            self.head_dim,
            self.settings.rope_theta,
            self.scaling,
            seq_len=seq_len,
            max_position_embeddings=self.settings.max_position_embeddings,
            dtype=torch.float32,
        )

    def _frequencies(self, max_position_id: int, device) -> tuple[Tensor, Optional[tuple]]:
        """inv_freq for a batch with this largest position id, and the key under which tables
        built from it may be cached (None: they change batch by batch)."""
        device = torch.device(device)
        if self.rope_type == "dynamic":
            # HF keys it on max(position_ids) + 1 of the batch, passed as a tensor (see rope.py).
            seq_len = torch.tensor(max_position_id + 1)
            return self._inv_freq(seq_len=seq_len)[0].to(device), None
        if self.rope_type == "longrope":
            long = max_position_id + 1 > self.scaling["original_max_position_embeddings"]
            key = ("longrope", long, device)
            if key not in self._tables:
                self._tables[key] = self._inv_freq(seq_len=max_position_id + 1)[0].to(device)
            return self._tables[key], key
        if self.inv_freq.device != device:
            self.inv_freq = self.inv_freq.to(device)
        return self.inv_freq, ("static", device)

    def _float64_table(self, inv_freq: Tensor, rows: int, key: Optional[tuple]) -> Tensor:
        """float32 angles of positions 0..rows-1, computed in float64 and reduced mod 2*pi."""
        table = self._tables.get(("table64", key)) if key is not None else None
        if table is None or table.shape[0] < rows:
            # Grow geometrically so a run with slowly rising maxima rebuilds only a few times.
            rows = max(rows, 2 * table.shape[0] if table is not None else rows)
            if self.max_position is not None:
                rows = max(min(rows, self.max_position), 1)
            positions = torch.arange(rows, dtype=torch.float64, device=inv_freq.device)
            angles = torch.outer(positions, inv_freq.to(torch.float64))
            table = torch.remainder(angles, 2 * math.pi).to(torch.float32)
            if key is not None:
                self._tables[("table64", key)] = table
        return table

    def angles(self, position_ids: Tensor) -> Tensor:
        """RoPE angles ``[S, B, 1, D]`` (float32) for integer ``position_ids`` ``[B, S]``."""
        if position_ids.dim() == 1:
            position_ids = position_ids[None]
        if position_ids.dim() != 2:
            raise ValueError(f"position_ids must be [batch, seq], got shape {tuple(position_ids.shape)}")
        if position_ids.is_floating_point():
            raise TypeError(f"position_ids must be integers, got {position_ids.dtype}")
        low, high = (int(v) for v in torch.aminmax(position_ids))
        self._check_range(low, high)
        inv_freq, key = self._frequencies(high, position_ids.device)
        ids = position_ids.t()  # [S, B]: the sequence-first layout attention wants, built directly
        if self.precision == "float64":
            freqs = self._float64_table(inv_freq, high + 1, key)[ids]
        else:
            freqs = ids[..., None].to(torch.float32) * inv_freq
        return _interleave_or_concat(freqs, self.rotary_interleaved)[:, :, None, :]

    def _check_range(self, low: int, high: int) -> None:
        if low < 0:
            raise ValueError(f"position ids must be >= 0, got {low}")
        if self.max_position is not None and high >= self.max_position:
            raise ValueError(
                f"position id {high} is outside this model's RoPE range [0, {self.max_position}) "
                f"(ModelArgs.max_position = original window x rope factor); raise the rope "
                f"scaling factor or shorten the target length"
            )

    def get_emb(self, max_seq_len: int, offset: int = 0) -> Tensor:
        """The stock contiguous table ``[S, 1, 1, D]`` for positions offset..offset+S-1."""
        if self.precision == "float64" or rope.depends_on_positions(self.scaling):
            ids = torch.arange(offset, offset + max_seq_len, device=self.inv_freq.device)
            return self.angles(ids[None])
        self._check_range(offset, offset + max_seq_len - 1)
        inv_freq = self.inv_freq
        device = _current_device()
        if inv_freq.device != device:
            inv_freq = self.inv_freq = inv_freq.to(device)
        # Same float32 operations as Megatron-Core's RotaryEmbedding.get_freqs_non_repeated.
        seq = torch.arange(max_seq_len, device=inv_freq.device, dtype=inv_freq.dtype) + offset
        freqs = torch.outer(seq, inv_freq)
        return _interleave_or_concat(freqs, self.rotary_interleaved)[:, None, None, :]

    def get_cos_sin(self, max_seq_len: int, offset: int = 0) -> tuple[Tensor, Tensor]:
        # Used only by Megatron's flash-decode inference, which cannot take per-sample ids.
        freqs = self.get_emb(max_seq_len, offset)[:, 0, 0, : self.inv_freq.numel()]
        return torch.cos(freqs), torch.sin(freqs)

    # ---- binding and the call GPTModel makes -----------------------------------------------

    def bind(self, position_ids: Optional[Tensor]) -> None:
        """Position ids ``[B, S]`` for the next forward (None: contiguous 0..S-1)."""
        self._position_ids = position_ids

    def unbind(self) -> None:
        self._position_ids = None

    def forward(
        self,
        max_seq_len: int,
        offset: int = 0,
        packed_seq: bool = False,
        cp_group: Optional[torch.distributed.ProcessGroup] = None,
    ) -> Tensor:
        if self.training and self.rope_type == "dynamic" and not self._warned_training:
            self._warned_training = rope.warn_if_training(self.scaling)
        cp_group = cp_group if cp_group is not None else self.cp_group
        cp_size = cp_group.size() if cp_group is not None else 1
        ids = self._position_ids
        if ids is not None and ids.dim() == 1:
            ids = ids[None]

        if ids is None:
            emb = self.get_emb(max_seq_len, offset)
            already_local = False
        else:
            if offset:
                raise ValueError("offset and bound position ids cannot be combined")
            seq = ids.shape[1]
            if packed_seq:
                # THD: Megatron maps a table of one row per packed token exactly (its "all
                # positions" case), and slices it per CP rank itself.
                if ids.shape[0] != 1:
                    raise ValueError(
                        "packed (THD) sequences take position ids of shape [1, total_tokens], "
                        f"got {tuple(ids.shape)}"
                    )
                if self._fusion_requested:  # TE's THD kernel assumes positions restart at 0
                    self.config.apply_rope_fusion = False
                return self.angles(ids)
            if seq == max_seq_len:
                already_local = False
            elif seq * cp_size == max_seq_len:
                already_local = True  # the batch was split for context parallelism upstream
            elif not self.training and seq < max_seq_len:
                # Inference with a KV cache asks for its whole capacity; the ids of the tokens
                # in flight cannot describe that, and decoding is contiguous anyway.
                emb = self.get_emb(max_seq_len, 0)
                ids = None
                already_local = False
            else:
                raise ValueError(
                    f"position_ids cover {seq} tokens but the model runs {max_seq_len} "
                    f"(context parallel size {cp_size}); pass position ids of shape [batch, seq]"
                )
            if ids is not None:
                emb = self.angles(ids)

        if self._fusion_requested:
            # TE's fused kernel takes only [S, 1, 1, D]; per-sample tables use the unfused apply.
            self.config.apply_rope_fusion = emb.shape[1] == 1
        if cp_size > 1 and not packed_seq and not already_local:
            emb = get_pos_emb_on_this_cp_rank(emb, 0, cp_group)
        return emb


def _current_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
