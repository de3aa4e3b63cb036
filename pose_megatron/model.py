"""Build a LLaMA-family Megatron-Core GPTModel whose RoPE honours per-sample position ids.

``build_model`` returns a ``PoseGPTModel``: a stock ``GPTModel`` (same modules, same ``state_dict``
and ``sharded_state_dict`` keys) whose rotary module is ``PoseRotaryEmbedding`` and whose
``position_ids``/``attention_mask`` arguments are optional. Every pipeline stage computes RoPE from
the ``position_ids`` its caller passes, so intermediate stages need them too (the embedding stage
does not forward them).

``enable_pose_rope`` is the one way RoPE gets them, for our model and for one a Megatron-LM
``model_provider`` built (local or Transformer Engine spec) alike: it gives the model a
``PoseRotaryEmbedding`` and a forward pre-hook that binds the call's ``position_ids`` to it (and a
hook that unbinds them). Megatron's schedules call the module, so the hooks run. ``GPTModel``
passes no position ids to its rotary module (Megatron-LM issue #453);
docs/upstream_rope_position_ids.md describes the upstream change that would make the hooks go.

Attention scaling (YaRN, LongRoPE) is in the config's ``softmax_scale``, which attention reads when
it is built: ``model_args_to_transformer_config`` (pose_megatron.config) sets it; a model built
otherwise must have it (``enable_pose_rope`` checks; ``rotary.softmax_scale_for`` gives the value).
TE's fused RoPE (``apply_rope_fusion``) serves micro-batch 1 only; larger ones are refused.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig

from pose_megatron.config import model_args_to_transformer_config  # noqa: F401 (re-exported)
from pose_megatron.rotary import PoseRotaryEmbedding, RopeSettings, check_attention_scale

SPECS = ("auto", "local", "te")


def have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # an installed-but-broken TE raises more than ImportError
        return False
    return True


def _layer_spec(spec: str, config: TransformerConfig):
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if spec not in SPECS:
        raise ValueError(f"spec must be one of {SPECS}, got {spec!r}")
    if spec == "auto":
        spec = "te" if have_transformer_engine() and torch.cuda.is_available() else "local"
    if spec == "te":
        if not have_transformer_engine():
            raise RuntimeError(
                "spec='te' needs Transformer Engine (pip install transformer_engine[pytorch] on a "
                "CUDA machine); use spec='local' here"
            )
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
    return get_gpt_layer_local_spec(normalization=config.normalization,
                                    qk_layernorm=config.qk_layernorm)


class PoseGPTModel(GPTModel):
    """``GPTModel`` built with position-id-aware RoPE; ``position_ids=None`` means 0..s-1 and
    ``attention_mask=None`` means causal."""

    def __init__(self, *args, rope_settings, **kwargs):
        super().__init__(*args, **kwargs)
        enable_pose_rope(self, rope_settings)

    def forward(self, input_ids, position_ids=None, attention_mask=None, *args, **kwargs):
        return super().forward(input_ids, position_ids, attention_mask, *args, **kwargs)


def build_model(
    args,
    *,
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
    spec: str = "auto",
    params_dtype: torch.dtype = torch.float32,
    vp_stage: Optional[int] = None,
    rope_precision: str = "float32",
    **config_overrides,
) -> PoseGPTModel:
    """This rank's stage of the model, for Megatron's current parallel state.

    ``pre_process``/``post_process`` default to "first/last pipeline stage" (virtual-stage aware);
    ``rope_precision`` is ``"float32"`` (HF/stock numerics) or ``"float64"`` (the PoSE reference's
    float64 angle tables, see ``pose_megatron.rotary``).
    """
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        raise RuntimeError(
            "Megatron's parallel state is not initialised; call "
            "pose_megatron.parallel.initialize(...) before build_model"
        )
    config = model_args_to_transformer_config(args, params_dtype=params_dtype, **config_overrides)
    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if post_process is None:
        post_process = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    model = PoseGPTModel(
        config=config,
        transformer_layer_spec=_layer_spec(spec, config),
        vocab_size=args.vocab_size,
        max_sequence_length=args.max_position,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=args.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=args.rope_theta,
        vp_stage=vp_stage,
        rope_settings=RopeSettings.from_model_args(args, rope_precision=rope_precision),
    )
    return model


def unwrap_model(model):
    """The GPTModel inside DDP, Float16Module and friends (they keep it in ``.module``)."""
    while not isinstance(model, GPTModel) and hasattr(model, "module"):
        model = model.module
    return model


def _bind_from_call(module, args, kwargs):
    position_ids = kwargs["position_ids"] if "position_ids" in kwargs else (
        args[1] if len(args) > 1 else None)
    module.rotary_pos_emb.bind(position_ids)


def _unbind_after_call(module, args, kwargs, output):
    module.rotary_pos_emb.unbind()


def enable_pose_rope(model, args_or_rope_settings, *, rope_precision: Optional[str] = None):
    """Give a Megatron-Core GPTModel (or a list of virtual-pipeline chunks, or a wrapped model)
    position-id-aware RoPE in place, and return it.

    ``args_or_rope_settings``: a ``ModelArgs``, a ``RopeSettings`` or a dict of its fields. The
    model keeps every parameter and its ``state_dict`` keys; only ``rotary_pos_emb`` changes.
    Refused with a clear error: models whose attention applies Megatron's own YaRN factor, was
    built without this RoPE type's attention scaling (``softmax_scale``), or fuses RoPE into
    one QKV kernel (``fused_single_qkv_rope``, one table for the whole batch).
    """
    if isinstance(model, (list, tuple)):
        for chunk in model:
            enable_pose_rope(chunk, args_or_rope_settings, rope_precision=rope_precision)
        return model
    inner = unwrap_model(model)
    if not isinstance(inner, GPTModel):
        raise TypeError(f"expected a Megatron-Core GPTModel, got {type(inner).__name__}")
    config = inner.config
    if getattr(config, "multi_latent_attention", False):
        raise NotImplementedError("multi-latent attention has its own RoPE; not supported here")
    if inner.position_embedding_type != "rope":
        raise ValueError(
            f"the model uses position_embedding_type={inner.position_embedding_type!r}; PoSE needs "
            f"a model built with 'rope' (its rope_scaling supplies YaRN and the other scalings)"
        )
    if getattr(config, "fused_single_qkv_rope", False):
        raise ValueError("fused_single_qkv_rope applies one RoPE table to the whole batch; build "
                         "the config with it off for per-sample position ids")
    settings = RopeSettings.coerce(args_or_rope_settings)
    if rope_precision is not None:
        settings = dataclasses.replace(settings, rope_precision=rope_precision)
    stock = inner.rotary_pos_emb
    rotary = PoseRotaryEmbedding(
        config.kv_channels,
        settings,
        rotary_percent=getattr(inner, "rotary_percent", 1.0),
        rotary_interleaved=config.rotary_interleaved,
        config=config,
        cp_group=getattr(stock, "cp_group", None),
    )
    check_attention_scale(config, rotary.attention_scaling, getattr(inner, "rotary_percent", 1.0))
    inner.rotary_pos_emb = rotary
    if not getattr(inner, "_pose_rope_hooks", None):
        inner._pose_rope_hooks = (
            inner.register_forward_pre_hook(_bind_from_call, with_kwargs=True),
            inner.register_forward_hook(_unbind_after_call, with_kwargs=True, always_call=True),
        )
    return model
