"""Batch routing: CP split (pure), TP broadcast, per-stage fields, data order."""

import numpy as np
import pytest
import torch

from pose_megatron.positions import pose_position_ids
from pose_megatron.training.batch import (collate, context_parallel_chunk_ids, keys_for_stage,
                                          split_batch_for_context_parallel,
                                          split_for_context_parallel)
from pose_megatron.data.synthetic import SyntheticPoseDataset
from pose_megatron.training.data import micro_batch_indices
from pose_megatron.positions import PoseSettings
from tests.distributed import run_distributed


def _pose_batch(batch_size, train_len, target_len):
    positions = np.stack([pose_position_ids(train_len, target_len, index=i, seed=3).position_ids
                          for i in range(batch_size)])
    # A token's value is its index in the sample, so a split can be read back as indices.
    tokens = np.tile(np.arange(train_len), (batch_size, 1))
    return {"tokens": torch.from_numpy(tokens), "position_ids": torch.from_numpy(positions),
            "labels": torch.from_numpy(tokens + 1000),
            "loss_mask": torch.ones(batch_size, train_len)}


def test_chunk_ids_pair_each_chunk_with_its_mirror():
    assert [context_parallel_chunk_ids(2, r) for r in range(2)] == [(0, 3), (1, 2)]
    assert [context_parallel_chunk_ids(4, r) for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]


def test_cp2_split_exact_values():
    x = torch.arange(16).view(2, 8)
    assert split_for_context_parallel(x, 2, 0).tolist() == [[0, 1, 6, 7], [8, 9, 14, 15]]
    assert split_for_context_parallel(x, 2, 1).tolist() == [[2, 3, 4, 5], [10, 11, 12, 13]]


