"""Load a Megatron checkpoint (ours, Megatron-LM's or Megatron-Bridge's) as the plugin's GPTModel.

For inference and evaluation: one call gives the model of this process's rank, whatever TP/PP
the checkpoint was written at. On a bare process it starts a one-process gloo group itself; in a
job that already initialised Megatron's parallel state (``pose_megatron.parallel.initialize``),
it loads this rank's TP slice / pipeline stage.
"""

from __future__ import annotations

from typing import Optional

import torch

from pose_megatron import dtypes
from pose_megatron.config import CONFIG_FILENAME, ModelArgs
from pose_megatron.checkpoint import store
from pose_megatron.convert import weights


def _resolve_dtype(dtype, args: ModelArgs) -> torch.dtype:
    if dtype is None:
        return dtypes.to_torch(args.torch_dtype, source=f"{CONFIG_FILENAME} torch_dtype")
    if isinstance(dtype, torch.dtype):
        return dtype
    return dtypes.to_torch(dtype, source="dtype", also=("a torch dtype",))


def load_dist_into(model, path: str, *, translate: bool = False) -> None:
    """Load the torch_dist iteration directory ``path`` into a model already built (this rank's
    part); ``translate``: a GPT checkpoint into a HybridModel."""
    from megatron.core.dist_checkpointing import ShardedObject

    # _extra_state holds no weights (None for the local spec, FP8 metadata for TE); leaving it
    # out lets a checkpoint written with one spec load into the other.
    request = {k: v for k, v in model.sharded_state_dict().items()
               if not isinstance(v, ShardedObject)}
    if translate:  # a GPT checkpoint into a HybridModel: Megatron-Core's load-time translation
        from pose_megatron import megatron_compat

        megatron_compat.retarget_to_gpt_checkpoint(request, model.hybrid_layer_pattern)
    # the same top-level layout as Megatron-LM's checkpoints ({"model": ..., "iteration": ...})
    loaded = store.load_sharded({"model": request}, path)
    _apply(model, loaded["model"], path)


def _load_legacy(model, args: ModelArgs, path: str) -> None:
    from megatron.core import parallel_state as ps

    reader = store.LegacyReader(path, args)
    tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    weights.check_parallel(args, tp, pp)
    spec = weights.detect_spec(model.state_dict())
    state = dict(weights.iter_rank_state(
        reader.get, args, tp, pp, ps.get_tensor_model_parallel_rank(),
        ps.get_pipeline_model_parallel_rank(), spec))
    _apply(model, state, path)


def _apply(model, state: dict, path: str) -> None:
    state = {k: v for k, v in state.items() if not k.endswith("._extra_state")}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("._extra_state")]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{path}: checkpoint does not fit the model: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}")


def load_megatron_model(
    ckpt_dir: str, *, device: str = "cpu", dtype=None, iteration: Optional[int] = None,
    spec: str = "auto", rope_precision: str = "float32", model_class: Optional[str] = None,
):
    """The plugin's Megatron-Core model (this rank's part), weights loaded, in eval mode.

    ``forward(input_ids, position_ids, attention_mask=None)`` returns logits ``[b, s, vocab]`` on
    the last pipeline stage. ``dtype`` defaults to the dtype the checkpoint stores.
    ``model_class``: None builds the class that saved the checkpoint (a GPTModel, or a HybridModel
    for a hybrid run's checkpoint); ``"hybrid"`` also loads a GPT checkpoint, into a HybridModel,
    through Megatron-Core's load-time translation (megatron-core 0.19+).
    """
    from megatron.core import parallel_state as ps

    from pose_megatron import parallel
    from pose_megatron.model import build_model

    path = store.resolve_iteration_dir(ckpt_dir, iteration)
    fmt = store.checkpoint_format(path)
    # pose_model.json, else a Megatron-Bridge run_config.yaml or Megatron-LM's saved args
    args = store.checkpoint_model_args(ckpt_dir, path, fmt)
    params_dtype = _resolve_dtype(dtype, args)
    if not ps.model_parallel_is_initialized():
        parallel.initialize(1, 1, device=device)
    if device == "cpu" and spec == "auto":
        spec = "local"
    saved_class = "hybrid" if fmt == "torch_dist" and store.checkpoint_hybrid_pattern(path) \
        else "gpt"
    model_class = model_class or saved_class
    if saved_class == "hybrid" and model_class != "hybrid":
        raise ValueError(f"{ckpt_dir}: saved by a HybridModel run; load it with "
                         "model_class='hybrid'")
    if fmt == "legacy" and model_class != "gpt":
        raise ValueError(f"{ckpt_dir}: a legacy (per-rank) checkpoint loads into a GPTModel only; "
                         "convert it with --format torch_dist for a HybridModel")
    model = build_model(args, spec=spec, params_dtype=params_dtype, rope_precision=rope_precision,
                        model_class=model_class)
    if fmt == "torch_dist":
        load_dist_into(model, path, translate=model_class != saved_class)
    else:
        _load_legacy(model, args, path)
    return model.to(device).eval()
