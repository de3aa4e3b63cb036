"""What a training run checks and says before its first step.

* ``filter_startup_warnings`` (defined in ``pose_megatron.startup_warnings``): the start-up
  warnings a user cannot act on, silenced; the implementation path they would announce is named
  once, in the settings line instead.
* ``check_before_start``: refusals that need only the flags and the checkpoint's
  pose_model.json, made before the process group and Megatron-Core start (seconds, not the
  ~20 s to a rank's traceback): a PoSE target inside the model's window with a RoPE scaling that
  would then shrink positions, and TP/PP sizes that do not divide the model.
* ``settings_line``: the run's effective settings, printed by rank 0 at start.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Optional

from pose_megatron import startup_warnings
from pose_megatron.config import ModelArgs
from pose_megatron.errors import UsageError

# One table and filter for every tool (re-exported: the training entry applies it first).
UNACTIONABLE_WARNINGS = startup_warnings.UNACTIONABLE_WARNINGS
filter_startup_warnings = startup_warnings.filter_startup_warnings


# ----------------------------------------------------------------------------- checks


def _checkpoint_model_args(load: Optional[str]) -> Optional[ModelArgs]:
    """The ModelArgs a --load checkpoint was saved with, or None when it cannot be read here
    (the full loader then reports what is wrong with it)."""
    if not load:
        return None
    from pose_megatron.convert import megatron_io

    try:
        return megatron_io.model_args_of(load, megatron_io.resolve_iteration_dir(load))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _original_window(args, base: ModelArgs) -> int:
    # the same precedence as arguments.rope_scaling_from_args
    return int(args.rope_original_max_position
               or (base.rope_scaling or {}).get("original_max_position_embeddings")
               or base.max_position_embeddings)


def check_target_window(args, base: ModelArgs, where: str) -> None:
    """Refuse a RoPE scaling whose derived factor would be below 1 (target inside the window)."""
    rope_type = getattr(args, "rope_scaling_type", None)
    if rope_type in (None, "none") or getattr(args, "rope_scaling_factor", None) is not None:
        return
    original = _original_window(args, base)
    target = args.pose_target_len
    if target < original:
        raise UsageError(
            f"--pose-target-len {target} is inside the original window {original} of "
            f"{where}, so --rope-scaling-type {rope_type} would scale by {target}/{original} "
            f"< 1: pass --rope-scaling-type none to train PoSE within the window, or "
            f"--rope-original-max-position N (N < {target}) to extend from a smaller window "
            f"(the factor becomes {target}/N)")


def check_parallel_sizes(args, model_args: ModelArgs) -> None:
    from pose_megatron.convert.weights import check_parallel

    try:
        check_parallel(model_args, args.tensor_model_parallel_size,
                       args.pipeline_model_parallel_size)
    except ValueError as err:
        # check_parallel speaks the converter's flags; name this command's
        text = str(err).replace("--tp ", "--tensor-model-parallel-size ", 1) \
                       .replace("--pp ", "--pipeline-model-parallel-size ", 1)
        raise UsageError(f"{text} of the model; choose a size that divides them "
                         "(with GQA the KV heads bound the TP size)") from None


def check_before_start(args) -> None:
    """Raise SystemExit("error: ...") for what the flags alone show cannot run."""
    from pose_megatron.training.arguments import model_args_from

    if getattr(args, "model_class", "gpt") == "hybrid":
        from pose_megatron import megatron_compat

        try:
            megatron_compat.require_hybrid("--model-class hybrid")
        except RuntimeError as err:
            raise UsageError(f"{err}") from None

    loaded = _checkpoint_model_args(getattr(args, "load", None))
    if args.load and loaded is None:
        return  # an unreadable --load: the loader's own message is the right one
    if loaded is not None:
        check_target_window(args, loaded, f"--load {args.load}")
    elif getattr(args, "model_config", None):
        path = args.model_config
        try:
            base = ModelArgs.load(path if os.path.isdir(path) else os.path.dirname(path) or ".")
        except (OSError, ValueError, KeyError, TypeError):
            return
        check_target_window(args, base, f"--model-config {path}")
    else:  # a model from the size flags: its window is --max-position-embeddings
        window = args.max_position_embeddings or args.pose_train_len
        check_target_window(args, SimpleNamespace(rope_scaling=None, max_position_embeddings=window),
                            "the model (--max-position-embeddings)")
    try:
        model_args = model_args_from(args, loaded)
    except ValueError as err:
        raise UsageError(f"{err}") from None
    check_parallel_sizes(args, model_args)


# ----------------------------------------------------------------------------- summary

_SPECS = {"local": "Megatron-Core local spec (torch layers; Transformer Engine not used)",
          "te": "Transformer Engine spec"}


def _rope_text(model_args: ModelArgs) -> str:
    scaling = model_args.rope_scaling
    if not scaling:
        return f"RoPE plain (theta {model_args.rope_theta:g}, window {model_args.max_position_embeddings})"
    original = scaling.get("original_max_position_embeddings", model_args.max_position_embeddings)
    factor = scaling.get("factor")
    factor_text = f" x{factor:g}" if factor is not None else ""
    return (f"RoPE {scaling['rope_type']}{factor_text} from original window {original} "
            f"(theta {model_args.rope_theta:g}, positions below {model_args.max_position})")


def _model_text(args, model_args: ModelArgs) -> str:
    if getattr(args, "model_class", "gpt") == "hybrid":
        return f"HybridModel ('*-' x {model_args.num_layers})"
    return "GPTModel"


def settings_line(args, model_args: ModelArgs, *, spec: str, device: str, dp: int) -> str:
    warmup = args.lr_warmup_iters
    steps = "step" if warmup == 1 else "steps"
    # Megatron-LM steps its scheduler after the optimizer, from num_steps 0, so the first step
    # runs at --lr-warmup-init (0 here); said here so that lr 0 on step 1 is no surprise
    warmup_text = (f"warm-up {warmup} {steps} (step k at lr*(k-1)/{warmup}, so step 1 at lr 0: "
                   "Megatron-LM's convention)" if warmup else "no warm-up")
    scheme = args.pose_scheme
    if scheme in ("reference", "uniform"):
        scheme += f" ({args.pose_num_chunks} chunks, content offset {args.pose_content_offset})"
    return (f"settings: PoSE scheme {scheme}, train window {args.pose_train_len}, target "
            f"{args.pose_target_len}; {_rope_text(model_args)}; TP {args.tensor_model_parallel_size} "
            f"PP {args.pipeline_model_parallel_size} CP {args.context_parallel_size} DP {dp}; "
            f"{'bf16' if getattr(args, 'bf16', False) else 'fp32'} on {device}; "
            f"{_model_text(args, model_args)}, layers: {_SPECS.get(spec, spec)}; lr {args.lr:g} ({args.lr_decay_style} to "
            f"{args.min_lr:g}), {warmup_text}")


def print_settings(trainer, spec: str) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if dist.get_rank() != 0:
        return
    line = settings_line(trainer.args, trainer.model_args, spec=spec, device=trainer.device,
                         dp=ps.get_data_parallel_world_size())
    print(line, flush=True)
