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

Attention scaling (YaRN's mscale, LongRoPE's attention factor): HF multiplies cos and sin by it,
so attention logits scale by its square. Here it goes through Megatron-Core's public seam for that,
``TransformerConfig.softmax_scale = attention_scaling**2 / sqrt(head_dim)`` (the way torchtitan
folds it), set when the config is built (``attention_softmax_scale``); this module's cos/sin are
unscaled, and a model built without that scale is refused (``check_attention_scale``).

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
- Transformer Engine's fused RoPE kernel takes ``[S, 1, 1, D]`` only: with ``apply_rope_fusion``
  on, micro-batch 1 uses it and per-sample tables (B > 1, packed sequences) are refused with a
  clear error rather than computed wrongly; build the config with it off for B > 1.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import Tensor

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


def rope_attention_scaling(settings: RopeSettings, head_dim: int) -> float:
    """The factor HF multiplies cos and sin by for this RoPE type (YaRN's mscale, LongRoPE's
    attention factor; 1 for the others)."""
    return rope.compute_inv_freq(
        head_dim, settings.rope_theta, settings.rope_scaling,
        max_position_embeddings=settings.max_position_embeddings, dtype=torch.float32,
    )[1]


def attention_softmax_scale(attention_scaling: float, kv_channels: int) -> Optional[float]:
    """``TransformerConfig.softmax_scale`` that gives attention the RoPE type's scaling.

    HF multiplies both cos and sin by ``attention_scaling``, which scales q and k, so QK^T by its
    square: the same logits as multiplying the softmax scale ``1/sqrt(d)`` by it. Megatron-Core's
    DotProductAttention (``baddbmm(alpha=softmax_scale)``) and TEDotProductAttention (TE's
    ``softmax_scale``) both take it from the config at construction. None (Megatron's default
    ``1/sqrt(d)``) when there is no scaling.
    """
    if attention_scaling == 1.0:
        return None
    return attention_scaling**2 / math.sqrt(kv_channels)


def softmax_scale_for(settings, kv_channels: int) -> Optional[float]:
    """``TransformerConfig.softmax_scale`` for a model with these RoPE settings (a ``RopeSettings``,
    a dict of its fields or a ``ModelArgs``); None when the RoPE type has no attention scaling.

    A Megatron-LM job sets ``args.softmax_scale`` to it before its model provider runs: Megatron-LM
    copies every argument named like a ``TransformerConfig`` field into the config (0.16 and 0.19).
    """
    settings = RopeSettings.coerce(settings)
    return attention_softmax_scale(rope_attention_scaling(settings, kv_channels), kv_channels)


def check_attention_scale(config, attention_scaling: float, rotary_percent: float = 1.0) -> None:
    """Refuse a model whose attention was not built with the RoPE type's attention scaling."""
    kv_channels = config.kv_channels
    if attention_scaling != 1.0 and rotary_percent < 1.0:
        # HF scales only the rotated part of q and k; a softmax scale scales all of it.
        raise NotImplementedError(
            f"attention scaling {attention_scaling} with partial rotary (rotary_percent "
            f"{rotary_percent}) is not supported"
        )
    if getattr(config, "yarn_rotary_scaling_factor", None) is not None:
        raise ValueError(
            "the model's config carries Megatron-Core's own YaRN settings (yarn_*), which its "
            "attention applies itself; build it with position_embedding_type='rope' and no yarn_* "
            "attributes (Megatron-LM: --position-embedding-type rope) and give PoSE the YaRN "
            "scaling (rope_scaling / --rope-scaling-type yarn)"
        )
    default = 1.0 / math.sqrt(kv_channels)
    have = config.softmax_scale if config.softmax_scale is not None else default
    want = attention_softmax_scale(attention_scaling, kv_channels) or default
    if not math.isclose(have, want, rel_tol=1e-12):
        raise ValueError(
            f"the model's attention was built with softmax_scale {have!r}, but this RoPE scaling "
            f"needs {want!r} (attention scaling {attention_scaling} squared / sqrt({kv_channels})): "
            f"build its TransformerConfig with softmax_scale=pose_megatron.rotary."
            f"softmax_scale_for(rope_settings, {kv_channels}) (Megatron-LM: set args.softmax_scale "
            f"to it before the model provider runs)"
        )


