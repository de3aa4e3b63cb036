#!/usr/bin/env python
"""Preprocessing throughput: tools/preprocess_data.py against Megatron-LM's own script, in one run.

Builds a JSONL corpus of about --mb megabytes from this Python's standard library sources (the
bundled corpus, repeated, with an empty document every 50 so that case is measured and compared
too) and its sentencepiece model (or takes --tokenizer), then runs, interleaved --repeat times,
each as a fresh process with --workers workers and --append-eod:
  ours         tools/preprocess_data.py
  megatron-lm  Megatron-LM's tools/preprocess_data.py from the checkout --megatron-lm names
               (SentencePieceTokenizer), run by --megatron-lm-python
  baseline     without --megatron-lm (or with --baseline): the plain single-process loop, one
               json.loads + sentencepiece encode + IndexedDatasetBuilder.add_document per line
and prints the median wall and CPU seconds (the process and its workers) of each, the ratios
(theirs / ours: above 1 means ours is faster; target >= 1.5 against Megatron-LM) and whether
every output is byte-identical to ours.

Megatron-LM's tools import megatron.training, which imports triton: run it with an interpreter
that has triton (here .venv-mcore019); the checkout goes first on PYTHONPATH, so its own
megatron.core is used.

Example:
  git -C /work/.mirror/NVIDIA+Megatron-LM/repo worktree add ../mlm-016 core_v0.16.1
  python bench/preprocess.py --megatron-lm ../mlm-016 --megatron-lm-python .venv-mcore019/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

BASELINE = r"""
import json, sys
import numpy as np, sentencepiece
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
src, prefix, model = sys.argv[1:4]
sp = sentencepiece.SentencePieceProcessor(model_file=model)
builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(sp.get_piece_size()))
with open(src, encoding="utf-8") as f:
    for line in f:
        ids = sp.encode_as_ids(json.loads(line)["text"])
        if ids:
            ids.append(sp.eos_id())
        builder.add_document(np.asarray(ids), [len(ids)] if ids else [])
builder.finalize(prefix + ".idx")
"""


def build_input(work: str, megabytes: float, tokenizer) -> tuple:
    """(jsonl path, tokenizer path): the stdlib corpus repeated to ``megabytes``, an empty
    document every 50, and (unless given) the sentencepiece model trained on one copy."""
    from pose_megatron.data.corpus import train_tokenizer, write_jsonl

    os.makedirs(work, exist_ok=True)
    one = os.path.join(work, "stdlib.jsonl")
    if not os.path.exists(one):
        write_jsonl(one)
    if tokenizer is None:
        tokenizer = os.path.join(work, "tokenizer.model")
        if not os.path.exists(tokenizer):
            train_tokenizer(one, tokenizer, vocab_size=2000)
    path = os.path.join(work, f"corpus-{megabytes:g}MB.jsonl")
    if not os.path.exists(path):
        lines = open(one, encoding="utf-8").read().splitlines(keepends=True)
        target, written, n = int(megabytes * 1e6), 0, 0
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            while written < target:
                for line in lines:
                    if n % 50 == 0:
                        f.write(json.dumps({"text": ""}) + "\n")
                    f.write(line)
                    written, n = written + len(line), n + 1
                    if written >= target:
                        break
        os.replace(path + ".tmp", path)
    return path, tokenizer


def commands(args, src: str, tokenizer: str, out: str) -> dict:
    ours = [sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", src,
            "--tokenizer", tokenizer, "--append-eod", "--workers", str(args.workers),
            "--no-progress", "--output-prefix", os.path.join(out, "ours")]
    runs = {"ours": (ours, {})}
    if args.megatron_lm:
        checkout = os.path.abspath(args.megatron_lm)
        runs["megatron-lm"] = (
            [args.megatron_lm_python, os.path.join(checkout, "tools", "preprocess_data.py"),
             "--input", src, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
             tokenizer, "--append-eod", "--workers", str(args.workers), "--log-interval",
             "100000000", "--output-prefix", os.path.join(out, "megatron-lm")],
            {"PYTHONPATH": checkout})
    if args.baseline or not args.megatron_lm:
        runs["baseline"] = ([sys.executable, "-c", BASELINE, src,
                             os.path.join(out, "baseline_text_document"), tokenizer], {})
    return runs


def timed(cmd, extra_env) -> tuple:
    """(wall seconds, CPU seconds of the process and every worker it waited for)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", **extra_env)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stderr.write(err.decode(errors="replace")[-3000:])
        raise SystemExit(f"error: command failed: {' '.join(cmd[:2])}")
    return wall, usage.ru_utime + usage.ru_stime


def same_files(out: str, name: str) -> bool:
    for ext in (".bin", ".idx"):
        with open(os.path.join(out, f"ours_text_document{ext}"), "rb") as a, \
                open(os.path.join(out, f"{name}_text_document{ext}"), "rb") as b:
            if a.read() != b.read():
                return False
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=64, help="JSONL size in MB (default 64)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--repeat", type=int, default=3,
                   help="interleaved runs of each command; medians are shown (default 3)")
    p.add_argument("--tokenizer", default=None,
                   help="a sentencepiece .model (default: one trained on the stdlib corpus)")
    p.add_argument("--megatron-lm", default=None,
                   help="a Megatron-LM checkout (core_v0.16.1) whose tools/preprocess_data.py "
                   "to compare against")
    p.add_argument("--megatron-lm-python", default=sys.executable,
                   help="interpreter for Megatron-LM's script (needs triton; default: this one)")
    p.add_argument("--baseline", action="store_true",
                   help="also run the single-process baseline when --megatron-lm is given")
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench_preprocess"),
                   help="where the corpus, model and outputs go (default runs/bench_preprocess)")
    args = p.parse_args(argv)
    if args.megatron_lm and not os.path.isfile(
            os.path.join(args.megatron_lm, "tools", "preprocess_data.py")):
        print(f"error: --megatron-lm {args.megatron_lm}: no tools/preprocess_data.py there",
              file=sys.stderr)
        return 2

    src, tokenizer = build_input(args.workdir, args.mb, args.tokenizer)
    out = os.path.join(args.workdir, "out")
    os.makedirs(out, exist_ok=True)
    runs = commands(args, src, tokenizer, out)
    names = list(runs)
    times = {name: [] for name in names}
    for r in range(args.repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            times[name].append(timed(*runs[name]))
            print(f"  run {r + 1}/{args.repeat} {name:12s} {times[name][-1][0]:6.2f} s wall "
                  f"{times[name][-1][1]:6.2f} s CPU", flush=True)

    mb = os.path.getsize(src) / 1e6
    print(f"\n{mb:.1f} MB JSONL, {args.workers} workers (baseline: 1 process), --append-eod, "
          f"medians of {args.repeat}")
    med = {n: (statistics.median(t[0] for t in times[n]), statistics.median(t[1] for t in times[n]))
           for n in names}
    for name in names:
        same = "" if name == "ours" else (
            "   output identical to ours" if same_files(out, name) else "   OUTPUT DIFFERS")
        print(f"{name:12s} {med[name][0]:7.2f} s wall {med[name][1]:7.2f} s CPU "
              f"{mb / med[name][0]:6.2f} MB/s{same}")
    for name in names[1:]:
        print(f"ours vs {name}: {med[name][0] / med['ours'][0]:.2f}x wall throughput, "
              f"{med[name][1] / med['ours'][1]:.2f}x less CPU")
    return 0 if all(same_files(out, n) for n in names[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
