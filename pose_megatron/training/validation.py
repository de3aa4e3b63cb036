"""The one validation stage of a training run: every refusal, before any process group exists.

``validate(args)`` runs after the flags are parsed (``arguments.parse_args`` checks each flag on
its own) and before ``parallel.initialize``: what the flags, the device, the world size and the
``--load`` checkpoint's metadata show cannot run is refused here, in seconds, with one
``error:`` line naming the flag (``UsageError``), instead of as a rank's traceback after
Megatron-Core started. It returns the ``RunPlan`` the loop builds from, so nothing is derived
twice.
"""

from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace
from typing import Optional

from pose_megatron.config import ModelArgs
from pose_megatron.errors import UsageError
from pose_megatron.positions import PoseSettings


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a validated run will do; built once by ``validate``."""

    device: str
    spec: str  # "local" (torch layers) or "te" (Transformer Engine)
    pose: PoseSettings
    model_args: ModelArgs
    saved: object  # resumable.SavedCheckpoint of --load, or None
    resuming: bool
    data_parallel_size: int
    micro_batch_size: int
    global_batch_size: int

    @property
    def num_microbatches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.data_parallel_size)


def flag_set(args, name: str) -> bool:
    """Whether the switch ``name`` is on (absent from a namespace counts as off)."""
    return bool(getattr(args, name, False))


# ----------------------------------------------------------------------------- device


def check_device_support(args, device: str) -> None:
    """Refuse, with the flag to change, what cannot run on this device."""
    if device == "cpu":
        unsupported = [
            (args.use_distributed_optimizer, "--use-distributed-optimizer",
             "Megatron-Core's distributed optimizer asserts CUDA tensors"),
            (args.sequence_parallel, "--sequence-parallel",
             "sequence parallelism needs Transformer Engine's LayerNorm"),
            (args.context_parallel_size > 1, "--context-parallel-size > 1",
             "context-parallel attention is Transformer Engine's"),
            (args.bf16, "--bf16", "bf16 training is the GPU path; the CPU path trains in fp32"),
            (args.transformer_impl == "transformer_engine", "--transformer-impl transformer_engine",
             "Transformer Engine needs CUDA"),
        ]
        for bad, flag, why in unsupported:
            if bad:
                raise UsageError(f"{flag} cannot run on the CPU ({why}); drop the flag or "
                                 "run on a GPU")
    elif args.context_parallel_size > 1 or args.sequence_parallel:
        from pose_megatron.model import have_transformer_engine

        if not have_transformer_engine():
            raise UsageError("--context-parallel-size > 1 and --sequence-parallel need "
                             "Transformer Engine (import transformer_engine failed)")


def layer_spec(args, device: str) -> str:
    from pose_megatron.model import have_transformer_engine

    if args.transformer_impl == "local":
        return "local"
    if args.transformer_impl == "transformer_engine":
        return "te"
    return "te" if device == "cuda" and have_transformer_engine() else "local"


# ----------------------------------------------------------------------------- model and RoPE


def _original_window(args, base) -> int:
    # the same precedence as arguments.rope_scaling_from_args
    from pose_megatron.rope import original_window

    return int(args.rope_original_max_position
               or original_window(base.rope_scaling, base.max_position_embeddings))


def check_target_window(args, base, where: str) -> None:
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


def _base_model(args, saved_args) -> tuple:
    """(the model description the run starts from, where it comes from) for check_target_window."""
    if saved_args is not None:
        return saved_args, f"--load {args.load}"
    if getattr(args, "model_config", None):
        path = args.model_config
        try:
            return ModelArgs.load(path if os.path.isdir(path) else os.path.dirname(path) or "."), \
                f"--model-config {path}"
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UsageError(f"--model-config {path}: {err}") from None
    # a model from the size flags: its window is --max-position-embeddings
    window = args.max_position_embeddings or args.pose_train_len
    return SimpleNamespace(rope_scaling=None, max_position_embeddings=window), \
        "the model (--max-position-embeddings)"


# ----------------------------------------------------------------------------- resume

# LR-schedule entries of Megatron-Core's OptimizerParamScheduler state -> the flag that sets them
_SCHEDULE_FLAGS = (("max_lr", "lr", "--lr"), ("min_lr", "min_lr", "--min-lr"),
                   ("lr_warmup_steps", "lr_warmup_iters", "--lr-warmup-iters"),
                   ("lr_decay_steps", "lr_decay_iters", "--lr-decay-iters (default --train-iters)"),
                   ("lr_decay_style", "lr_decay_style", "--lr-decay-style"))


def _schedule_differences(args, saved_schedule: dict) -> list:
    out = []
    for key, attr, flag in _SCHEDULE_FLAGS:
        if key in saved_schedule and saved_schedule[key] != getattr(args, attr):
            out.append(f"{flag} {getattr(args, attr)} (checkpoint: {saved_schedule[key]})")
    return out


def check_resume_settings(args, saved, model_args: ModelArgs) -> None:
    """Refuse a resume whose flags would silently differ from what the checkpoint continues.

    Resuming continues the checkpoint's LR schedule, optimizer moments and RoPE. Flags that ask
    for something else are refused unless an explicit flag says which side wins (Megatron-LM's
    --override-opt-param-scheduler / --use-checkpoint-opt-param-scheduler, --no-load-optim).
    """
    where = f"--load {args.load} (iteration {saved.tracker})"
    schedule = saved.common.get("opt_param_scheduler") or {}
    changed = _schedule_differences(args, schedule)
    if changed and not (flag_set(args, "override_opt_param_scheduler")
                        or flag_set(args, "use_checkpoint_opt_param_scheduler")):
        raise UsageError(
            f"{where}: the LR schedule flags differ from the checkpoint's: "
            f"{'; '.join(changed)}; pass --use-checkpoint-opt-param-scheduler to continue the "
            "checkpoint's schedule or --override-opt-param-scheduler to apply the flags")
    if not saved.has_optimizer and not flag_set(args, "no_load_optim"):
        raise UsageError(
            f"{where} was saved without optimizer state (--no-save-optim); pass "
            "--no-load-optim to resume with a fresh optimizer, or --finetune to start a new run "
            "from its weights")
    if model_args != saved.model_args and not flag_set(args, "override_rope_scaling"):
        old, new = saved.model_args.to_dict(), model_args.to_dict()
        diff = "; ".join(f"{k} {new[k]} (checkpoint: {old[k]})" for k in old if old[k] != new[k])
        raise UsageError(
            f"{where}: --rope-scaling-* flags change the model's RoPE: {diff}; resuming "
            "continues the checkpoint's RoPE: drop those flags, or pass --override-rope-scaling "
            "to continue training with the new RoPE (later iterations are labelled with it), or "
            "--finetune to start a new run")


# ----------------------------------------------------------------------------- batch


def _data_parallel_size(args, world_size: int) -> int:
    tp, pp, cp = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                  args.context_parallel_size)
    if world_size % (tp * pp * cp):
        raise UsageError(
            f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} * "
            f"--pipeline-model-parallel-size {pp} * --context-parallel-size {cp} = {tp * pp * cp}")
    return world_size // (tp * pp * cp)


def _global_batch_size(args, dp: int) -> int:
    gbs = args.global_batch_size or args.micro_batch_size * dp
    if gbs % (args.micro_batch_size * dp):
        raise UsageError(f"--global-batch-size {gbs} is not a multiple of "
                         f"--micro-batch-size {args.micro_batch_size} * data-parallel size {dp}")
    return gbs


# ----------------------------------------------------------------------------- the stage


def _saved_model_args(load: str) -> ModelArgs:
    """The model description of ``--load`` (its ``pose_model.json`` or Megatron-LM's args),
    read without opening the checkpoint itself."""
    from pose_megatron.checkpoint import resumable, store

    return store.model_args_of(load, resumable.find_iteration(load)[1])


def check_flags(args) -> tuple:
    """The refusals that need only the flags and the model's description (not the checkpoint's
    tensors or state): (the PoSE settings, the run's ModelArgs)."""
    from pose_megatron.training.arguments import model_args_from

    try:
        pose = PoseSettings.from_flags(args)
    except (TypeError, ValueError) as err:
        raise UsageError(f"PoSE flags: {err}") from None
    if getattr(args, "model_class", "gpt") == "hybrid":
        from pose_megatron import megatron_compat

        try:
            megatron_compat.require_hybrid("--model-class hybrid")
        except RuntimeError as err:
            raise UsageError(str(err)) from None
    saved_args = _saved_model_args(args.load) if args.load else None
    check_target_window(args, *_base_model(args, saved_args))
    try:
        model_args = model_args_from(args, saved_args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    check_parallel_sizes(args, model_args)
    if pose.target_len > model_args.max_position:
        raise UsageError(
            f"--pose-target-len {pose.target_len} exceeds the model's RoPE range "
            f"{model_args.max_position} (original window x rope factor); set "
            "--rope-scaling-type (linear, yarn, ...) and/or --rope-scaling-factor")
    return pose, model_args


def validate(args, world_size: Optional[int] = None) -> RunPlan:
    """Every refusal of a training run, in the order a user would fix them; the run's plan.

    ``world_size`` defaults to torchrun's ``WORLD_SIZE`` (1 without torchrun).
    """
    from pose_megatron import parallel
    from pose_megatron.checkpoint import resumable

    device = args.device or parallel.default_device()
    check_device_support(args, device)
    pose, model_args = check_flags(args)
    saved = resumable.inspect_checkpoint(args.load) if args.load else None
    hybrid = getattr(args, "model_class", "gpt") == "hybrid"
    if saved is not None and saved.hybrid_pattern and not hybrid:
        raise UsageError(
            f"--load {args.load} was saved by a HybridModel run (layers {saved.hybrid_pattern}); "
            "pass --model-class hybrid (megatron-core >= 0.19) to load it")
    resuming = saved is not None and not saved.release and not args.finetune
    if resuming:
        check_resume_settings(args, saved, model_args)

    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    dp = _data_parallel_size(args, world_size)
    gbs = _global_batch_size(args, dp)
    cp = args.context_parallel_size
    if cp > 1 and pose.train_len % (2 * cp):
        raise UsageError(f"--pose-train-len {pose.train_len} must be a multiple of "
                         f"2 * --context-parallel-size = {2 * cp}")
    return RunPlan(device=device, spec=layer_spec(args, device), pose=pose,
                   model_args=model_args, saved=saved, resuming=resuming,
                   data_parallel_size=dp, global_batch_size=gbs,
                   micro_batch_size=args.micro_batch_size)
