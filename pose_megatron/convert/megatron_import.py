"""Import Megatron-Core for a converter without paying for torch.compile up front.

Megatron-Core decorates its fused kernels with ``torch.compile`` at import time
(``megatron.core.jit.jit_fuser``), and the decorator alone imports dynamo and inductor: ~2 s of
the ~5 s ``import megatron.core`` takes on CPU. A converter never calls those kernels. So for the
duration of the import, ``torch.compile`` is replaced by a version that compiles each function
on its first call, with the same arguments, and the real one is put back afterwards. Nothing is
mocked: a process that does call a fused kernel later gets it compiled then, which is when
``torch.compile`` compiles anyway; only the import of the compiler moves.
"""

from __future__ import annotations

import functools
import sys

import torch


def _compile_on_first_call(real_compile):
    def compile(model=None, **kwargs):
        if model is None:  # decorator with arguments: @torch.compile(...)
            return lambda fn: compile(fn, **kwargs)
        if isinstance(model, torch.nn.Module) or not callable(model):
            return real_compile(model, **kwargs)  # only plain functions are deferred
        compiled = None

        @functools.wraps(model)
        def call(*args, **kw):
            nonlocal compiled
            if compiled is None:
                compiled = real_compile(model, **kwargs)
            return compiled(*args, **kw)

        return call

    return compile


def import_megatron_core() -> None:
    """``import megatron.core`` with its import-time ``torch.compile`` calls deferred."""
    if "megatron.core" in sys.modules:
        return
    real = torch.compile
    torch.compile = _compile_on_first_call(real)
    try:
        import megatron.core  # noqa: F401
        # Modules the converter imports next also decorate at import time.
        import megatron.core.models.gpt  # noqa: F401
    finally:
        torch.compile = real
