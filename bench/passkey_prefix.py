#!/usr/bin/env python
"""Passkey with the shared-opening cache against the plain path, in one run, on one model.

Runs the same trials of one length both ways (pose_megatron/eval/passkey.py: the plain path runs
each whole prompt; the cached path computes the task line and filler once and each trial only its
tokens from the needle on, in pieces of 512), plain first, and prints each path's seconds, their
ratio and whether every answer is the same. The cached path's time includes computing the
opening. Run it on an otherwise idle machine: the two paths run one after the other.

Example (the real model of examples/reproduce_real.sh):
  OMP_NUM_THREADS=1 python bench/passkey_prefix.py --model runs/reproduce_real/hf/base \\
      --length 4096 --trials 4
"""

from __future__ import annotations

import argparse
import sys
import time

from pose_megatron.eval.models import load_model
from pose_megatron.eval.passkey import evaluate_length


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF model directory")
    p.add_argument("--length", type=int, default=4096, help="prompt length in tokens")
    p.add_argument("--trials", type=int, default=4, help="trials (the same for both paths)")
    p.add_argument("--seed", type=int, default=0, help="passkey seed")
    args = p.parse_args(argv)
    model = load_model(args.model, device="cpu", dtype="float32")
    if model.greedy_sharing is None:
        print(f"error: {args.model}: this model has no KV cache interface", file=sys.stderr)
        return 2
    tok = model.tokenizer

    def run(sharing):
        start = time.perf_counter()
        res = evaluate_length(model.greedy, tok.decode, tok.encode, model.bos_id, args.length,
                              args.trials, seed=args.seed, greedy_sharing=sharing)
        return time.perf_counter() - start, res

    plain_s, plain = run(None)
    cached_s, cached = run(model.greedy_sharing)
    same = [a["output"] == b["output"] for a, b in zip(plain.records, cached.records)]
    reused = sum(r["cached_tokens"] for r in cached.records)
    total = sum(r["n_tokens"] for r in cached.records)
    print(f"length {args.length}, {args.trials} trials: plain {plain_s:.1f} s, cached "
          f"{cached_s:.1f} s (opening included), ratio cached/plain {cached_s / plain_s:.2f}; "
          f"{reused}/{total} prompt tokens reused; same answers in {sum(same)}/{len(same)} trials")
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
