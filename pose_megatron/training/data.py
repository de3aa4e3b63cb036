"""Datasets the loop can read and the order it reads them in.

The real dataset comes from ``pose_megatron.data`` (a Megatron ``MegatronDataset`` built from
``--data-path``). ``SyntheticPoseDataset`` (``--mock-data``) has the same item contract on random
tokens, for smoke runs, tests and benchmarks: it needs no tokenizer and no files.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from pose_megatron.training.batch import collate


class SyntheticPoseDataset:
    """Random-token documents cut into PoSE samples; item ``i`` depends only on (seed, i).

    Each item is a dict of numpy arrays of length ``train_len``, with the contract of
    ``pose_megatron.data.pose_dataset``: ``tokens``, ``labels`` (``labels[j] = tokens[j+1]``, so the
    last token of a chunk predicts the first of the next, unmasked, as in the reference; the last
    label is the document token after the last chunk), ``loss_mask`` (ones) and ``position_ids``.
    """

    def __init__(self, num_samples: int, vocab_size: int, train_len: int, target_len: int, *,
                 doc_len: Optional[int] = None, num_chunks: int = 2, scheme: str = "reference",
                 content_offset: str = "random", seed: int = 0):
        from pose_megatron.positions import validate

        validate(train_len, target_len, num_chunks=num_chunks, scheme=scheme,
                 content_offset=content_offset, seed=seed)
        self.num_samples = num_samples
        self.vocab_size = vocab_size
        self.train_len = train_len
        self.target_len = target_len
        self.doc_len = doc_len or max(train_len, min(target_len, 5 * train_len))
        self.num_chunks = num_chunks
        self.scheme = scheme
        self.content_offset = content_offset
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        from pose_megatron.positions import pose_position_ids

        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range for {self.num_samples} samples")
        rng = np.random.default_rng([self.seed, index])
        # +1 so the last sample token has a next token to predict.
        doc = rng.integers(0, self.vocab_size, self.doc_len + 1, dtype=np.int64)
        sample = pose_position_ids(
            self.train_len, self.target_len, doc_len=self.doc_len, num_chunks=self.num_chunks,
            scheme=self.scheme, content_offset=self.content_offset, seed=self.seed, index=index)
        src = sample.token_index
        tokens = doc[src]
        return {
            "tokens": tokens,
            "labels": np.append(tokens[1:], doc[src[-1] + 1]),
            "loss_mask": np.ones(len(src), dtype=np.float32),
            "position_ids": sample.position_ids.astype(np.int64),
        }


def micro_batch_indices(consumed_samples: int, micro_batch_size: int, dp_size: int,
                        dp_rank: int, total_samples: int) -> Iterator[list]:
    """Sample indices of this DP rank's micro-batches, from ``consumed_samples`` on.

    Megatron's pretraining order: consecutive ``micro_batch_size * dp_size`` samples form one
    step of all DP ranks, rank ``r`` taking slice ``r``. The sequence depends only on
    ``consumed_samples``, which the checkpoint records, so a resumed run reads the same samples
    an uninterrupted one would. Wraps around at ``total_samples`` (epochs of a fixed order).
    """
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"bad data-parallel rank {dp_rank} for size {dp_size}")
    step = micro_batch_size * dp_size
    start = consumed_samples
    while True:
        first = start + dp_rank * micro_batch_size
        yield [(first + i) % total_samples for i in range(micro_batch_size)]
        start += step


def batch_iterator(dataset, consumed_samples: int, micro_batch_size: int, dp_size: int,
                   dp_rank: int) -> Iterator[dict]:
    """Collated micro-batches (dicts of [B, L] tensors) of this DP rank."""
    for indices in micro_batch_indices(consumed_samples, micro_batch_size, dp_size, dp_rank,
                                       len(dataset)):
        yield collate(dataset[i] for i in indices)


def check_data_inputs(args, vocab_size: int):
    """Check --data-path and --tokenizer-model against each other and the model; returns the
    tokenizer."""
    from megatron.core.datasets.utils import get_blend_from_list

    if not args.tokenizer_model:
        raise ValueError("--data-path needs --tokenizer-model (the tokenizer the corpus was "
                         "made with: its end-of-document id separates documents)")
    from pose_megatron.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer_model)
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"--tokenizer-model {args.tokenizer_model} has {tokenizer.vocab_size} tokens but the "
            f"model's vocabulary has {vocab_size} (--vocab-size or the checkpoint's): token ids "
            "would fall outside the embedding")
    from pose_megatron.data.indexed import check_indexed

    prefixes, _ = get_blend_from_list(args.data_path)
    for prefix in prefixes:
        check_indexed(prefix, tokenizer.vocab_size, flag="--data-path")
    return tokenizer


def build_megatron_dataset(args, vocab_size: int, num_samples: int):
    """The training split of ``--data-path`` (Megatron blend syntax) as PoseGPTDatasets."""
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder)
    from megatron.core.datasets.utils import get_blend_from_list

    from pose_megatron.data.pose_dataset import PoseDatasetConfig, PoseGPTDataset

    tokenizer = check_data_inputs(args, vocab_size)
    config = PoseDatasetConfig(
        random_seed=args.seed, sequence_length=args.pose_train_len,
        target_len=args.pose_target_len, blend=get_blend_from_list(args.data_path),
        split=args.split, tokenizer=tokenizer, num_chunks=args.pose_num_chunks,
        scheme=args.pose_scheme, content_offset=args.pose_content_offset,
        short_docs=args.pose_short_docs, max_doc_len=args.pose_max_doc_len,
        path_to_cache=args.data_cache_path)
    from megatron.core import parallel_state as ps

    # Only TP rank 0 of each stage reads; the builder itself lets global rank 0 write the index
    # caches first and the other ranks read them after a barrier.
    train, _, _ = BlendedMegatronDatasetBuilder(
        PoseGPTDataset, [num_samples, 0, 0],
        lambda: ps.get_tensor_model_parallel_rank() == 0, config).build()
    if train is None and ps.get_tensor_model_parallel_rank() == 0:
        raise SystemExit(f"error: --data-path {' '.join(args.data_path)} with --split "
                         f"{args.split} has no training split")
    return train
