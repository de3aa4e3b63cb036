"""Redirects of the few CUDA-only calls that keep real Megatron-Core from running on a CPU.

Used by the tests and by CPU runs (``--device cpu``) only; on a machine with a GPU nothing here is
installed. The redirects are deliberately narrow: Megatron-Core's own code runs unchanged, we only
answer the questions it asks of CUDA ("which device?", "what is the RNG state?") with the CPU's
answers, and rewrite explicit ``device="cuda"`` allocations to the CPU.

What needs redirecting, measured with megatron-core 0.16.1 and 0.19.2 on torch 2.13 (CPU build):
  1. ``torch.cuda.current_device()`` used as a device (RoPE ``inv_freq``, buffers, p2p shapes).
  2. ``device="cuda"`` allocations (default causal mask, pipeline schedules, loss reductions).
  3. The CUDA RNG tracker: attention always forks it; seeding reads ``torch.cuda.get_rng_state``.
  4. ``torch.cuda.synchronize`` / ``current_stream`` in schedules and grad sync.
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch.overrides import TorchFunctionMode

_installed = False
_lock = threading.Lock()


def _is_cuda_device(device) -> bool:
    if device is None:
        return False
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, int):
        # Bare ints are CUDA ordinals in torch's device arguments.
        return True
    return False


class _CudaToCpu(TorchFunctionMode):
    """Rewrites CUDA device arguments of torch calls to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = dict(kwargs, device="cpu")
        if func is torch.Tensor.cuda:
            return args[0]
        if func in (torch.Tensor.to,) and args and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class _NullStream:
    def synchronize(self):
        pass

    def wait_stream(self, _other):
        pass

    def record_event(self, event=None):
        return event


def _cpu_current_device():
    return torch.device("cpu")


def install() -> None:
    """Install the redirects for this process (idempotent). Refuses on a machine with CUDA."""
    global _installed
    with _lock:
        if _installed:
            return
        if torch.cuda.is_available():
            raise RuntimeError(
                "pose_megatron.cpu_shims is for CPU-only runs; this machine has CUDA, "
                "run Megatron-Core on the GPU instead"
            )
        torch.cuda.current_device = _cpu_current_device
        torch.cuda.synchronize = lambda *a, **k: None
        torch.cuda.current_stream = lambda *a, **k: _NullStream()
        torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
        torch.cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
        torch.cuda.manual_seed = lambda seed: torch.random.default_generator.manual_seed(seed)
        torch.cuda.manual_seed_all = torch.cuda.manual_seed

        from megatron.core.tensor_parallel import random as mcore_random

        mcore_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
        mcore_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)

        # Stays active for the life of the process: the CUDA allocations sit deep inside
        # Megatron-Core calls (schedules, masks) that a user's code does not wrap.
        mode = _CudaToCpu()
        mode.__enter__()
        _installed = True


def installed() -> bool:
    return _installed


@contextlib.contextmanager
def maybe_installed(device: str):
    """Install the redirects when ``device`` is the CPU; a no-op on CUDA."""
    if device == "cpu":
        install()
    yield
