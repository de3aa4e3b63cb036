"""The training loop on Megatron-Core: model chunk, DDP, optimizer, LR schedule, pipeline schedule.

Loss convention (Megatron-LM's current one): each micro-batch returns the *sum* of its token
losses and its token count; Megatron-Core divides the gradients by the token count of the whole
global batch (``calculate_per_token_loss``), so the result does not depend on how the global
batch is cut into micro-batches, data-parallel ranks or context-parallel ranks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from pose_megatron.config import ModelArgs
from pose_megatron import publish
from pose_megatron.checkpoint import store
from pose_megatron.checkpoint import resumable
from pose_megatron.training import logging_utils, validation
from pose_megatron.training.batch import get_batch
from pose_megatron.data.synthetic import SyntheticPoseDataset
from pose_megatron.training.data import batch_iterator, build_megatron_dataset
from pose_megatron.training.validation import RunPlan, flag_set


@dataclasses.dataclass
class Trainer:
    args: object
    plan: RunPlan
    model: torch.nn.Module  # DDP-wrapped chunk
    optimizer: object
    scheduler: object
    dataset: object
    iteration: int = 0
    consumed_train_samples: int = 0
    history: list = dataclasses.field(default_factory=list)
    save_lock: object = None  # held for the whole run: one writer per --save
    started: float = dataclasses.field(default_factory=time.monotonic)

    # what the plan fixed, under the names the loop reads
    @property
    def device(self) -> str:
        return self.plan.device

    @property
    def model_args(self) -> ModelArgs:
        return self.plan.model_args

    @property
    def num_microbatches(self) -> int:
        return self.plan.num_microbatches


def build_dataset(args, plan: RunPlan, num_samples: int):
    if args.mock_data:
        return SyntheticPoseDataset(max(num_samples, 1), plan.model_args.vocab_size, plan.pose)
    return build_megatron_dataset(args, plan.pose, plan.model_args.vocab_size, num_samples)


def optimizer_step(optimizer, clip_grad: float, device: str):
    """One optimizer step; returns (success, grad_norm).

    On GPU: Megatron-Core's own ``optimizer.step()``. On CPU its clip asserts
    ``torch.cuda.FloatTensor`` grads, so we run the same steps it runs (prepare grads, the global
    norm over the model-parallel group with TP duplicates counted once, scale, step) and do the
    in-place scaling with ``torch._foreach_mul_`` instead of its CUDA-typed clip.
    """
    if device != "cpu":
        success, grad_norm, _ = optimizer.step()
        return success, grad_norm
    if optimizer.prepare_grads():
        return False, None
    grad_norm = optimizer.get_grad_norm()
    if clip_grad > 0 and grad_norm is not None:
        coeff = clip_grad / (grad_norm + 1.0e-6)
        if coeff < 1.0:
            grads = [p.grad for p in optimizer.get_parameters() if p.grad is not None]
            torch._foreach_mul_(grads, coeff)
    return optimizer.step_with_ready_grads(), grad_norm


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), num_tokens.detach().float()])
    return loss_sum, num_tokens, {"lm loss": report}


def make_forward_step(device: str):
    def forward_step(data_iterator, model):
        batch = get_batch(data_iterator, device)
        # position_ids go to every stage: PoSE's RoPE runs in every layer.
        output = model(batch.get("tokens"), batch["position_ids"], None,
                       labels=batch.get("labels"))
        return output, functools.partial(_loss_func, batch.get("loss_mask"))

    return forward_step


def describe_resume(args, saved, state: dict, scheduler, model_args: ModelArgs) -> str:
    """One line saying what a resumed run keeps from the checkpoint and what it replaces."""
    sched = scheduler.state_dict()
    overridden = flag_set(args, "override_opt_param_scheduler")
    schedule = (f"LR schedule {'from the flags (--override-opt-param-scheduler)' if overridden else 'of the checkpoint'}: "
                f"lr {sched['max_lr']} -> {sched['min_lr']}, warm-up {sched['lr_warmup_steps']}, "
                f"{sched['lr_decay_style']} decay over {sched['lr_decay_steps']}, "
                f"at step {sched['num_steps']}")
    optim = ("optimizer state" if state["optimizer"]
             else "a FRESH optimizer (--no-load-optim; the checkpoint's moments are not used)")
    rope = model_args.rope_scaling or "none"
    rope_note = " (--override-rope-scaling)" if model_args != saved.model_args else ""
    return (f"resuming iteration {state['iteration']} of {args.train_iters}: keeping weights, "
            f"{optim}, {schedule}, RNG state, data position ({state['consumed_train_samples']} "
            f"samples consumed); RoPE scaling {rope}{rope_note}")


def setup(args) -> Trainer:
    """Validate (every refusal, before any process group), build, restore, then the data."""
    from pose_megatron.training import startup

    started = time.monotonic()
    startup.filter_startup_warnings()  # before Megatron-Core's first import emits them
    plan = validation.validate(args)
    trainer = build(args, plan, started)
    if args.load:
        restore(trainer)
    trainer.dataset = build_dataset(args, plan, args.train_iters * plan.global_batch_size)
    startup.print_settings(trainer)
    return trainer


def build(args, plan: RunPlan, started: float) -> Trainer:
    """Process groups, the model chunk in DDP, optimizer and LR schedule, as ``plan`` says."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import (DistributedDataParallel,
                                           DistributedDataParallelConfig, finalize_model_grads)
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from pose_megatron import parallel
    from pose_megatron.model import build_model

    device = plan.device
    parallel.initialize(args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                        args.context_parallel_size, device=device, seed=args.seed)
    save_lock = resumable.lock_save_dir(args.save) if args.save else None
    args.global_batch_size = plan.global_batch_size

    params_dtype = torch.bfloat16 if args.bf16 else torch.float32
    overrides = dict(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size,
        sequence_parallel=args.sequence_parallel, calculate_per_token_loss=True,
        # On CPU: one full-size init then split, so any TP size starts from the same weights.
        use_cpu_initialization=device == "cpu",
    )
    if args.recompute_activations:
        overrides.update(recompute_granularity="full", recompute_method="uniform",
                         recompute_num_layers=1)
    chunk = build_model(
        plan.model_args, pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(), spec=plan.spec,
        params_dtype=params_dtype, model_class=args.model_class, **overrides)
    chunk.to(device)
    config = chunk.config
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False,
        use_distributed_optimizer=args.use_distributed_optimizer)
    model = DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk)

    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam", lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
            adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
            # On CPU clipping is done in optimizer_step (Megatron's clip asserts CUDA tensors).
            clip_grad=args.clip_grad if device != "cpu" else 0.0,
            bf16=args.bf16, params_dtype=params_dtype,
            use_distributed_optimizer=args.use_distributed_optimizer),
        [model])
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=args.lr, min_lr=args.min_lr,
        lr_warmup_steps=args.lr_warmup_iters, lr_decay_steps=args.lr_decay_iters,
        lr_decay_style=args.lr_decay_style, start_wd=args.weight_decay,
        end_wd=args.weight_decay, wd_incr_steps=args.train_iters, wd_incr_style="constant",
        wsd_decay_steps=max(1, args.lr_decay_iters // 10), lr_wsd_decay_style="linear",
        # validation.check_resume_settings has refused differences neither flag allows
        use_checkpoint_opt_param_scheduler=not flag_set(args, "override_opt_param_scheduler"),
        override_opt_param_scheduler=flag_set(args, "override_opt_param_scheduler"))

    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = model.no_sync
    if args.bf16:
        config.grad_scale_func = optimizer.scale_loss
    return Trainer(started=started, args=args, plan=plan, model=model, optimizer=optimizer,
                   scheduler=scheduler, dataset=None, save_lock=save_lock)


