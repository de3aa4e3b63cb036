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
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _measure(queue, argv, steps_timed):
    sys.stdout = open(os.devnull, "w")  # the loop's per-step lines; the table is the output
    from pose_megatron.training import logging_utils
    from pose_megatron.training.arguments import parse_args
    from pose_megatron.training.loop import setup, train

    args = parse_args(argv)
    trainer = setup(args)
    before = logging_utils.peak_memory_gib(trainer.device)
    history = train(trainer)
    times = [h["step_time_s"] for h in history[-steps_timed:]]
    queue.put({"step_s": statistics.median(times),
               "peak_gib": logging_utils.peak_memory_gib(trainer.device),
               "setup_gib": before, "tokens": history[-1]["tokens"]})


def run_config(mode, train_len, target_len, a) -> dict:
    seq = train_len if mode == "pose" else target_len
    argv = ["--mock-data", "--device", a.device, "--num-layers", str(a.layers),
            "--hidden-size", str(a.hidden), "--num-attention-heads", "4", "--vocab-size",
            str(a.vocab), "--pose-train-len", str(seq), "--pose-target-len", str(target_len),
            "--max-position-embeddings", str(train_len), "--micro-batch-size", "1",
            "--train-iters", str(a.warmup + a.steps), "--log-interval", "1000000"]
    if target_len > train_len:
        argv += ["--rope-scaling-type", "linear",
                 "--rope-scaling-factor", str(target_len / train_len)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(queue, argv, a.steps))
    proc.start()
    result = queue.get()
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
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run")
    a = p.parse_args(argv)

    from tqdm import tqdm

    configs = [(m, t) for t in a.targets for m in ("pose", "full")]
    results = {}
    for mode, target in tqdm(configs, desc="configs", file=sys.stderr):
        results[mode, target] = run_config(mode, a.train_len, target, a)

    base_pose, base_full = results["pose", a.targets[0]], results["full", a.targets[0]]
    print(f"tiny LLaMA ({a.layers} layers, hidden {a.hidden}) on {a.device}; PoSE trains "
          f"{a.train_len} tokens; full-length trains the target; median of {a.steps} steps")
    print("peak GiB: the process's peak (RSS on CPU); +act: its rise over the set-up peak "
          "(activations, logits, optimizer state)")
    print(f"{'target':>7} | {'PoSE ms':>8} {'x':>5} {'peak GiB':>8} {'+act':>6} | {'full ms':>8} "
          f"{'x':>6} {'peak GiB':>8} {'+act':>6} | full/PoSE time")
    for target in a.targets:
        pose, full = results["pose", target], results["full", target]
        print(f"{target:>7} | {pose['step_s'] * 1e3:>8.1f} {pose['step_s'] / base_pose['step_s']:>5.2f}"
              f" {pose['peak_gib']:>8.3f} {pose['peak_gib'] - pose['setup_gib']:>6.3f} | "
              f"{full['step_s'] * 1e3:>8.1f} {full['step_s'] / base_full['step_s']:>6.2f} "
              f"{full['peak_gib']:>8.3f} {full['peak_gib'] - full['setup_gib']:>6.3f} | "
              f"{full['step_s'] / pose['step_s']:.2f}")
    last = a.targets[-1]
    print(f"at target {last}: PoSE time x{results['pose', last]['step_s'] / base_pose['step_s']:.2f}"
          f" and peak memory x{results['pose', last]['peak_gib'] / base_pose['peak_gib']:.2f} of "
          f"target {a.targets[0]}; full-length time "
          f"x{results['full', last]['step_s'] / base_full['step_s']:.2f} and peak memory "
          f"x{results['full', last]['peak_gib'] / base_full['peak_gib']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
