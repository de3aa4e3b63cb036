"""The model description shared by the model builder, the converters and the training entry.

One record holds everything needed to rebuild a LLaMA-family model and its RoPE: it is written
into every checkpoint (``pose_model.json``) so that reverse conversion, evaluation and resumed
training need no architecture flags. RoPE scaling is kept in HF's own dictionary form
(``{"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 2048, ...}``) so a HF
config maps one to one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

CONFIG_FILENAME = "pose_model.json"


@dataclasses.dataclass
class ModelArgs:
    family: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_attention_heads: int = 32
    num_query_groups: Optional[int] = None  # HF num_key_value_heads; None means MHA
    head_dim: Optional[int] = None  # None means hidden_size // num_attention_heads
    norm_eps: float = 1e-6
    # What the family implies (pose_megatron.families); None takes the family's value
    qkv_bias: Optional[bool] = None  # Qwen2: q/k/v biases
    qk_layernorm: Optional[bool] = None  # Qwen3: per-head RMSNorm of q and k before RoPE
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048  # the HF config's value (the original window)
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None  # HF form, with "rope_type"; None means plain RoPE
    rotary_interleaved: bool = False
    sliding_window: Optional[int] = None  # Mistral; recorded for export, not applied in training
    init_method_std: float = 0.02
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[Any] = 2
    pad_token_id: Optional[int] = None
    torch_dtype: str = "float32"  # dtype of the weights as stored

    def __post_init__(self):
        from pose_megatron import families

        implied = families.get(self.family).megatron_config()
        for megatron_name, name in families.MEGATRON_FIELDS.items():
            if getattr(self, name) is None:
                setattr(self, name, implied[megatron_name])
            elif bool(getattr(self, name)) != implied[megatron_name]:
                raise ValueError(f"{name}={getattr(self, name)!r} does not fit model family "
                                 f"{self.family!r} (it has {megatron_name}="
                                 f"{implied[megatron_name]})")
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                    f"{self.num_attention_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_query_groups (num_key_value_heads) {self.num_query_groups}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_attention_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.rope_scaling is not None:  # the one RoPE check (unknown types, missing keys)
            from pose_megatron.rope import validate_rope_scaling

            validate_rope_scaling(self.rope_scaling,
                                  max_position_embeddings=self.max_position_embeddings)

    @property
    def max_position(self) -> int:
        """Exclusive upper bound of the position ids this model is meant to see."""
        from pose_megatron.rope import scaled_window

        return max(scaled_window(self.rope_scaling, self.max_position_embeddings),
                   self.max_position_embeddings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelArgs":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    def save(self, directory: str) -> str:
        path = os.path.join(directory, CONFIG_FILENAME)
        from pose_megatron import publish

        publish.write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str) -> "ModelArgs":
        path = os.path.join(directory, CONFIG_FILENAME)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found: {directory} is not a checkpoint written by pose_megatron "
                f"(its converters and training write {CONFIG_FILENAME} beside the weights)"
            )
        try:
            with open(path) as f:
                return cls.from_dict(json.load(f))
        except (ValueError, TypeError) as err:  # bad JSON, unknown or invalid settings
            raise ValueError(f"{path}: {err}") from None


def model_args_to_transformer_config(args: ModelArgs, **overrides):
    """The one ``ModelArgs`` -> Megatron-Core ``TransformerConfig`` translation (model builder,
    converters, evaluation and tests all use it).

    Parallel sizes come from Megatron's initialised parallel state; ``overrides`` win over
    everything (any ``TransformerConfig`` field: ``bf16``, ``sequence_parallel``, recompute...).
    Fusions default to off, so the CPU runs; turn them on with overrides on a GPU. The RoPE
    type's attention scaling becomes ``softmax_scale`` (see ``pose_megatron.rotary``).
    """
    import torch
    import torch.nn.functional as F
    from megatron.core import parallel_state as ps
    from megatron.core.transformer import TransformerConfig

    from pose_megatron import families
    from pose_megatron.rotary import softmax_scale_for

    parallel = {}
    if ps.model_parallel_is_initialized():
        parallel = dict(
            tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
            pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
            context_parallel_size=ps.get_context_parallel_world_size(),
        )
    params_dtype = overrides.get("params_dtype", torch.float32)
    kwargs = dict(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.intermediate_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups,
        kv_channels=args.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=args.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        **families.get(args.family).megatron_config(),  # add_qkv_bias, qk_layernorm
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=args.init_method_std,
        rotary_interleaved=args.rotary_interleaved,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        use_cpu_initialization=not torch.cuda.is_available(),
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        softmax_scale=softmax_scale_for(args, args.head_dim),
        **parallel,
    )
    kwargs.update(overrides)
    config = TransformerConfig(**kwargs)
    # Read by GPTModel for export metadata only; Megatron-LM sets it the same way.
    config.rotary_base = args.rope_theta
    return config
