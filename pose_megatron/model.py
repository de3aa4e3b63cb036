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

Model classes (``model_class``): ``"gpt"`` builds ``GPTModel``, the class megatron-core 0.16 has and
0.19 deprecates; ``"hybrid"`` builds the same LLaMA-family model as a ``HybridModel`` (0.19+), the
class 0.19 moves to, with the pattern ``*-`` per GPT block (one attention layer, one MLP layer;
``|`` between pipeline stages). Its rotary module and the call it gets are GPTModel's (a sequence
length, no position ids), so ``enable_pose_rope`` serves both with the same hooks. Megatron-Core's
hybrid layer specs are Transformer Engine only; the local one here is assembled through
``ModuleSpec`` from the layers of ``get_gpt_layer_local_spec``, with their checkpoint names, so a
GPT checkpoint translates onto it (``megatron_compat.retarget_to_gpt_checkpoint``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig

from pose_megatron import megatron_compat
from pose_megatron.config import model_args_to_transformer_config  # noqa: F401 (re-exported)
from pose_megatron.rotary import PoseRotaryEmbedding, RopeSettings, check_attention_scale

SPECS = ("auto", "local", "te")
MODEL_CLASSES = ("gpt", "hybrid")


def have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # an installed-but-broken TE raises more than ImportError
        return False
    return True


def _resolve_spec(spec: str) -> str:
    if spec not in SPECS:
        raise ValueError(f"spec must be one of {SPECS}, got {spec!r}")
    if spec == "auto":
        spec = "te" if have_transformer_engine() and torch.cuda.is_available() else "local"
    if spec == "te" and not have_transformer_engine():
        raise RuntimeError(
            "spec='te' needs Transformer Engine (pip install transformer_engine[pytorch] on a "
            "CUDA machine); use spec='local' here"
        )
    return spec


def _layer_spec(spec: str, config: TransformerConfig):
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if _resolve_spec(spec) == "te":
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
    return get_gpt_layer_local_spec(normalization=config.normalization,
                                    qk_layernorm=config.qk_layernorm)


def hybrid_layer_pattern(num_layers: int, stages: int = 1) -> str:
    """The HybridModel pattern of a ``num_layers``-block GPT model: ``*-`` per block, ``|`` between
    pipeline stages (Megatron's explicit stage boundaries; each stage gets whole blocks)."""
    if num_layers % stages:
        raise ValueError(f"{num_layers} layers do not split into {stages} pipeline stages")
    return "|".join(["*-" * (num_layers // stages)] * stages)


def hybrid_stack_spec(spec: str, normalization: str = "RMSNorm", qk_layernorm: bool = False):
    """The ``HybridStack`` spec for ``*-`` patterns: Megatron-Core's own (Transformer Engine) for
    ``spec='te'``, else one assembled from the GPT local layer spec's modules (Megatron-LM's
    ``pretrain_hybrid.py`` takes it as ``--spec pose_megatron.hybrid_local_spec
    hybrid_stack_spec``)."""
    megatron_compat.require_hybrid("a hybrid model (model_class='hybrid')")
    if _resolve_spec(spec) == "te":
        if qk_layernorm:  # Megatron's TE hybrid spec was not checked with QK norm (no GPU here)
            raise ValueError("a hybrid model with QK norm (Qwen3) is built with the local spec "
                             "only; use spec='local' or model_class='gpt'")
        from megatron.core.models.hybrid.hybrid_layer_specs import hybrid_stack_spec as te_spec

        return te_spec
    from megatron.core.models.hybrid.hybrid_block import HybridStackSubmodules
    from megatron.core.ssm.mlp_layer import MLPLayer
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_layer import (TransformerLayer,
                                                             TransformerLayerSubmodules)

    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    gpt = get_gpt_layer_local_spec(normalization=normalization,
                                   qk_layernorm=qk_layernorm).submodules
    # the GPT local layer's checkpoint names (its norms under the fused TE names), split by half
    names = gpt.sharded_state_dict_keys_map
    attention = ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
        input_layernorm=gpt.input_layernorm, self_attention=gpt.self_attention,
        self_attn_bda=gpt.self_attn_bda,
        sharded_state_dict_keys_map={k: v for k, v in names.items() if k == "input_layernorm."}))
    mlp = ModuleSpec(module=MLPLayer, submodules=TransformerLayerSubmodules(
        pre_mlp_layernorm=gpt.pre_mlp_layernorm, mlp=gpt.mlp, mlp_bda=gpt.mlp_bda,
        sharded_state_dict_keys_map={k: v for k, v in names.items() if k == "pre_mlp_layernorm."}))
    return ModuleSpec(module=megatron_compat.local_hybrid_stack(gpt.input_layernorm),
                      submodules=HybridStackSubmodules(attention_layer=attention, mlp_layer=mlp))


class _PoseModel:
    """Mixed into a Megatron-Core language model: position-id-aware RoPE, ``position_ids=None``
    means 0..s-1 and ``attention_mask=None`` means causal."""

    def __init__(self, *args, rope_settings, **kwargs):
        super().__init__(*args, **kwargs)
        enable_pose_rope(self, rope_settings)

    def forward(self, input_ids, position_ids=None, attention_mask=None, *args, **kwargs):
        return super().forward(input_ids, position_ids, attention_mask, *args, **kwargs)


class PoseGPTModel(_PoseModel, GPTModel):
    """``GPTModel`` built with position-id-aware RoPE."""


_POSE_HYBRID = []


def pose_hybrid_model_class():
    """``PoseHybridModel``: ``HybridModel`` built with position-id-aware RoPE (megatron-core 0.19+;
    made on first use, since 0.16 has no HybridModel)."""
    megatron_compat.require_hybrid("a hybrid model (model_class='hybrid')")
    if not _POSE_HYBRID:
        hybrid = megatron_compat.hybrid_model_class()
        _POSE_HYBRID.append(type("PoseHybridModel", (_PoseModel, hybrid),
                                 {"__doc__": "``HybridModel`` built with position-id-aware RoPE.",
                                  "__module__": __name__}))
    return _POSE_HYBRID[0]


def model_types() -> tuple:
    """The Megatron-Core model classes ``enable_pose_rope`` serves in this megatron-core."""
    hybrid = megatron_compat.hybrid_model_class()
    return (GPTModel,) if hybrid is None else (GPTModel, hybrid)


def build_model(
    args,
    *,
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
    spec: str = "auto",
    params_dtype: torch.dtype = torch.float32,
    vp_stage: Optional[int] = None,
    rope_precision: str = "float32",
    model_class: str = "gpt",
    **config_overrides,
):
    """This rank's stage of the model, for Megatron's current parallel state.

    ``pre_process``/``post_process`` default to "first/last pipeline stage" (virtual-stage aware);
    ``rope_precision`` is ``"float32"`` (HF/stock numerics) or ``"float64"`` (the PoSE reference's
    float64 angle tables, see ``pose_megatron.rotary``); ``model_class`` is ``"gpt"``
    (``PoseGPTModel``) or ``"hybrid"`` (``PoseHybridModel``, megatron-core 0.19+).
    """
    from megatron.core import parallel_state as ps

    if model_class not in MODEL_CLASSES:
        raise ValueError(f"model_class must be one of {MODEL_CLASSES}, got {model_class!r}")
    if model_class == "hybrid":
        megatron_compat.require_hybrid("model_class='hybrid'")
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
    common = dict(
        config=config,
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
    if model_class == "hybrid":
        stages = ps.get_pipeline_model_parallel_world_size() * (
            ps.get_virtual_pipeline_model_parallel_world_size() or 1)
        return pose_hybrid_model_class()(
            hybrid_stack_spec=hybrid_stack_spec(spec, config.normalization,
                                                config.qk_layernorm),
            hybrid_layer_pattern=hybrid_layer_pattern(args.num_layers, stages), **common)
    return PoseGPTModel(transformer_layer_spec=_layer_spec(spec, config), **common)


def unwrap_model(model):
    """The GPTModel or HybridModel inside DDP, Float16Module and friends (they keep it in
    ``.module``)."""
    types = model_types()
    while not isinstance(model, types) and hasattr(model, "module"):
        model = model.module
    return model


def _bind_from_call(module, args, kwargs):
    position_ids = kwargs["position_ids"] if "position_ids" in kwargs else (
        args[1] if len(args) > 1 else None)
    module.rotary_pos_emb.bind(position_ids)


def _unbind_after_call(module, args, kwargs, output):
    module.rotary_pos_emb.unbind()


def enable_pose_rope(model, args_or_rope_settings, *, rope_precision: Optional[str] = None):
    """Give a Megatron-Core GPTModel or HybridModel (or a list of virtual-pipeline chunks, or a
    wrapped model) position-id-aware RoPE in place, and return it.

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
    if not isinstance(inner, model_types()):
        names = " or ".join(t.__name__ for t in model_types())
        raise TypeError(f"expected a Megatron-Core {names}, got {type(inner).__name__}")
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
    # GPTModel keeps rotary_percent; HybridModel only gives it to its rotary module (inv_freq
    # holds one entry per rotated pair)
    rotary_percent = getattr(inner, "rotary_percent", None) or (
        2 * stock.inv_freq.numel() / config.kv_channels)
    rotary = PoseRotaryEmbedding(
        config.kv_channels,
        settings,
        rotary_percent=rotary_percent,
        rotary_interleaved=config.rotary_interleaved,
        config=config,
        cp_group=getattr(stock, "cp_group", None),
    )
    check_attention_scale(config, rotary.attention_scaling, rotary_percent)
    inner.rotary_pos_emb = rotary
    if not getattr(inner, "_pose_rope_hooks", None):
        inner._pose_rope_hooks = (
            inner.register_forward_pre_hook(_bind_from_call, with_kwargs=True),
            inner.register_forward_hook(_unbind_after_call, with_kwargs=True, always_call=True),
        )
    return model
