#!/usr/bin/env python
"""One whole training step (forward, backward, optimizer) with PoSE ids through
``PoseRotaryEmbedding`` vs the same step with stock Megatron-Core RoPE, interleaved in one run.

One model, optimizer and batch, built by pose_megatron's own training setup (the flags
bench/step_time.py uses: a small LLaMA on mock PoSE data). Both variants run the same
``train_step`` on the same micro-batches: "pose" with the model as built (``enable_pose_rope``:
per-sample ``[S,B,1,D]`` tables from the batch's skip-wise position ids), "stock" with
Megatron-Core's ``RotaryEmbedding`` swapped back in and the binding hooks removed (contiguous 0..S-1, an
lru-cached ``[S,1,1,D]`` table). Timed as in bench/rope.py: process CPU time on CPU (a shared
machine's load barely moves it), wall time around synchronisation on CUDA; rotating order, best of
--inner per repeat, the median of per-repeat paired ratios printed; target <= 1.02.
--profile adds a torch.profiler table of each variant (where the time goes).

    python bench/step.py                       # CPU defaults
    python bench/step.py --device cuda --layers 4 --hidden 1024 --heads 16 --seq 2048
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import sys
import time

from step_time import training_argv


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, default=512, help="training window (PoSE train len)")
    p.add_argument("--target", type=int, default=None,
                   help="PoSE target length (default 8 x --seq)")
    p.add_argument("--layers", type=int, default=2, help="transformer layers (default 2)")
    p.add_argument("--hidden", type=int, default=256, help="hidden size (default 256)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--vocab", type=int, default=1024, help="vocabulary size (default 1024)")
    p.add_argument("--micro-batch", type=int, default=2, help="micro-batch size (default 2)")
    p.add_argument("--train-flags", default="",
                   help="more pose_megatron.train flags, e.g. '--bf16 --use-distributed-optimizer'")
    p.add_argument("--repeats", type=int, default=9, help="timed repeats per variant (default 9)")
    p.add_argument("--inner", type=int, default=2,
                   help="steps per variant per repeat, the best counts (default 2)")
    p.add_argument("--profile", action="store_true",
                   help="also print torch.profiler's top operators of one step of each variant")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    a = p.parse_args(argv)
    for name in ("seq", "layers", "hidden", "heads", "vocab", "micro_batch", "repeats", "inner"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    a.target = a.target or 8 * a.seq
    a.warmup, a.steps = 0, 1  # training_argv's --train-iters; the steps here are driven directly
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from pose_megatron.model import enable_pose_rope, unwrap_model
    from pose_megatron.training.arguments import parse_args as train_args
    from pose_megatron.training.loop import _data_iterator, make_forward_step, setup, train_step

    targs = train_args(training_argv(a.seq, a.seq, a.target, a))
    with contextlib.redirect_stdout(io.StringIO()):  # the start-up settings summary
        trainer = setup(targs)
    device = trainer.device
    micro = [next(_data_iterator(trainer)) for _ in range(trainer.num_microbatches)]
    inner = unwrap_model(trainer.model)
    pose_rotary = inner.rotary_pos_emb
    stock_rotary = RotaryEmbedding(inner.config.kv_channels, 1.0,
                                   rotary_base=targs.rotary_base or 10000.0,
                                   use_cpu_initialization=device == "cpu").to(device)

    def use(variant: str) -> None:
        if variant == "stock" and inner._pose_rope_hooks:
            for hook in inner._pose_rope_hooks:
                hook.remove()
            inner._pose_rope_hooks = None
            inner.rotary_pos_emb = stock_rotary
        elif variant == "pose" and not inner._pose_rope_hooks:
            inner.rotary_pos_emb = pose_rotary
            # enable_pose_rope gives a fresh PoseRotaryEmbedding and the hooks; keep the first
            # instance (same settings) so both variants' tables stay as warm as they get.
            enable_pose_rope(inner, pose_rotary.settings)
            inner.rotary_pos_emb = pose_rotary

    forward_backward = get_forward_backward_func()
    forward_step = make_forward_step(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def one_step():
        train_step(trainer, iter(micro), forward_backward, forward_step)

    variants = ["pose", "stock"]
    for v in variants:  # warm-up: allocator, caches, first-call paths
        use(v)
        one_step()
    clock = time.perf_counter if device == "cuda" else time.process_time
    times = {v: [] for v in variants}
    from tqdm import tqdm

    for rep in tqdm(range(a.repeats), desc="repeats", file=sys.stderr):
        for v in variants[rep % 2:] + variants[:rep % 2]:
            use(v)
            best = math.inf
            for _ in range(a.inner):
                sync()
                t0 = clock()
                one_step()
                sync()
                best = min(best, clock() - t0)
            times[v].append(best)

    ids = micro[0]["position_ids"]
    print(f"device={device} clock={'wall' if device == 'cuda' else 'process CPU'} "
          f"threads={torch.get_num_threads()} layers={a.layers} hidden={a.hidden} "
          f"heads={a.heads} vocab={a.vocab} seq={a.seq} micro-batch={a.micro_batch} "
          f"target={a.target} (PoSE ids up to {int(ids.max())}) repeats={a.repeats} "
          f"{a.train_flags}".rstrip())
    paired = statistics.median(p / s for p, s in zip(times["pose"], times["stock"]))
    for v in variants:
        print(f"  {v:6s} step median {statistics.median(times[v]) * 1e3:9.2f} ms  "
              f"best {min(times[v]) * 1e3:9.2f} ms")
    print(f"whole-step ratio PoSE/stock = {paired:.3f} (paired median; best-of "
          f"{min(times['pose']) / min(times['stock']):.3f}; target <= 1.02): "
          f"{'OK' if paired <= 1.02 else 'ABOVE TARGET'}")

    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        for v in variants:
            use(v)
            with profile(activities=activities) as prof:
                one_step()
                sync()
            print(f"\n{v}: top operators by {key}")
            print(prof.key_averages().table(sort_by=key, row_limit=12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
