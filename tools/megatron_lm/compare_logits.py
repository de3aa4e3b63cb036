#!/usr/bin/env python
"""HF logits of a converted model against Megatron-LM's (from mlm_logits.py), max |diff| per length.

  python tools/megatron_lm/compare_logits.py --hf HF_DIR --megatron LOGITS.pt --tol 1e-4
Exits 1 when a length differs by more than --tol.
"""

import argparse
import sys


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hf", required=True, help="HF model directory")
    p.add_argument("--megatron", required=True, help="output of mlm_logits.py")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--label", default="", help="prefix of the printed lines")
    opts = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    ref = torch.load(opts.megatron, weights_only=True)
    model = AutoModelForCausalLM.from_pretrained(opts.hf, dtype=torch.float32).eval()
    worst = 0.0
    with torch.no_grad():
        for length, logits in sorted(ref["logits"].items()):
            hf = model(ref["tokens"][:, :length]).logits.float()
            diff = (hf - logits).abs().max().item()
            worst = max(worst, diff)
            print(f"{opts.label}max |HF - Megatron-LM| logits at {length} tokens: {diff:.3g}")
    if worst > opts.tol:
        print(f"error: {opts.label}logits differ by {worst:.3g} > {opts.tol}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
