"""Getting one micro-batch onto every rank that needs it, position ids included.

PoSE changes nothing but the position ids, so they must reach every rank that applies RoPE:
  * across tensor parallelism they are broadcast from TP rank 0 exactly like the tokens;
  * every pipeline stage reads them (stock Megatron-LM gives positions to the first stage only,
    because its absolute embeddings live there; RoPE is applied in every layer of every stage);
  * for context parallelism they are split with the same load-balanced 2*CP chunking as the
    tokens, so a token and its position always land on the same rank.
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist

BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids")
_DTYPES = {"tokens": torch.int64, "labels": torch.int64, "loss_mask": torch.float32,
           "position_ids": torch.int64}


def keys_for_stage(is_first: bool, is_last: bool) -> tuple:
    """Which batch fields a pipeline stage uses. Position ids are needed on every stage."""
    keys = ["position_ids"]
    if is_first:
        keys.insert(0, "tokens")
    if is_last:
        keys += ["labels", "loss_mask"]
    return tuple(keys)


def collate(samples: Iterable[dict]) -> Dict[str, torch.Tensor]:
    """Stack dataset items (dicts of numpy arrays of one length) into [B, L] tensors."""
    samples = list(samples)
    if not samples:
        raise ValueError("collate got an empty micro-batch")
    out = {}
    for key in BATCH_KEYS:
        missing = [i for i, s in enumerate(samples) if key not in s]
        if missing:
            raise KeyError(f"dataset item(s) {missing} lack the field {key!r}; every item needs "
                           f"{BATCH_KEYS}")
        lengths = {len(s[key]) for s in samples}
        if len(lengths) != 1:
            raise ValueError(f"field {key!r} has different lengths {sorted(lengths)} in one "
                             "micro-batch; PoSE samples must all be train_len long")
        out[key] = torch.from_numpy(np.stack([np.asarray(s[key]) for s in samples])).to(_DTYPES[key])
    return out


def context_parallel_chunk_ids(cp_size: int, cp_rank: int) -> tuple:
    """The two of the 2*CP sequence chunks a CP rank keeps: r and 2*CP-1-r.

    Causal attention makes late chunks dearer than early ones; pairing chunk r with its mirror
    gives every rank the same amount of work (Megatron's load-balanced split).
    """
    if cp_size < 1 or not 0 <= cp_rank < cp_size:
        raise ValueError(f"bad context-parallel rank {cp_rank} for size {cp_size}")
    return (cp_rank, 2 * cp_size - 1 - cp_rank)


def split_for_context_parallel(tensor: torch.Tensor, cp_size: int, cp_rank: int,
                               seq_dim: int = 1) -> torch.Tensor:
    """This CP rank's part of ``tensor`` along ``seq_dim`` (pure function; any field, any dtype)."""
    if cp_size == 1:
        return tensor
    length = tensor.shape[seq_dim]
    if length % (2 * cp_size):
        raise ValueError(
            f"sequence length {length} is not divisible by 2*context_parallel_size = "
            f"{2 * cp_size}; choose --pose-train-len as a multiple of {2 * cp_size}"
        )
    chunks = tensor.chunk(2 * cp_size, dim=seq_dim)
    first, second = context_parallel_chunk_ids(cp_size, cp_rank)
    return torch.cat([chunks[first], chunks[second]], dim=seq_dim)


def split_batch_for_context_parallel(batch: Dict[str, Optional[torch.Tensor]], cp_size: int,
                                     cp_rank: int) -> Dict[str, Optional[torch.Tensor]]:
    """Split every field of a batch the same way (attention masks on their query dim, 2)."""
    return {
        key: None if value is None else split_for_context_parallel(
            value, cp_size, cp_rank, seq_dim=2 if key == "attention_mask" else 1)
        for key, value in batch.items()
    }


def _broadcast_from_tp_rank0(batch: Optional[Dict[str, torch.Tensor]], keys: tuple, device,
                             group, src: int) -> Dict[str, torch.Tensor]:
    # Shapes first, so the receiving ranks can allocate; all fields share [B, L].
    shape = torch.zeros(2, dtype=torch.int64, device=device)
    if batch is not None:
        shape.copy_(torch.tensor(batch[keys[0]].shape, dtype=torch.int64))
    dist.broadcast(shape, src, group=group)
    out = {}
    for key in keys:
        if batch is not None:
            tensor = batch[key].to(device=device, dtype=_DTYPES[key]).contiguous()
        else:
            tensor = torch.empty(tuple(shape.tolist()), dtype=_DTYPES[key], device=device)
        dist.broadcast(tensor, src, group=group)
        out[key] = tensor
    return out


def get_batch(data_iterator: Optional[Iterator], device, *, vp_stage=None) -> Dict[str, torch.Tensor]:
    """The micro-batch for this rank: read on TP rank 0, broadcast over TP, split over CP.

    Every pipeline stage has its own iterator over the same sample sequence (only TP rank 0 of
    each stage reads), so each stage gets the sample's own position ids without a pipeline send.
    """
    from megatron.core import parallel_state as ps

    is_first = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    is_last = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    keys = keys_for_stage(is_first, is_last)

    batch = None
    if ps.get_tensor_model_parallel_rank() == 0:
        if data_iterator is None:
            raise RuntimeError("tensor-parallel rank 0 has no data iterator")
        batch = next(data_iterator)
    if ps.get_tensor_model_parallel_world_size() > 1:
        batch = _broadcast_from_tp_rank0(
            batch, keys, device, ps.get_tensor_model_parallel_group(),
            ps.get_tensor_model_parallel_src_rank())
    else:
        batch = {k: batch[k].to(device=device, dtype=_DTYPES[k]) for k in keys}
    return split_batch_for_context_parallel(
        batch, ps.get_context_parallel_world_size(), ps.get_context_parallel_rank())
