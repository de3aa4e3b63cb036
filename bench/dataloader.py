"""PoSE dataset throughput: samples/s of ``PoseGPTDataset`` at L_train=2048 (target >= 1e4/worker).

Builds the dataset through Megatron-Core's ``BlendedMegatronDatasetBuilder`` on a real corpus
(default: the bundled stdlib corpus, built into --workdir; or --data-prefix/--tokenizer) and
measures, in one run:

- ``getitem``: ``dataset[i]`` for consecutive ``i`` in this process: the work of one data-loader
  worker, since Megatron's samplers read consecutive indices;
- ``dataloader``: ``torch.utils.data.DataLoader`` with --workers worker processes, default
  collation into tensors, per worker and in total.

    python bench/dataloader.py                       # stdlib corpus, 2048 -> 16384, skip
    python bench/dataloader.py --short-docs pack --workers 2
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-prefix", default=None,
                        help=".bin/.idx prefix (default: build the stdlib corpus in --workdir)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer of --data-prefix (sentencepiece .model or HF directory)")
    parser.add_argument("--workdir", default=None,
                        help="where the stdlib corpus and the index cache go (default: temp dir)")
    parser.add_argument("--train-len", type=int, default=2048, help="L_train (default 2048)")
    parser.add_argument("--target-len", type=int, default=16384, help="L_target (default 16384)")
    parser.add_argument("--scheme", default="reference",
                        help="position scheme: reference, uniform, full, randpos")
    parser.add_argument("--num-chunks", type=int, default=2, help="chunks per sample (default 2)")
    parser.add_argument("--short-docs", choices=["skip", "pack"], default="skip",
                        help="documents shorter than L_train: skip (paper) or pack")
    parser.add_argument("--samples", type=int, default=20000, help="samples to read (default 2e4)")
    parser.add_argument("--workers", type=int, default=1,
                        help="DataLoader worker processes for the dataloader measurement")
    parser.add_argument("--batch-size", type=int, default=8, help="DataLoader batch size")
    parser.add_argument("--attention-mask", action="store_true",
                        help="also return the [1, L, L] mask (Megatron's create_attention_mask)")
    args = parser.parse_args(argv)

    logging.disable(logging.WARNING)
    import torch

    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder)

    from pose_megatron.data.pose_dataset import PoseDatasetConfig, PoseGPTDataset
    from pose_megatron.data.tokenizers import load_tokenizer

    workdir = args.workdir or tempfile.mkdtemp(prefix="pose_dataloader_bench_")
    if args.data_prefix is None:
        prefix = os.path.join(workdir, "corpus_text_document")
        tokenizer_path = os.path.join(workdir, "tokenizer.model")
        if not os.path.exists(prefix + ".idx"):
            from pose_megatron.data.corpus import build_corpus

            t = time.perf_counter()
            build_corpus(workdir, quiet=True)
            print(f"built the stdlib corpus in {time.perf_counter() - t:.1f} s")
    else:
        if args.tokenizer is None:
            parser.error("--data-prefix needs --tokenizer")
        prefix, tokenizer_path = args.data_prefix, args.tokenizer

    config = PoseDatasetConfig(
        random_seed=1234, sequence_length=args.train_len, target_len=args.target_len,
        num_chunks=args.num_chunks, scheme=args.scheme, short_docs=args.short_docs,
        blend=([prefix], None), split="1,0,0", tokenizer=load_tokenizer(tokenizer_path),
        create_attention_mask=args.attention_mask,
        path_to_cache=os.path.join(workdir, "index_cache"))
    t = time.perf_counter()
    dataset = BlendedMegatronDatasetBuilder(
        PoseGPTDataset, [args.samples, 0, 0], lambda: True, config).build()[0]
    lengths = dataset.dataset.sequence_lengths
    print(f"{prefix}: {len(lengths)} documents, {int((lengths >= args.train_len).sum())} of >= "
          f"{args.train_len} tokens; {len(dataset)} samples ({args.short_docs}, "
          f"{dataset.index.epochs} epochs) indexed in {time.perf_counter() - t:.2f} s")

    n = len(dataset)
    dataset[0]
    t = time.perf_counter()
    checksum = 0
    for i in range(n):
        checksum += int(dataset[i]["tokens"][0])
    getitem = n / (time.perf_counter() - t)
    print(f"getitem (one process):  {getitem:10.0f} samples/s  "
          f"({getitem * args.train_len / 1e6:.1f} M tokens/s)  target >= 10000: "
          f"{'met' if getitem >= 1e4 else 'NOT met'}")

    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size,
                                         num_workers=args.workers, shuffle=False,
                                         persistent_workers=False)
    t = None
    seen = 0
    for k, batch in enumerate(loader):
        if k == 2 * args.workers:  # worker start-up is not throughput
            t, seen = time.perf_counter(), 0
        seen += batch["tokens"].shape[0]
    rate = seen / (time.perf_counter() - t) if t else float("nan")
    print(f"DataLoader ({args.workers} workers, batch {args.batch_size}, collated tensors): "
          f"{rate:10.0f} samples/s total, {rate / max(args.workers, 1):.0f} per worker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