def restore(trainer: Trainer) -> None:
    """Weights (and, resuming, optimizer, schedule, RNG and data position) from ``--load``."""
    args, plan = trainer.args, trainer.plan
    state = resumable.load_checkpoint(
        args.load, trainer.model, trainer.optimizer, trainer.scheduler, finetune=args.finetune,
        load_optim=not flag_set(args, "no_load_optim"), saved=plan.saved)
    trainer.iteration = state["iteration"]
    trainer.consumed_train_samples = state["consumed_train_samples"]
    if dist.get_rank() == 0:
        what = "model of release checkpoint" if state["release"] else \
            f"iteration {state['iteration']}"
        print(f"loaded {what} from {args.load}", flush=True)
        if plan.resuming:
            print(describe_resume(args, plan.saved, state, trainer.scheduler, plan.model_args),
                  flush=True)


def _data_iterator(trainer: Trainer) -> Optional[Iterator]:
    from megatron.core import parallel_state as ps

    if ps.get_tensor_model_parallel_rank() != 0:
        return None
    return batch_iterator(trainer.dataset, trainer.consumed_train_samples,
                          trainer.args.micro_batch_size, ps.get_data_parallel_world_size(),
                          ps.get_data_parallel_rank())


def _reduce_losses(losses_reduced: list, device: str) -> tuple:
    """(sum of token losses, token count) of the global batch, known on every rank."""
    from megatron.core import parallel_state as ps

    total = torch.zeros(2, dtype=torch.float64, device=device)
    for item in losses_reduced:
        total += item["lm loss"].to(device=device, dtype=torch.float64)
    if ps.is_pipeline_last_stage():
        dist.all_reduce(total, group=ps.get_data_parallel_group(with_context_parallel=True))
    else:
        total.zero_()
    # Only the last stage has the loss; the sum over the pipeline group hands it to all stages.
    dist.all_reduce(total, group=ps.get_pipeline_model_parallel_group())
    return float(total[0]), float(total[1])


