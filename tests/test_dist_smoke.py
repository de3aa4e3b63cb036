import torch
from tests.distributed import run_distributed

def _body(rank, world):
    from pose_megatron import parallel
    parallel.initialize(tensor_model_parallel_size=2)
    from megatron.core import parallel_state as ps
    import torch.distributed as dist
    t = torch.tensor([rank + 1.0]); dist.all_reduce(t)
    return (ps.get_tensor_model_parallel_rank(), float(t))

def _bad(rank, world):
    if rank == 1: raise ValueError("boom")
    import time; time.sleep(30)

def test_smoke():
    assert run_distributed(_body, 2) == [(0, 3.0), (1, 3.0)]

def test_bad():
    import pytest
    with pytest.raises(AssertionError, match="boom"):
        run_distributed(_bad, 2)
