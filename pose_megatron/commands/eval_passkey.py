"""Passkey retrieval accuracy vs prompt length (the PoSE paper's protocol).

For each length, --trials prompts of exactly that many tokens at most (BOS included) hide a random
5-digit key at a random depth in repeated filler text; the model answers greedily and a trial
passes when the first integer it writes is the key. Prints a table, writes a JSON file and a PNG
plot of accuracy vs length. See pose_megatron/eval/passkey.py for the exact prompt.

Example:
  python tools/eval_passkey.py --model out/pose-linear-hf --lengths 128 256 512 1k 2k \\
      --rope-scaling '{"rope_type":"linear","factor":16}' --output-json results/passkey_pose.json
"""

from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from pose_megatron import errors
from pose_megatron.errors import UsageError
from pose_megatron.eval import flags
from pose_megatron.eval.passkey import evaluate_length

TOOL = "eval_passkey"


def build_parser() -> argparse.ArgumentParser:
    p = flags.make_parser(__doc__)
    flags.add_model_arguments(p)
    g = p.add_argument_group("protocol")
    g.add_argument("--lengths", nargs="+", default=[], metavar="L",
                   help="prompt lengths in tokens, BOS included (space or comma separated; "
                        "'2k' = 2048)")
    g.add_argument("--trials", type=int, default=50,
                   help="prompts per length (default: %(default)s, as in the paper)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of keys and needle depths; trial i at length L is the same in "
                        "every run with this seed (default: %(default)s)")
    g.add_argument("--max-new-tokens", type=int, default=10,
                   help="greedy tokens generated per answer (default: %(default)s)")
    g.add_argument("--no-prefix-cache", action="store_true",
                   help="run every trial's whole prompt; by default a HF model computes the "
                        "task line and filler the trials open with once and each trial runs only "
                        "the rest (the same answers, about half the time)")
    g.add_argument("--no-task-line", action="store_true",
                   help="drop the instruction line that opens the prompt in the PoSE reference "
                        "code")
    flags.add_output_arguments(p, "passkey")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    lengths, marks, entries = flags.lengths_marks_and_earlier(args, TOOL)

    if args.model:
        try:
            model = flags.model_from_args(args)
            bos = model.bos_id
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        tok = model.tokenizer
        results = []
        start = time.time()
        for length in lengths:
            try:
                res = evaluate_length(
                    model.greedy, tok.decode, tok.encode, bos, length, args.trials,
                    seed=args.seed, max_new_tokens=args.max_new_tokens,
                    task_line=not args.no_task_line,
                    greedy_sharing=None if args.no_prefix_cache else model.greedy_sharing,
                    progress=lambda it, L=length: tqdm(it, desc=f"{model.name} passkey@{L}",
                                                       file=sys.stderr, leave=False),
                )
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            print(f"{model.name} length {length}: {res.correct}/{res.trials} correct",
                  file=sys.stderr)
            results.append(res.to_dict())
        entry = flags.model_entry(model)
        entry.update(seed=args.seed, trials=args.trials, max_new_tokens=args.max_new_tokens,
                     task_line=not args.no_task_line,
                     prefix_cache=not args.no_prefix_cache and model.greedy_sharing is not None,
                     seconds=round(time.time() - start, 2),
                     results=results)
        entries.append(entry)

    flags.report(entries, args, marks, tool=TOOL, column="acc%",
               cell=lambda r: f"{100 * r['accuracy']:.1f}", value=lambda r: 100 * r["accuracy"],
               xlabel="prompt length (tokens)", ylabel="passkey accuracy (%)",
               title="Passkey retrieval", y_limits=(-3, 103))
    return 0


# what the pose-* console script, python -m and tools/ start
run = errors.command(main)


if __name__ == "__main__":
    run()
