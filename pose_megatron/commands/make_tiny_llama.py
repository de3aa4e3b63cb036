"""Write a tiny, randomly initialised HF LLaMA checkpoint (for the quickstart and smoke runs).

The vocabulary size is read from a sentencepiece model when one is given, so the model matches the
bundled corpus's tokenizer. Weights are drawn from a fixed seed: the same command writes the same
checkpoint.
"""

import argparse
import os
import shutil

from pose_megatron import errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output HF directory (config.json + safetensors)")
    p.add_argument("--tokenizer-model", default=None,
                   help="sentencepiece .model: sets the vocabulary size and is copied to --out")
    p.add_argument("--vocab-size", type=int, default=2000,
                   help="vocabulary size when no --tokenizer-model is given (default 2000)")
    p.add_argument("--hidden-size", type=int, default=128, help="model width (default 128)")
    p.add_argument("--layers", type=int, default=2, help="transformer layers (default 2)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads, GQA (default 2)")
    p.add_argument("--max-position-embeddings", type=int, default=64,
                   help="the model's original context window (default 64)")
    p.add_argument("--intermediate-size", type=int, default=None,
                   help="FFN size (default 4 x --hidden-size)")
    p.add_argument("--head-dim", type=int, default=None,
                   help="attention head size (default --hidden-size / --heads)")
    p.add_argument("--rms-norm-eps", type=float, default=1e-6,
                   help="RMSNorm epsilon (default 1e-6, HF LlamaConfig's)")
    p.add_argument("--rope-theta", type=float, default=10000.0,
                   help="RoPE base (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    errors.add_debug_argument(p)
    args = p.parse_args(argv)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = args.vocab_size
    if args.tokenizer_model:
        if not os.path.isfile(args.tokenizer_model):
            p.error(f"--tokenizer-model {args.tokenizer_model}: no such file")
        import sentencepiece as spm

        vocab = spm.SentencePieceProcessor(model_file=args.tokenizer_model).get_piece_size()
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size or 4 * args.hidden_size,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=args.max_position_embeddings,
        head_dim=args.head_dim or args.hidden_size // args.heads, rms_norm_eps=args.rms_norm_eps,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    # transformers 5 keeps the base in rope_parameters, 4.x in rope_theta
    if getattr(config, "rope_parameters", None) is not None:
        config.rope_parameters["rope_theta"] = args.rope_theta
    config.rope_theta = args.rope_theta
    torch.manual_seed(args.seed)
    LlamaForCausalLM(config).save_pretrained(args.out)
    if args.tokenizer_model:
        shutil.copy(args.tokenizer_model, os.path.join(args.out, "tokenizer.model"))
    params = sum(v.numel() for v in LlamaForCausalLM(config).parameters())
    print(f"wrote {args.out}: LLaMA, {args.layers} layers, hidden {args.hidden_size}, vocab "
          f"{vocab}, window {args.max_position_embeddings}, {params / 1e6:.2f}M parameters")
    return 0


# what the pose-* console script, python -m and tools/ start
run = errors.command(main)


if __name__ == "__main__":
    run()
