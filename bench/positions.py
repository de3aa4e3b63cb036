"""Samples/s of batched PoSE position generation on one core (target: >= 1e5 of 2048 positions).

Pins the process to one CPU, generates --samples samples in loader-sized batches with the C++ fill
and with the NumPy fallback, in one run, and prints both rates and their ratio to the target.
"""

import argparse
import os
import time

import numpy as np

from pose_megatron import positions as P


def rate(args, scheme, chunks, use_native):
    """Samples/s over args.samples samples, with the fill forced to one implementation."""
    original = P._fill_ranges
    P._fill_ranges = lambda s, l, n, use_native_=None: original(s, l, n, use_native)
    docs = np.full(args.batch_size, 5 * args.train_len)

    def batch(first):
        P.pose_position_ids_batch(args.train_len, args.target_len,
                                  np.arange(first, first + args.batch_size), doc_lens=docs,
                                  scheme=scheme, num_chunks=chunks)

    try:
        batch(0)  # warm-up: first-touch page faults are not the generator's cost
        start = time.perf_counter()
        for first in range(0, args.samples, args.batch_size):
            batch(first)
        return args.samples / (time.perf_counter() - start)
    finally:
        P._fill_ranges = original


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-len", type=int, default=2048, help="positions per sample")
    parser.add_argument("--target-len", type=int, default=16384, help="PoSE target length")
    parser.add_argument("--samples", type=int, default=200_000, help="samples per measurement")
    parser.add_argument("--batch-size", type=int, default=1024, help="samples per call")
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(f"one core (affinity {sorted(os.sched_getaffinity(0))}), batches of {args.batch_size}, "
          f"{args.samples} samples of {args.train_len} positions, target {args.target_len}")
    target = 1e5
    for scheme, chunks in (("reference", 2), ("uniform", 4)):
        for name, native in (("C++ fill", True), ("NumPy fill", False)):
            if native and P._native is None:
                print(f"{scheme:9s} N={chunks} {name:10s}: extension not built")
                continue
            r = rate(args, scheme, chunks, native)
            print(f"{scheme:9s} N={chunks} {name:10s}: {r:12,.0f} samples/s "
                  f"= {r / target:.2f}x the 1e5 target")


if __name__ == "__main__":
    main()
