"""Time of the rotary step with per-sample (PoSE) position ids vs stock Megatron-Core RoPE.

The rotary step of one forward pass: the model asks its rotary module for the table once, then
every layer applies it to its queries and keys (Megatron-Core's own ``apply_rotary_pos_emb``,
unfused path). Stock: ``RotaryEmbedding(seq_len)`` (an lru-cached contiguous ``[S,1,1,D]`` table).
Ours: ``PoseRotaryEmbedding`` with bound per-sample PoSE ids, a fresh ``[S,B,1,D]`` table every
forward (float32 angles, and the float64-table variant). Same shapes, measured interleaved in one
run; the ratio printed is the median of per-repeat paired ratios; target <= 1.10 on CPU. On a GPU with Transformer Engine it also
times TE's fused kernel, which takes only ``[S,1,1,D]`` tables (micro-batch 1 gathered ids).

Defaults: LLaMA-7B's attention geometry (the PoSE paper's model: 32 heads of 128, no GQA) at
S=512, B=2, 2 layers, sized for a small CPU. The per-sample overhead is the cos/sin of a B-times
larger table per apply, so it is relatively largest with few key/value heads and small D:

    python bench/rope.py                                  # LLaMA-7B heads
    python bench/rope.py --groups 8                       # LLaMA-3-8B heads (GQA 4:1)
    python bench/rope.py --seq 2048 --batch 4 --heads 16 --groups 4 --head-dim 64   # worst case
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
from tqdm import tqdm


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, default=512, help="sequence length S (default 512)")
    p.add_argument("--batch", type=int, default=2, help="micro-batch size B (default 2)")
    p.add_argument("--heads", type=int, default=32, help="query heads H (default 32)")
    p.add_argument("--groups", type=int, default=32, help="key/value heads G (default 32)")
    p.add_argument("--head-dim", type=int, default=128, help="head dimension D (default 128)")
    p.add_argument("--layers", type=int, default=2,
                   help="layers sharing one table per forward (default 2)")
    p.add_argument("--target", type=int, default=None,
                   help="PoSE target length (largest position + 1; default 16 x --seq)")
    p.add_argument("--repeats", type=int, default=11, help="timed repeats per path (default 11)")
    p.add_argument("--inner", type=int, default=3,
                   help="runs per path per repeat, the best one counts (default 3)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    args = p.parse_args(argv)
    for name in ("seq", "batch", "heads", "groups", "head_dim", "layers", "repeats", "inner"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.heads % args.groups:
        p.error(f"--heads {args.heads} must be a multiple of --groups {args.groups}")
    args.target = args.target or 16 * args.seq
    if args.target < args.seq:
        p.error(f"--target {args.target} must be >= --seq {args.seq}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from pose_megatron import parallel

    device = parallel.initialize(1, 1, device=args.device)

    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.transformer import TransformerConfig

    from pose_megatron.positions import pose_position_ids_batch
    from pose_megatron.rotary import PoseRotaryEmbedding, RopeSettings

    S, B, H, G, D = args.seq, args.batch, args.heads, args.groups, args.head_dim
    config = TransformerConfig(num_layers=1, hidden_size=H * D, num_attention_heads=H,
                               num_query_groups=G, kv_channels=D, use_cpu_initialization=True)
    settings = dict(rope_theta=10000.0, max_position=args.target,
                    rope_scaling={"rope_type": "linear", "factor": args.target / S})
    stock = RotaryEmbedding(D, 1.0, use_cpu_initialization=True)
    ours = {p: PoseRotaryEmbedding(D, RopeSettings(**settings, rope_precision=p), config=config)
            for p in ("float32", "float64")}
    positions = torch.as_tensor(
        pose_position_ids_batch(S, args.target, list(range(B)), seed=0).position_ids).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(S, B, H, D, device=device, generator=g)
    k = torch.randn(S, B, G, D, device=device, generator=g)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step(table_fn):
        def run():
            emb = table_fn()
            for _ in range(args.layers):
                apply_rotary_pos_emb(q, emb, config)
                apply_rotary_pos_emb(k, emb, config)
        return run

    def gathered(module):
        def table():
            module.bind(positions)
            try:
                return module(S)
            finally:
                module.unbind()
        return table

    paths = {
        "stock contiguous [S,1,1,D]": step(lambda: stock(S)),
        "per-sample float32 [S,B,1,D]": step(gathered(ours["float32"])),
        "per-sample float64 tables": step(gathered(ours["float64"])),
    }
    times = {name: [] for name in paths}
    for fn in paths.values():  # warm-up: caches, allocator, the float64 table
        fn()
    sync()
    # CPU: this process's CPU time, which other jobs on a shared machine barely disturb (wall time
    # here swings by +-25% between runs); GPU: wall time around synchronisation.
    clock = time.perf_counter if device == "cuda" else time.process_time
    names = list(paths)
    for rep in tqdm(range(args.repeats), desc="repeats", file=sys.stderr):
        # Interleaved, in rotating order, best of `--inner` each: on a shared machine the load
        # then hits every path alike and one stall does not decide a repeat.
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            best = math.inf
            for _ in range(args.inner):
                sync()
                t0 = clock()
                paths[name]()
                sync()
                best = min(best, clock() - t0)
            times[name].append(best)

    stock_name = "stock contiguous [S,1,1,D]"
    print(f"device={device} clock={'wall' if device == 'cuda' else 'process CPU'} "
          f"threads={torch.get_num_threads()} S={S} B={B} H={H} G={G} D={D} "
          f"layers={args.layers} target={args.target} repeats={args.repeats}")
    ratios = {}
    for name, ts in times.items():
        # Paired ratios: each repeat's paths ran back to back, so they saw the same machine load
        # (this machine is shared); their median is the robust figure, best-of-N the floor.
        paired = statistics.median(t / s for t, s in zip(ts, times[stock_name]))
        best = min(ts) / min(times[stock_name])
        ratios[name] = paired
        print(f"  {name:30s} median {statistics.median(ts) * 1e3:9.2f} ms  best {min(ts) * 1e3:9.2f} ms"
              f"   ratio (paired median) {paired:5.3f}  (best-of) {best:5.3f}")
    ratio = ratios["per-sample float32 [S,B,1,D]"]
    print(f"ratio per-sample/stock (float32) = {ratio:.3f}  (target <= 1.10): "
          f"{'OK' if ratio <= 1.10 else 'ABOVE TARGET'}")

    if device == "cuda":
        try:
            from megatron.core.extensions.transformer_engine import fused_apply_rotary_pos_emb
        except ImportError:
            fused_apply_rotary_pos_emb = None
        if fused_apply_rotary_pos_emb is None:
            print("Transformer Engine not installed: no fused-kernel figure")
        else:
            one = positions[:1]
            q1, k1 = q[:, :1].contiguous(), k[:, :1].contiguous()
            module = ours["float32"]
            module.bind(one)
            emb_gathered = module(S)
            module.unbind()
            emb_stock = stock(S)

            def fused(emb):
                def run():
                    for _ in range(args.layers):
                        fused_apply_rotary_pos_emb(q1, emb)
                        fused_apply_rotary_pos_emb(k1, emb)
                return run

            fused_times = {"fused stock": [], "fused gathered (B=1)": []}
            for _ in range(args.repeats):
                for name, emb in (("fused stock", emb_stock), ("fused gathered (B=1)", emb_gathered)):
                    fn = fused(emb)
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    fused_times[name].append(time.perf_counter() - t0)
            fs = {n: statistics.median(t) for n, t in fused_times.items()}
            print(f"  TE fused, micro-batch 1: stock {fs['fused stock'] * 1e3:.3f} ms, gathered "
                  f"{fs['fused gathered (B=1)'] * 1e3:.3f} ms, ratio "
                  f"{fs['fused gathered (B=1)'] / fs['fused stock']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
