"""``SyntheticPoseDataset``: PoSE samples on random tokens, for smoke runs, tests and benchmarks.

The item contract of ``pose_dataset.PoseGPTDataset`` without a tokenizer or files
(``python -m pose_megatron.train --mock-data``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from pose_megatron.positions import PoseSettings


class SyntheticPoseDataset:
    """Random-token documents cut into PoSE samples; item ``i`` depends only on (seed, i).

    Each item is a dict of numpy arrays of length ``pose.train_len``, with the contract of
    ``pose_megatron.data.pose_dataset``: ``tokens``, ``labels`` (``labels[j] = tokens[j+1]``, so the
    last token of a chunk predicts the first of the next, unmasked, as in the reference; the last
    label is the document token after the last chunk), ``loss_mask`` (ones) and ``position_ids``.
    """

    def __init__(self, num_samples: int, vocab_size: int, pose: PoseSettings, *,
                 doc_len: Optional[int] = None):
        self.num_samples = num_samples
        self.vocab_size = vocab_size
        self.pose = pose
        self.doc_len = doc_len or pose.synthetic_doc_len

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range for {self.num_samples} samples")
        rng = np.random.default_rng([self.pose.seed, index])
        # +1 so the last sample token has a next token to predict.
        doc = rng.integers(0, self.vocab_size, self.doc_len + 1, dtype=np.int64)
        sample = self.pose.sample(index, self.doc_len)
        src = sample.token_index
        tokens = doc[src]
        return {
            "tokens": tokens,
            "labels": np.append(tokens[1:], doc[src[-1] + 1]),
            "loss_mask": np.ones(len(src), dtype=np.float32),
            "position_ids": sample.position_ids.astype(np.int64),
        }