class PoseRotaryEmbedding(RotaryEmbedding):
    """Megatron-Core's ``RotaryEmbedding`` honouring per-sample position ids.

    ``GPTModel`` calls ``module(seq_len, packed_seq=..., cp_group=...)`` without position ids, so
    the ids of the current forward are bound first (``bind``; ``pose_megatron.model`` does it from
    the model's own ``position_ids`` argument). Holds no parameters or persistent buffers, so a
    model's ``state_dict`` keys stay exactly the stock ones.
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
        if settings.rope_precision not in PRECISIONS:
            raise ValueError(
                f"rope_precision must be one of {PRECISIONS}, got {settings.rope_precision!r}"
            )
        scaling = rope.validate_rope_scaling(
            settings.rope_scaling, max_position_embeddings=settings.max_position_embeddings
        )
        if scaling["rope_type"] == "yarn" and rotary_interleaved:
            raise ValueError("YaRN RoPE with rotary_interleaved=True is not supported (as in HF)")
        # The base sets the layout, the CP group and a plain-RoPE inv_freq (on the CPU), which
        # the scaled one below replaces; interpolation is in our inv_freq, not in its positions.
        super().__init__(
            kv_channels,
            rotary_percent,
            rotary_interleaved=rotary_interleaved,
            rotary_base=settings.rope_theta,
            use_cpu_initialization=True,
            cp_group=cp_group,
        )
        self.settings = settings
        self.scaling = scaling
        self.rope_type = scaling["rope_type"]
        if rotary_percent < 1.0:
            self.scaling["partial_rotary_factor"] = rotary_percent
        self.head_dim = kv_channels
        self.max_position = settings.max_position
        self.precision = settings.rope_precision
        self.config = config
        # Plain attribute, not a buffer, as in the stock module (keeps state_dict keys stock).
        self.inv_freq, self.attention_scaling = self._inv_freq(seq_len=None)
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
        device = _current_device()
        if self.inv_freq.device != device:
            self.inv_freq = self.inv_freq.to(device)
        # Same float32 operations as Megatron-Core's RotaryEmbedding.get_freqs_non_repeated.
        seq = torch.arange(max_seq_len, device=device, dtype=self.inv_freq.dtype) + offset
        freqs = torch.outer(seq, self.inv_freq)
        return _interleave_or_concat(freqs, self.rotary_interleaved)[:, None, None, :]

    def get_cos_sin(self, max_seq_len: int, offset: int = 0) -> tuple[Tensor, Tensor]:
        # Used only by Megatron's flash-decode inference, which cannot take per-sample ids.
        freqs = self.get_emb(max_seq_len, offset)[:, 0, 0, : self.inv_freq.numel()]
        return torch.cos(freqs), torch.sin(freqs)

    # ---- binding and the call GPTModel makes -----------------------------------------------

    def bind(self, position_ids: Optional[Tensor]) -> None:
        """Position ids ``[B, S]`` for the next forward (None: contiguous 0..S-1)."""
        if position_ids is not None and position_ids.dim() == 1:
            position_ids = position_ids[None]
        self._position_ids = position_ids

    def unbind(self) -> None:
        self._position_ids = None

    def _ids_for(self, max_seq_len: int, offset: int, packed_seq: bool, cp_size: int):
        """The bound ids this call uses, or None for the contiguous table."""
        ids = self._position_ids
        if ids is None:
            return None
        if offset:
            raise ValueError("offset and bound position ids cannot be combined")
        if packed_seq:
            # THD: Megatron maps a table of one row per packed token exactly (its "all
            # positions" case), and slices it per CP rank itself.
            if ids.shape[0] != 1:
                raise ValueError("packed (THD) sequences take position ids of shape "
                                 f"[1, total_tokens], got {tuple(ids.shape)}")
            return ids
        seq = ids.shape[1]
        if seq == max_seq_len or seq * cp_size == max_seq_len:  # full, or already CP-local
            return ids
        if not self.training and seq < max_seq_len:
            # Inference with a KV cache asks for its whole capacity; the ids of the tokens in
            # flight cannot describe that, and decoding is contiguous anyway.
            return None
        raise ValueError(
            f"position_ids cover {seq} tokens but the model runs {max_seq_len} (context parallel "
            f"size {cp_size}); pass position ids of shape [batch, seq]"
        )

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
        ids = self._ids_for(max_seq_len, offset, packed_seq, cp_size)
        emb = self.get_emb(max_seq_len, offset) if ids is None else self.angles(ids)
        if self.config is not None and self.config.apply_rope_fusion and ids is not None and (
                packed_seq or emb.shape[1] > 1):
            # TE's fused kernels take one [S, 1, 1, D] table for the micro-batch (and, for THD,
            # positions restarting at 0 in each sequence).
            raise ValueError(
                "apply_rope_fusion is on, but Transformer Engine's fused RoPE cannot take "
                "per-sample position ids (micro-batch > 1 or packed sequences): build the config "
                "with apply_rope_fusion=False (Megatron-LM: --no-rope-fusion)"
            )
        if cp_size > 1 and not packed_seq and emb.shape[0] == max_seq_len:
            emb = get_pos_emb_on_this_cp_rank(emb, 0, cp_group)
        return emb


def _current_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
