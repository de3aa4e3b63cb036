"""Convert a HF LLaMA / Mistral / Qwen2 checkpoint into a Megatron-Core checkpoint.

The output is what Megatron-LM's --load and pose_megatron's training and evaluation read:
pose_model.json (architecture and RoPE, so nothing downstream needs model flags),
latest_checkpointed_iteration.txt ("release") and release/ holding either a distributed
checkpoint (default; reloadable at any TP/PP) or the legacy per-rank mp_rank_XX[_YYY] files.
The HF directory's tokenizer files are copied into tokenizer/.

Example:
  python tools/convert_hf_to_megatron.py --hf-dir llama-2-7b-hf --out ckpt/llama2-7b --dtype bf16
  python tools/convert_hf_to_megatron.py --hf-dir llama-2-7b-hf --out ckpt/l2-tp2pp2 \\
      --format legacy --tp 2 --pp 2
"""

from __future__ import annotations

import argparse

from pose_megatron import dtypes, errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-dir", required=True,
                   help="HF model directory: config.json plus model.safetensors, sharded "
                        "safetensors with an index, or pytorch_model*.bin (read weights_only)")
    p.add_argument("--out", required=True, help="output checkpoint directory (written atomically)")
    p.add_argument("--tp", type=int, default=1,
                   help="tensor-parallel size of the legacy layout; checked against the heads, "
                        "query groups, FFN and vocab sizes for both formats (default 1)")
    p.add_argument("--pp", type=int, default=1,
                   help="pipeline-parallel size of the legacy layout; must divide the number of "
                        "layers (default 1)")
    p.add_argument("--dtype", choices=dtypes.SHORT_NAMES, default=None,
                   help="dtype of the stored weights (default: the HF checkpoint's own dtype)")
    p.add_argument("--format", choices=("torch_dist", "legacy"), default="torch_dist",
                   help="torch_dist: Megatron-Core distributed checkpoint (any TP/PP can load it); "
                        "legacy: release/mp_rank_XX[_YYY]/model_optim_rng.pt per TP/PP rank")
    p.add_argument("--spec", choices=("local", "te"), default="local",
                   help="legacy format only: state-dict names of Megatron's local spec "
                        "(input_layernorm) or Transformer Engine spec (fused layer_norm_weight)")
    p.add_argument("--layout", choices=("megatron", "bridge"), default="megatron",
                   help="megatron: release/ and latest_checkpointed_iteration.txt (Megatron-LM's "
                        "--load); bridge: iter_0000000/ with run_config.yaml and "
                        "latest_train_state.pt besides, which Megatron-Bridge's "
                        "AutoBridge.load_megatron_model also loads (torch_dist only; "
                        "docs/bridge.md)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (or sentencepiece .model file) to copy (default: --hf-dir's)")
    p.add_argument("--no-position-embedding", action="store_true",
                   help="record add_position_embedding=False in the checkpoint's Megatron-LM args, "
                        "for Megatron-LM jobs that pass --no-position-embedding (its LLaMA-2 docs' "
                        "flags). Megatron-LM's load_checkpoint compares this value with the job's "
                        "unless the job passes --use-checkpoint-args or --finetune; the default, "
                        "True, is Megatron-LM's own default (its LLaMA-3 example, its own "
                        "converters). For RoPE models the flag changes nothing else")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    errors.add_debug_argument(p)
    return p


def convert(argv) -> int:
    opts = build_parser().parse_args(argv)
    from pose_megatron.convert import hf_to_megatron

    args = hf_to_megatron(
        opts.hf_dir, opts.out, tp=opts.tp, pp=opts.pp, dtype=opts.dtype, fmt=opts.format,
        spec=opts.spec, force=opts.force, tokenizer=opts.tokenizer,
        progress=not opts.no_progress, layout=opts.layout,
        add_position_embedding=not opts.no_position_embedding)
    print(f"wrote {opts.out}: {args.family}, {args.num_layers} layers, hidden {args.hidden_size}, "
          f"rope {args.rope_scaling or 'default'} theta {args.rope_theta}, {args.torch_dtype}")
    return 0


def main(argv=None) -> int:
    """Convert; an expected failure prints one ``error:`` line and returns 2
    (``pose_megatron.errors``)."""
    return errors.run(convert, argv, exit=False)


# what the pose-* console script, python -m and tools/ start
run = errors.command(convert)


if __name__ == "__main__":
    run()
