"""Process-group set-up for Megatron-Core, on GPU (NCCL) or CPU (gloo + the CPU shims)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def initialize(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    *,
    device: str | None = None,
    seed: int = 1234,
    virtual_pipeline_model_parallel_size: int | None = None,
) -> str:
    """Initialise torch.distributed and Megatron-Core's parallel state; return the device used.

    Reads the usual torchrun variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK).
    Without them it starts a one-process group (what a notebook or a single-process evaluation
    wants) on an in-memory store: no port, and the caller's os.environ is left as it was, so
    tools it starts as subprocesses do not inherit a rendezvous of this process.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    device = device or default_device()
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        if context_parallel_size > 1:
            raise RuntimeError(
                "context parallelism (--context-parallel-size > 1) needs Transformer Engine's "
                "attention and a GPU; this run is on the CPU. Use --context-parallel-size 1 here."
            )
        from pose_megatron import cpu_shims

        cpu_shims.install()
    elif not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch sees no CUDA device")

    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if "RANK" in os.environ:
            dist.init_process_group(backend=backend)
        else:
            init_single_process(backend)

    world = dist.get_world_size()
    model_parallel = tensor_model_parallel_size * pipeline_model_parallel_size * context_parallel_size
    if world % model_parallel:
        raise ValueError(
            f"world size {world} is not divisible by TP*PP*CP = {tensor_model_parallel_size}*"
            f"{pipeline_model_parallel_size}*{context_parallel_size} = {model_parallel}"
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tensor_model_parallel_size,
            pipeline_model_parallel_size=pipeline_model_parallel_size,
            context_parallel_size=context_parallel_size,
            virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        )
    model_parallel_cuda_manual_seed(seed)
    return device


def init_single_process(backend: str = "gloo") -> None:
    """A one-process torch.distributed group on an in-memory store (no TCP port, no env vars)."""
    dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)


def destroy() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
