"""Redirects of the few CUDA-only calls that keep real Megatron-Core from running on a CPU.

Used by the tests and by CPU runs (``--device cpu``) only; on a machine with a GPU nothing here is
installed. The redirects are deliberately narrow: Megatron-Core's own code runs unchanged, we only
answer the questions it asks of CUDA ("which device?", "what is the RNG state?") with the CPU's
answers, and rewrite explicit ``device="cuda"`` allocations to the CPU.

What needs redirecting, measured with megatron-core 0.16.1 and 0.19.2 on torch 2.13 (CPU build):
  1. ``torch.cuda.current_device()`` used as a device (RoPE ``inv_freq``, buffers, p2p shapes).
  2. ``device="cuda"`` allocations (default causal mask, pipeline schedules, loss reductions).
  3. The CUDA RNG tracker: attention always forks it; seeding reads ``torch.cuda.get_rng_state``
     (Megatron's private accessors for it are redirected through ``megatron_compat``).
  4. ``torch.cuda.synchronize`` / ``current_stream`` in schedules and grad sync.

``install()`` / ``uninstall()`` are a pair (``uninstall`` restores every patched function and
leaves the device-rewriting ``TorchFunctionMode``); ``redirected()`` is the same as a context
manager. ``pose_megatron.parallel.initialize(device="cpu")`` installs them for the process.
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch.overrides import TorchFunctionMode

_lock = threading.Lock()
_undo: list = []  # callables restoring what install() changed, last change last


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
    """Install the redirects for this process (idempotent; ``uninstall`` undoes them). Refuses
    on a machine with CUDA.

    Process-wide while installed: the CUDA allocations sit deep inside Megatron-Core calls
    (schedules, masks) that a user's code does not wrap. ``redirected()`` scopes it instead.
    """
    with _lock:
        if _undo:
            return
        if torch.cuda.is_available():
            raise RuntimeError(
                "pose_megatron.cpu_shims is for CPU-only runs; this machine has CUDA, "
                "run Megatron-Core on the GPU instead"
            )
        from pose_megatron import megatron_compat

        megatron_compat.check_version("CPU redirects (cpu_shims)")
        replacements = {
            "current_device": _cpu_current_device,
            "synchronize": lambda *a, **k: None,
            "current_stream": lambda *a, **k: _NullStream(),
            "get_rng_state": lambda *a, **k: torch.get_rng_state(),
            "set_rng_state": lambda state, *a, **k: torch.set_rng_state(state),
            "manual_seed": lambda seed: torch.random.default_generator.manual_seed(seed),
        }
        replacements["manual_seed_all"] = replacements["manual_seed"]
        originals = {name: getattr(torch.cuda, name) for name in replacements}
        for name, value in replacements.items():
            setattr(torch.cuda, name, value)

        def restore_cuda():
            for name, value in originals.items():
                setattr(torch.cuda, name, value)

        _undo.append(restore_cuda)
        try:
            _undo.append(megatron_compat.redirect_cuda_rng_to_cpu(
                torch.get_rng_state, torch.set_rng_state))
            mode = _CudaToCpu()
            mode.__enter__()
            _undo.append(lambda: mode.__exit__(None, None, None))
        except BaseException:
            _uninstall_locked()
            raise


def _uninstall_locked() -> None:
    while _undo:
        _undo.pop()()


def uninstall() -> None:
    """Undo ``install``: the original ``torch.cuda`` functions and Megatron's RNG accessors are
    back and the device-rewriting mode is left. A no-op when not installed. Modes entered after
    ``install`` must have been left first (torch keeps modes on a stack)."""
    with _lock:
        _uninstall_locked()


def installed() -> bool:
    return bool(_undo)


@contextlib.contextmanager
def redirected():
    """The redirects for the duration of a ``with`` block (left installed if they already were)."""
    was = installed()
    install()
    try:
        yield
    finally:
        if not was:
            uninstall()
