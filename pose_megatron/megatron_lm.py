"""Helpers to PoSE-train inside Megatron-LM's own ``pretrain_gpt.py`` (or your copy of it).

examples/megatron_lm/ holds the change as a patch of each supported release's script
(core_v0.16.1, core_v0.19.0); docs/embedding.md explains it line by line. One helper set serves
both releases, following the signatures of their own functions:
  1. ``pose_extra_args_provider(existing)``: the script's own ``extra_args_provider`` (ModelOpt's
     when installed, else None) chained with ``add_pose_args``. 0.16 hands it to ``pretrain``,
     0.19 to ``parse_and_validate_args``; both call ``provider(parser)``.
  2. ``pose_model_provider(provider)``: wraps ``partial(model_provider, gpt_builder)`` (0.15+
     providers take the builder first) so every chunk it returns uses position-id-aware RoPE
     (``pose_megatron.model.enable_pose_rope``). 0.16 passes it to ``pretrain`` in place of the
     stock provider; 0.19 builds its config container without a model config and passes it as
     ``pretrain(..., model_provider=...)``, the provider path 0.19 still supports.
  3. ``pose_datasets_provider`` builds ``PoseGPTDataset``s from ``--data-path``.
  4. ``pose_get_batch`` replaces ``get_batch``: position ids are broadcast over TP, given to every
     pipeline stage and split over CP like the tokens (stock ``get_batch`` keeps them on the
     first stage only and has the dataset's 0..L-1). It returns 0.16's six values (``...,
     position_ids, packed_seq_params``) or, given 0.19's ``keys=BATCH_KEYS``, one value per key.

Both releases keep the parsed arguments as a flat ``argparse.Namespace`` behind
``megatron.training.get_args()``; the helpers read it with ``pose_arg(args, name)``.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any, Callable, Optional, Sequence

from pose_megatron.positions import PoseSettings
from pose_megatron.rope import scaled_window
from pose_megatron.training.arguments import (POSE_FLAG_DESTS, ROPE_FLAG_DESTS,
                                              rope_scaling_from_flags)

_MISSING = object()


def add_pose_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Megatron-LM ``extra_args_provider``: the PoSE and RoPE flags of ``pose_megatron.train``.

    One definition (``pose_megatron.training.arguments.add_pose_arguments``): flags Megatron-LM
    already defines (``--rope-scaling-factor`` for LLaMA 3.x) keep Megatron-LM's definition with
    PoSE's default, so an unset flag means the same here as in ``pose_megatron.train``.
    """
    from pose_megatron.training.arguments import add_pose_arguments

    return add_pose_arguments(parser)


def pose_extra_args_provider(existing: Optional[Callable] = None) -> Callable:
    """An ``extra_args_provider`` that runs ``existing`` (if any), then ``add_pose_args``.

    Megatron-LM takes a single provider, and its own script already passes one (ModelOpt's when
    installed), so PoSE's flags are chained after it rather than put in its place.
    """
    def provider(parser):
        if existing is not None:
            parser = existing(parser) or parser
        return add_pose_args(parser)

    return provider


def pose_arg(args: Any, name: str, default: Any = _MISSING) -> Any:
    """``args.name`` (Megatron-LM's flat Namespace); a clear error where the flag was never added."""
    value = getattr(args, name, _MISSING)
    if value is not _MISSING:
        return value
    if default is _MISSING:
        raise AttributeError(f"Megatron-LM arguments have no {name!r}; was add_pose_args passed "
                             "as (or chained into) the extra_args_provider?")
    return default


def _target_len(args) -> int:
    target_len = pose_arg(args, "pose_target_len", None)
    if target_len is None:
        raise ValueError("--pose-target-len is required for PoSE training")
    return target_len


def pose_settings(args) -> PoseSettings:
    """The PoSE sampling of a Megatron-LM run: the ``--pose-*`` flags, ``--seed``, and
    ``--seq-length`` as the train window (``--pose-train-len`` may repeat it)."""
    seq = pose_arg(args, "seq_length")
    train_len = pose_arg(args, "pose_train_len", None) or seq
    _target_len(args)
    if train_len != seq:
        raise ValueError(f"--pose-train-len {train_len} must equal --seq-length {seq} (the "
                         "pipeline schedules size their buffers from --seq-length)")
    flags = {name: pose_arg(args, name) for name in POSE_FLAG_DESTS}
    flags.update(pose_train_len=train_len, seed=pose_arg(args, "seed"))
    return PoseSettings.from_flags(argparse.Namespace(**flags))


