"""What a training run checks and says before its first step.

* ``filter_startup_warnings`` (defined in ``pose_megatron.startup_warnings``): the start-up
  warnings a user cannot act on, silenced; the implementation path they would announce is named
  once, in the settings line instead.
* the refusals before the start: ``pose_megatron.training.validation`` (one stage);
* ``settings_line``: the run's effective settings, printed by rank 0 at start.
"""

from __future__ import annotations

from pose_megatron import startup_warnings
from pose_megatron.config import ModelArgs

# One table and filter for every tool (re-exported: the training entry applies it first).
UNACTIONABLE_WARNINGS = startup_warnings.UNACTIONABLE_WARNINGS
filter_startup_warnings = startup_warnings.filter_startup_warnings


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


def print_settings(trainer) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if dist.get_rank() != 0:
        return
    line = settings_line(trainer.args, trainer.model_args, spec=trainer.plan.spec,
                         device=trainer.device,
                         dp=ps.get_data_parallel_world_size())
    print(line, flush=True)
