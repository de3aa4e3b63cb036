"""Convert a pose_megatron, converted or Megatron-LM checkpoint back into a HF model directory.

Reads the architecture and RoPE from pose_model.json or, for a checkpoint saved by Megatron-LM's
own pretrain() (with or without the PoSE helpers), from the args in its common state (both where
both exist, refusing a pose_model.json that disagrees with the args); the distributed or legacy
weights written at any TP/PP; and writes safetensors shards and a config.json that
AutoModelForCausalLM.from_pretrained loads with the RoPE scaling the model was trained with.
RoPE types HF has no name for are written in an exactly equivalent form: 'ntk' as plain RoPE
with the scaled base, 'yarn_pose' as 'longrope' with per-dimension factors (checked against
HF's own computation); anything else is refused. Tokenizer files are copied from --tokenizer or
from the checkpoint's tokenizer/ directory.

Example:
  python tools/convert_megatron_to_hf.py --megatron-dir ckpt/pose-yarn --out out/pose-yarn-hf
"""

from __future__ import annotations

import argparse

from pose_megatron import dtypes, errors


def _size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    for unit, mult in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * mult)
    return int(t)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--megatron-dir", required=True,
                   help="checkpoint directory holding latest_checkpointed_iteration.txt, "
                        "and pose_model.json or Megatron-LM's saved args")
    p.add_argument("--out", required=True, help="output HF directory (written atomically)")
    p.add_argument("--iteration", type=int, default=None,
                   help="iteration to export (default: the one latest_checkpointed_iteration.txt names)")
    p.add_argument("--dtype", choices=dtypes.SHORT_NAMES, default=None,
                   help="dtype of the written weights (default: as stored)")
    p.add_argument("--max-shard-size", default="5GB",
                   help="largest safetensors shard, e.g. 5GB, 500MB (default 5GB)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (or sentencepiece .model file) to copy (default: the checkpoint's tokenizer/)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    errors.add_debug_argument(p)
    return p


def convert(argv) -> int:
    opts = build_parser().parse_args(argv)
    try:
        max_shard = _size(opts.max_shard_size)
    except ValueError:
        raise errors.UsageError(f"--max-shard-size {opts.max_shard_size!r}: expected e.g. 5GB "
                                "or 500MB") from None
    from pose_megatron.convert import megatron_to_hf

    args = megatron_to_hf(
        opts.megatron_dir, opts.out, dtype=opts.dtype, force=opts.force,
        tokenizer=opts.tokenizer, max_shard_bytes=max_shard, iteration=opts.iteration,
        progress=not opts.no_progress)
    print(f"wrote {opts.out}: {args.family}, {args.num_layers} layers, rope "
          f"{args.rope_scaling or 'default'}")
    return 0


def main(argv=None) -> int:
    """Convert; an expected failure prints one ``error:`` line and returns 2
    (``pose_megatron.errors``)."""
    return errors.run(convert, argv, exit=False)


# what the pose-* console script, python -m and tools/ start
run = errors.command(convert)


if __name__ == "__main__":
    run()