def rope_settings(args) -> dict:
    """The RoPE of a Megatron-LM run (``enable_pose_rope``'s ``rope``): its window, the
    ``--rope-*`` flags applied to it, and the range the PoSE target must fit in."""
    target_len = _target_len(args)
    seq = pose_arg(args, "seq_length")
    original = (pose_arg(args, "rope_original_max_position", None)
                or pose_arg(args, "max_position_embeddings", None) or seq)
    rope_type = pose_arg(args, "rope_scaling_type", None)
    if rope_type is None:
        # A Megatron-LM job has no model description of its own to keep a scaling from.
        if target_len > original:
            raise ValueError(f"--rope-scaling-type is required: --pose-target-len {target_len} "
                             f"exceeds the model's window {original} (--max-position-embeddings)")
        rope_type = "none"
    flags = argparse.Namespace(**{dest: pose_arg(args, dest, None) for dest in ROPE_FLAG_DESTS})
    flags.rope_scaling_type = rope_type
    scaling = rope_scaling_from_flags(flags, original=int(original), target_len=target_len)
    max_position = max(scaled_window(scaling, int(original)), original)
    if target_len > max_position:
        raise ValueError(f"--pose-target-len {target_len} exceeds the RoPE range {max_position}; "
                         "raise --rope-scaling-factor")
    return {"rope_theta": float(pose_arg(args, "rotary_base", 10000)), "rope_scaling": scaling,
            "max_position": max_position, "max_position_embeddings": original}


def _megatron_args():
    from megatron.training import get_args  # Megatron-LM, not in the megatron-core wheel

    return get_args()


def pose_model_provider(model_provider: Callable, get_args: Optional[Callable] = None) -> Callable:
    """Wrap a Megatron-LM model provider: its models get PoSE's position-id-aware RoPE.

    Works for any provider signature (0.16: ``(pre_process, post_process, vp_stage)``; later
    versions add arguments): everything is passed through.
    """
    from pose_megatron.model import enable_pose_rope
    from pose_megatron.rotary import softmax_scale_for

    get_args = get_args or _megatron_args

    @functools.wraps(model_provider)
    def provider(*args, **kwargs):
        mlm_args = get_args()
        rope = rope_settings(mlm_args)
        # YaRN's / LongRoPE's attention scaling is the config's softmax_scale, which Megatron-LM
        # copies from args into the TransformerConfig the provider builds (0.16 and 0.19).
        if getattr(mlm_args, "softmax_scale", None) is None:
            kv_channels = getattr(mlm_args, "kv_channels", None) or (
                mlm_args.hidden_size // mlm_args.num_attention_heads)
            mlm_args.softmax_scale = softmax_scale_for(rope, kv_channels)
        model = model_provider(*args, **kwargs)
        return enable_pose_rope(model, rope)

    return provider


def dataset_config(args, tokenizer):
    """PoseDatasetConfig from Megatron-LM arguments (blend, split, seed, cache path, PoSE flags)."""
    from megatron.core.datasets.utils import get_blend_from_list

    from pose_megatron.data.pose_dataset import PoseDatasetConfig

    return PoseDatasetConfig.for_settings(
        pose_settings(args), blend=get_blend_from_list(pose_arg(args, "data_path")),
        split=pose_arg(args, "split", "100,0,0"), tokenizer=tokenizer,
        path_to_cache=pose_arg(args, "data_cache_path", None))


def pose_datasets_provider(train_val_test_num_samples, vp_stage=None, *, get_args=None,
                           get_tokenizer=None):
    """Megatron-LM ``train_valid_test_datasets_provider`` building PoseGPTDatasets."""
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder)

    from pose_megatron.data.pose_dataset import PoseGPTDataset

    if get_args is None or get_tokenizer is None:
        from megatron.training import get_args as _get_args, get_tokenizer as _get_tokenizer

        get_args, get_tokenizer = get_args or _get_args, get_tokenizer or _get_tokenizer
    args = get_args()
    from megatron.core import parallel_state as ps

    return BlendedMegatronDatasetBuilder(
        PoseGPTDataset, train_val_test_num_samples,
        lambda: ps.get_tensor_model_parallel_rank() == 0,
        dataset_config(args, get_tokenizer())).build()


pose_datasets_provider.is_distributed = True  # Megatron-LM: build on every rank that reads


def pose_get_batch(data_iterator, vp_stage=None, keys: Optional[Sequence[str]] = None,
                   device: str = "cuda"):
    """Megatron-LM ``get_batch`` for PoSE.

    Without ``keys`` it returns what 0.16's ``get_batch`` returns: (tokens, labels, loss_mask,
    attention_mask, position_ids, packed_seq_params). With ``keys`` (0.19 passes its
    ``BATCH_KEYS``) it returns one value per key, in that order. Megatron-LM's data loader yields
    collated dicts of tensors; TP rank 0 of every stage reads, the other TP ranks receive by
    broadcast, then the CP split (2*CP load-balanced chunks) is applied to every field, position
    ids included. Fields a stage does not use are None; so are the attention mask (causal, PoSE
    samples are one document each) and the packed-sequence fields (PoSE does not pack).
    """
    from pose_megatron.training.batch import get_batch

    batch = get_batch(data_iterator, device, vp_stage=vp_stage)
    if keys is not None:
        return [batch.get(key) for key in keys]
    return (batch.get("tokens"), batch.get("labels"), batch.get("loss_mask"), None,
            batch["position_ids"], None)
