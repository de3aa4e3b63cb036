"""The datasets a training run reads, from its flags, and the order it reads them in.

The datasets themselves are ``pose_megatron.data``'s: ``PoseGPTDataset`` (a Megatron
``MegatronDataset`` built from ``--data-path``) and ``SyntheticPoseDataset`` (``--mock-data``).
"""

from __future__ import annotations

from typing import Iterator

from pose_megatron.errors import UsageError
from pose_megatron.positions import PoseSettings
from pose_megatron.training.batch import collate


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


def build_megatron_dataset(args, pose: PoseSettings, vocab_size: int, num_samples: int):
    """The training split of ``--data-path`` (Megatron blend syntax) as PoseGPTDatasets."""
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder)
    from megatron.core.datasets.utils import get_blend_from_list

    from pose_megatron.data.pose_dataset import PoseDatasetConfig, PoseGPTDataset

    tokenizer = check_data_inputs(args, vocab_size)
    config = PoseDatasetConfig.for_settings(
        pose, blend=get_blend_from_list(args.data_path), split=args.split, tokenizer=tokenizer,
        path_to_cache=args.data_cache_path)
    from megatron.core import parallel_state as ps

    # Only TP rank 0 of each stage reads; the builder itself lets global rank 0 write the index
    # caches first and the other ranks read them after a barrier.
    train, _, _ = BlendedMegatronDatasetBuilder(
        PoseGPTDataset, [num_samples, 0, 0],
        lambda: ps.get_tensor_model_parallel_rank() == 0, config).build()
    if train is None and ps.get_tensor_model_parallel_rank() == 0:
        raise UsageError(f"--data-path {' '.join(args.data_path)} with --split "
                         f"{args.split} has no training split")
    return train