@pytest.mark.parametrize("cp", [2, 4])
def test_cp_split_of_positions_equals_cp_split_of_tokens(cp):
    train_len = 64
    batch = _pose_batch(3, train_len, 512)
    full_positions = batch["position_ids"]
    assert full_positions.max() >= train_len  # PoSE skips present
    pieces = []
    for rank in range(cp):
        part = split_batch_for_context_parallel(batch, cp, rank)
        token_index = part["tokens"]
        # The positions a rank holds are exactly those of the tokens it holds ...
        assert torch.equal(part["position_ids"], torch.gather(full_positions, 1, token_index))
        assert torch.equal(part["labels"], token_index + 1000)
        assert part["position_ids"].shape == (3, train_len // cp)
        pieces.append(token_index[0])
    # ... and together the ranks hold every token once.
    assert sorted(torch.cat(pieces).tolist()) == list(range(train_len))


def test_cp_split_refuses_indivisible_length():
    with pytest.raises(ValueError, match="not divisible by 2\\*context_parallel_size = 8"):
        split_for_context_parallel(torch.zeros(1, 12), 4, 0)


def test_cp_split_of_attention_mask_is_on_query_dim():
    mask = torch.arange(8).view(1, 1, 8, 1).expand(1, 1, 8, 8)
    part = split_batch_for_context_parallel({"attention_mask": mask}, 2, 1)["attention_mask"]
    assert part.shape == (1, 1, 4, 8)
    assert part[0, 0, :, 0].tolist() == [2, 3, 4, 5]


def _megatron_cp_split(rank, world):
    """Compare with Megatron-Core's own get_batch_on_this_cp_rank on real gloo CP groups."""
    import inspect

    import torch.distributed as dist
    from megatron.core.utils import get_batch_on_this_cp_rank

    # megatron-core 0.19 added a required switch for its hybrid CP mode; PoSE's is the plain one
    plain_cp = ({"is_hybrid_cp": False}
                if "is_hybrid_cp" in inspect.signature(get_batch_on_this_cp_rank).parameters
                else {})
    dist.init_process_group("gloo")
    results = {}
    for cp in (2, 4):
        groups = [dist.new_group(list(range(s, s + cp))) for s in range(0, world, cp)]
        group = groups[rank // cp]
        cp_rank = rank % cp
        batch = _pose_batch(2, 32, 256)
        theirs = get_batch_on_this_cp_rank({k: v.clone() for k, v in batch.items()},
                                           cp_group=group, **plain_cp)
        ours = split_batch_for_context_parallel(batch, cp, cp_rank)
        results[cp] = all(torch.equal(theirs[k], ours[k]) for k in batch)
    dist.destroy_process_group()
    return results


@pytest.mark.slow  # four processes
def test_cp_split_equals_megatron_core():
    assert run_distributed(_megatron_cp_split, 4) == [{2: True, 4: True}] * 4


def _tp_broadcast(rank, world):
    from pose_megatron import parallel
    from pose_megatron.training.batch import get_batch

    parallel.initialize(tensor_model_parallel_size=2, device="cpu")
    dataset = SyntheticPoseDataset(4, 256, PoseSettings(16, 64, seed=5))
    iterator = iter([collate([dataset[0], dataset[1]])]) if rank == 0 else None
    batch = get_batch(iterator, "cpu")
    return {k: v.numpy() for k, v in batch.items()}


def test_tp_rank1_gets_rank0_batch_without_reading():
    got = run_distributed(_tp_broadcast, 2)
    dataset = SyntheticPoseDataset(4, 256, PoseSettings(16, 64, seed=5))
    want = collate([dataset[0], dataset[1]])
    for rank_batch in got:
        assert sorted(rank_batch) == ["labels", "loss_mask", "position_ids", "tokens"]
        for key, value in rank_batch.items():
            np.testing.assert_array_equal(value, want[key].numpy())


def test_every_stage_gets_position_ids():
    assert keys_for_stage(True, False) == ("tokens", "position_ids")
    assert keys_for_stage(False, False) == ("position_ids",)
    assert keys_for_stage(False, True) == ("position_ids", "labels", "loss_mask")
    assert keys_for_stage(True, True) == ("tokens", "position_ids", "labels", "loss_mask")


def test_collate_checks_fields_and_lengths():
    dataset = SyntheticPoseDataset(2, 256, PoseSettings(16, 64))
    item = dataset[0]
    batch = collate([item, dataset[1]])
    assert batch["tokens"].dtype == torch.int64 and batch["tokens"].shape == (2, 16)
    assert batch["loss_mask"].dtype == torch.float32
    with pytest.raises(KeyError, match="position_ids"):
        collate([{k: v for k, v in item.items() if k != "position_ids"}])
    short = dict(item, tokens=item["tokens"][:8])
    with pytest.raises(ValueError, match="different lengths"):
        collate([item, short])


def test_synthetic_sample_is_pose_and_labels_are_next_sample_tokens():
    dataset = SyntheticPoseDataset(8, 1000, PoseSettings(32, 256, seed=1))
    item = dataset[3]
    expected = pose_position_ids(32, 256, doc_len=dataset.doc_len, seed=1, index=3)
    np.testing.assert_array_equal(item["position_ids"], expected.position_ids)
    rng = np.random.default_rng([1, 3])
    doc = rng.integers(0, 1000, dataset.doc_len + 1)
    np.testing.assert_array_equal(item["tokens"], doc[expected.token_index])
    # The dataset contract: labels[j] = tokens[j+1] (the chunk boundary is not masked: the last
    # token of chunk 0 predicts the first of chunk 1, as in the reference); the last label is the
    # document token after the last chunk.
    tokens = doc[expected.token_index]
    np.testing.assert_array_equal(item["labels"][:-1], tokens[1:])
    assert item["labels"][-1] == doc[expected.token_index[-1] + 1]
    boundary = expected.chunks[0].length - 1
    assert item["labels"][boundary] == doc[expected.chunks[1].src_start]
    np.testing.assert_array_equal(dataset[3]["tokens"], item["tokens"])  # deterministic


def test_micro_batches_partition_global_batches_and_resume():
    # DP=2, micro-batch 2: step k covers samples 4k..4k+3, rank r the slice [2r, 2r+2).
    it0 = micro_batch_indices(0, 2, 2, 0, 100)
    it1 = micro_batch_indices(0, 2, 2, 1, 100)
    assert [next(it0) for _ in range(3)] == [[0, 1], [4, 5], [8, 9]]
    assert [next(it1) for _ in range(3)] == [[2, 3], [6, 7], [10, 11]]
    # A resume at consumed=8 continues the same sequence.
    assert next(micro_batch_indices(8, 2, 2, 1, 100)) == [10, 11]
    assert next(micro_batch_indices(98, 2, 1, 0, 100)) == [98, 99]
    assert next(micro_batch_indices(99, 2, 1, 0, 100)) == [99, 0]