def train_step(trainer: Trainer, data_iterator, forward_backward_func, forward_step) -> dict:
    args = trainer.args
    trainer.model.zero_grad_buffer()
    trainer.optimizer.zero_grad()
    losses = forward_backward_func(
        forward_step_func=forward_step, data_iterator=data_iterator, model=[trainer.model],
        num_microbatches=trainer.num_microbatches, seq_length=args.pose_train_len,
        micro_batch_size=args.micro_batch_size, decoder_seq_length=args.pose_train_len,
        forward_only=False)
    success, grad_norm = optimizer_step(trainer.optimizer, args.clip_grad, trainer.device)
    lr = trainer.optimizer.param_groups[0]["lr"]
    if success:
        trainer.scheduler.step(increment=1)
    loss_sum, tokens = _reduce_losses(losses, trainer.device)
    return {"loss": loss_sum / max(tokens, 1.0), "tokens": tokens, "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "skipped": not success}


def save(trainer: Trainer) -> None:
    args = trainer.args
    plain = {k: v for k, v in vars(args).items()
             if isinstance(v, (int, float, str, bool, type(None), list))}
    resumable.save_checkpoint(
        args.save, trainer.iteration, trainer.model, trainer.optimizer, trainer.scheduler,
        consumed_train_samples=trainer.consumed_train_samples, model_args=trainer.model_args,
        args=plain, save_optim=not args.no_save_optim)
    if dist.get_rank() == 0:
        # The converter's tokenizer travels with the weights, so back-conversion finds it.
        src = os.path.join(args.load, store.TOKENIZER_SUBDIR) if args.load else None
        dst = os.path.join(args.save, store.TOKENIZER_SUBDIR)
        if src and os.path.isdir(src) and not os.path.exists(dst):
            publish.copy_tree(src, dst)
        print(f"saved iteration {trainer.iteration} to {args.save}", flush=True)


def _out_of_time(trainer: Trainer) -> bool:
    """--exit-duration-in-mins, decided on rank 0's clock so that every rank stops together."""
    limit = trainer.args.exit_duration_in_mins
    if limit is None:
        return False
    late = float(time.monotonic() - trainer.started >= 60 * limit)
    flag = torch.tensor([late], device=trainer.device)
    if dist.get_world_size() > 1:
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def train(trainer: Trainer) -> list:
    """Run to --train-iters; returns this run's per-step metrics (also kept in trainer.history)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    args = trainer.args
    device = trainer.device
    forward_backward_func = get_forward_backward_func()
    forward_step = make_forward_step(device)
    data_iterator = _data_iterator(trainer)
    rank0 = dist.get_rank() == 0
    tb = logging_utils.TensorBoard(args.tensorboard_dir if rank0 else None)
    peak = logging_utils.peak_tflops(args.peak_tflops)
    flops_token = logging_utils.flops_per_token(trainer.model_args, args.pose_train_len)
    world = dist.get_world_size()
    bar = None
    if args.progress and rank0:
        from tqdm import tqdm

        bar = tqdm(total=args.train_iters, initial=trainer.iteration, desc="train", unit="step")
    say = bar.write if bar is not None else functools.partial(print, flush=True)

    window_time, window_tokens, window_steps = 0.0, 0.0, 0
    while trainer.iteration < args.train_iters:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        metrics = train_step(trainer, data_iterator, forward_backward_func, forward_step)
        if device == "cuda":
            torch.cuda.synchronize()
        step_time = time.perf_counter() - start
        trainer.iteration += 1
        trainer.consumed_train_samples += args.global_batch_size
        metrics.update(iteration=trainer.iteration, step_time_s=step_time)
        trainer.history.append(metrics)
        if rank0 and args.log_json:
            with open(args.log_json, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        window_time += step_time
        window_tokens += metrics["tokens"]
        window_steps += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if trainer.iteration % args.log_interval == 0 or trainer.iteration == args.train_iters:
            tokens_per_s = window_tokens / max(window_time, 1e-9)
            line = dict(metrics, step_time_s=window_time / window_steps,
                        tokens_per_s=tokens_per_s,
                        memory_gib=logging_utils.peak_memory_gib(device),
                        mfu=(tokens_per_s * flops_token / (peak * 1e12 * world)) if peak else None)
            if rank0:
                text = logging_utils.format_line(trainer.iteration, args.train_iters, line)
                say(text)
                tb.log(trainer.iteration, {k: v for k, v in line.items() if v is not None
                                           and not isinstance(v, bool)})
            window_time, window_tokens, window_steps = 0.0, 0.0, 0
        if args.save and args.save_interval and trainer.iteration % args.save_interval == 0:
            save(trainer)
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"loss is {metrics['loss']} at iteration {trainer.iteration}")
        if _out_of_time(trainer) and trainer.iteration < args.train_iters:
            if rank0:
                minutes = (time.monotonic() - trainer.started) / 60
                say(f"exiting after iteration {trainer.iteration} of {args.train_iters}: "
                    f"{minutes:.1f} min passed (--exit-duration-in-mins "
                    f"{args.exit_duration_in_mins:g})")
            break
    ran = bool(trainer.history)
    if args.save and ran and (not args.save_interval or trainer.iteration % args.save_interval):
        save(trainer)
    if bar is not None:
        bar.close()
    tb.close()
    return trainer.history
