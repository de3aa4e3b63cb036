"""Test package. Imported by pytest and by every spawned test rank (tests/distributed.py)."""

import importlib.util
import sys
import types


def _stand_in_for_triton_kernels():
    # megatron-core >= 0.19 imports one Triton kernel module (MoE paged stash) at import time of
    # its pipeline schedules. Triton has no build for CPU-only Python 3.11 machines, where we test
    # 0.19 for API compatibility; the kernels are never called by dense models, so an empty
    # stand-in for that one module lets the rest of Megatron-Core import unchanged.
    if importlib.util.find_spec("triton") is not None:
        return
    name = "megatron.core.transformer.moe.ops.paged_stash"
    if name in sys.modules:
        return
    stand_in = types.ModuleType(name)
    stand_in.GLOBAL_BLOCK_SIZE = 1024
    stand_in.paged_stash_copy_kernel = None
    stand_in.paged_stash_pop_kernel = None
    stand_in.__all__ = ["GLOBAL_BLOCK_SIZE", "paged_stash_copy_kernel", "paged_stash_pop_kernel"]
    sys.modules[name] = stand_in


_stand_in_for_triton_kernels()
