#!/usr/bin/env python
"""Logits of a checkpoint as Megatron-LM itself loads it (tools/check_megatron_lm.sh).

Run with a Megatron-LM checkout (patched pretrain_gpt.py) on PYTHONPATH. Megatron-LM parses the
arguments after ``--`` exactly as pretrain_gpt.py would (0.16: ``initialize_megatron``; 0.19:
``parse_and_validate_args`` first), builds the model with that script's provider
(``partial(model_provider, gpt_builder)``, wrapped by ``pose_model_provider`` with --pose) through
``get_model``, and loads ``--load`` with Megatron-LM's ``load_checkpoint``. Random token ids are
run at each length with position ids 0..L-1; ids and logits are saved for the HF comparison.

  python tools/megatron_lm/mlm_logits.py --out LOGITS.pt --lengths 64 512 [--pose] -- ARGS...

``--script pretrain_hybrid`` does the same with the patched pretrain_hybrid.py and its
``hybrid_builder`` (a HybridModel; pass its --hybrid-layer-pattern and --spec in ARGS).
"""

import argparse
import inspect
import sys
from functools import partial


def main() -> int:
    split = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="file for {'tokens': ids, 'logits': {L: tensor}}")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 512])
    p.add_argument("--pose", action="store_true", help="wrap the provider with pose_model_provider")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--script", choices=("pretrain_gpt", "pretrain_hybrid"), default="pretrain_gpt",
                   help="the patched script whose provider and builder build the model")
    opts = p.parse_args(sys.argv[1:split])
    sys.argv = [sys.argv[0]] + sys.argv[split + 1:]

    import torch

    import importlib

    # the patched script of the checkout: its provider and builder
    script = importlib.import_module(opts.script)
    builder = script.gpt_builder if opts.script == "pretrain_gpt" else script.hybrid_builder
    from megatron.core.enums import ModelType
    from megatron.training import get_args
    from megatron.training.checkpointing import load_checkpoint
    from megatron.training.initialize import initialize_megatron
    from megatron.training.training import get_model

    extra = script.pose_extra_args_provider(None)
    defaults = {"tokenizer_type": "GPT2BPETokenizer"}
    if "extra_args_provider" in inspect.signature(initialize_megatron).parameters:  # 0.16
        initialize_megatron(extra_args_provider=extra, args_defaults=defaults)
    else:  # 0.19 parses (and applies --use-checkpoint-args) before initialising
        from megatron.training.arguments import parse_and_validate_args

        parse_and_validate_args(extra_args_provider=extra, args_defaults=defaults)
        initialize_megatron()
    provider = partial(script.model_provider, builder)
    if opts.pose:
        provider = script.pose_model_provider(provider)
    model = get_model(provider, ModelType.encoder_or_decoder, wrap_with_ddp=False)
    load_checkpoint(model, None, None, strict=True)
    net = model[0]
    net.eval()
    vocab = get_args().padded_vocab_size
    tokens = torch.randint(0, vocab, (opts.batch, max(opts.lengths)),
                           generator=torch.Generator().manual_seed(0))
    out = {"tokens": tokens, "logits": {}}
    with torch.no_grad():
        for length in opts.lengths:
            ids = tokens[:, :length]
            positions = torch.arange(length).unsqueeze(0).expand_as(ids)
            out["logits"][length] = net(ids, positions, None).float().cpu()
    torch.save(out, opts.out)
    print(f"megatron-lm logits: {sorted(out['logits'])} tokens -> {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
