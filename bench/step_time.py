"""Step time and peak memory of PoSE vs full-length training (the paper's Figure 3 in miniature).

A tiny LLaMA on the CPU (one process, real Megatron-Core): PoSE trains on ``--train-len`` tokens
whose position ids reach up to each target length; full-length training runs on the target length
itself. PoSE's cost should stay flat in the target, full-length's should grow (about linearly in
the MLP, quadratically in attention). Every configuration runs in a fresh process, so its peak
memory (peak RSS on CPU, CUDA allocator peak on GPU) is its own.

    OMP_NUM_THREADS=1 .venv/bin/python bench/step_time.py
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue as queue_module
import shlex
import statistics
import sys


def _measure(queue, argv, steps_timed):
    sys.stdout = open(os.devnull, "w")  # the loop's per-step lines; the table is the output
    from pose_megatron.training import logging_utils
    from pose_megatron.training.arguments import parse_args
    from pose_megatron.training.loop import setup, train

    import torch

    args = parse_args(argv)
    try:
        trainer = setup(args)
        before = logging_utils.peak_memory_gib(trainer.device)
        history = train(trainer)
    except torch.OutOfMemoryError:
        queue.put({"oom": True})
        return
    times = [h["step_time_s"] for h in history[-steps_timed:]]
    queue.put({"step_s": statistics.median(times),
               "peak_gib": logging_utils.peak_memory_gib(trainer.device),
               "setup_gib": before, "tokens": history[-1]["tokens"]})


def training_argv(seq_len: int, train_len: int, target_len: int, a) -> list:
    """pose_megatron.train flags of a tiny LLaMA on mock data training ``seq_len`` tokens whose
    positions reach ``target_len`` (RoPE window ``train_len``, linear scaling beyond it); ``a``
    carries device, layers, hidden, heads, vocab, micro_batch, warmup, steps and train_flags
    (more flags, appended as they are)."""
    argv = ["--mock-data", "--device", a.device, "--num-layers", str(a.layers),
            "--hidden-size", str(a.hidden), "--num-attention-heads", str(a.heads),
            "--vocab-size", str(a.vocab), "--pose-train-len", str(seq_len),
            "--pose-target-len", str(target_len), "--max-position-embeddings", str(train_len),
            "--micro-batch-size", str(a.micro_batch), "--train-iters", str(a.warmup + a.steps),
            "--log-interval", "1000000"]
    if target_len > train_len:
        argv += ["--rope-scaling-type", "linear",
                 "--rope-scaling-factor", str(target_len / train_len)]
    return argv + shlex.split(getattr(a, "train_flags", "") or "")


def run_config(mode, train_len, target_len, a) -> dict:
    seq = train_len if mode == "pose" else target_len
    argv = training_argv(seq, train_len, target_len, a)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(queue, argv, a.steps))
    proc.start()
    result = None
    while result is None:
        try:
            result = queue.get(timeout=1.0)
        except queue_module.Empty:
            if not proc.is_alive():  # killed (host OOM) or crashed without a result
                result = {"oom": True, "exitcode": proc.exitcode}
    proc.join()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train-len", type=int, default=256, help="PoSE training window")
    p.add_argument("--targets", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096],
                   help="target context lengths")
    p.add_argument("--layers", type=int, default=2, help="transformer layers")
    p.add_argument("--hidden", type=int, default=128, help="hidden size")
    p.add_argument("--vocab", type=int, default=1024, help="vocabulary size")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--micro-batch", type=int, default=1, help="micro-batch size")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run")
    p.add_argument("--train-flags", default="",
                   help="more pose_megatron.train flags for every configuration, e.g. "
                   "'--bf16 --num-query-groups 4 --ffn-hidden-size 5632'")
    a = p.parse_args(argv)

    from tqdm import tqdm

    configs = [(m, t) for t in a.targets for m in ("pose", "full")]
    results, full_oom = {}, False
    for mode, target in tqdm(configs, desc="configs", file=sys.stderr):
        if mode == "full" and full_oom:  # longer still will not fit either
            results[mode, target] = {"oom": True}
            continue
        results[mode, target] = run_config(mode, a.train_len, target, a)
        full_oom = full_oom or (mode == "full" and results[mode, target].get("oom", False))

    base = {m: results[m, a.targets[0]] for m in ("pose", "full")}
    print(f"LLaMA ({a.layers} layers, hidden {a.hidden}) on {a.device}; PoSE trains "
          f"{a.train_len} tokens; full-length trains the target; median of {a.steps} steps")
    print("peak GiB: the process's peak (RSS on CPU, CUDA allocator on GPU); +act: its rise over "
          "the set-up peak (activations, logits, optimizer state); OOM: out of memory")

    def cells(r, mode):
        if r.get("oom") or base[mode].get("oom"):
            return f"{'OOM' if r.get('oom') else r['step_s'] * 1e3:>8} {'':>5} {'':>8} {'':>6}"
        return (f"{r['step_s'] * 1e3:>8.1f} {r['step_s'] / base[mode]['step_s']:>5.2f} "
                f"{r['peak_gib']:>8.3f} {r['peak_gib'] - r['setup_gib']:>6.3f}")

    print(f"{'target':>7} | {'PoSE ms':>8} {'x':>5} {'peak GiB':>8} {'+act':>6} | {'full ms':>8} "
          f"{'x':>5} {'peak GiB':>8} {'+act':>6} | full/PoSE time")
    for target in a.targets:
        pose, full = results["pose", target], results["full", target]
        ratio = ("-" if pose.get("oom") or full.get("oom")
                 else f"{full['step_s'] / pose['step_s']:.2f}")
        print(f"{target:>7} | {cells(pose, 'pose')} | {cells(full, 'full')} | {ratio}")
    last = a.targets[-1]
    for mode in ("pose", "full"):
        r = results[mode, last]
        if not (r.get("oom") or base[mode].get("oom")):
            print(f"at target {last}: {mode} time x{r['step_s'] / base[mode]['step_s']:.2f} and "
                  f"peak memory x{r['peak_gib'] / base[mode]['peak_gib']:.2f} of target "
                  f"{a.targets[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
