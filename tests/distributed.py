"""Run a test body in N gloo processes (real torch.distributed, real Megatron-Core).

The body is a module-level function ``fn(rank, world_size, *args)``; whatever rank 0 returns comes
back to the test. An exception on any rank fails the test with that rank's traceback.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import traceback

import torch.multiprocessing as mp

from pose_megatron.parallel import free_port


def _entry(rank, world_size, port, fn, args, outdir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        result, error = fn(rank, world_size, *args), None
    except BaseException:  # noqa: BLE001 - carried back to the parent test
        result, error = None, traceback.format_exc()
    with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump((result, error), f)
    if error is not None:
        raise SystemExit(1)


def run_distributed(fn, world_size: int, *args):
    with tempfile.TemporaryDirectory() as outdir:
        ctx = mp.start_processes(
            _entry, args=(world_size, free_port(), fn, args, outdir), nprocs=world_size,
            join=False, start_method="spawn",
        )
        try:
            while not ctx.join():
                pass
        except mp.ProcessExitedException:
            # join() has killed the other ranks; the failing rank's traceback is in its file.
            pass
        outcomes = {}
        for rank in range(world_size):
            path = os.path.join(outdir, f"rank{rank}.pkl")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    outcomes[rank] = pickle.load(f)
        for rank, (_, error) in sorted(outcomes.items()):
            if error is not None:
                raise AssertionError(f"rank {rank} failed:\n{error}")
        missing = [r for r in range(world_size) if r not in outcomes]
        if missing:
            raise RuntimeError(f"ranks {missing} ended without a result (killed or crashed)")
        return [outcomes[r][0] for r in range(world_size)]


_RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                    "LOCAL_WORLD_SIZE")


def child_env(**extra) -> dict:
    """os.environ for a child job, without this process's rendezvous variables.

    A test that initialised a process group in the pytest process left MASTER_PORT pointing at
    a store that is still listening; a child that inherited it would fail with EADDRINUSE.
    """
    env = {k: v for k, v in os.environ.items() if k not in _RENDEZVOUS_VARS}
    env.update(extra)
    return env
