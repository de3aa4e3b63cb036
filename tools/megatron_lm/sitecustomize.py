"""CPU redirects for Megatron-LM's own training loop (tools/check_megatron_lm.sh only).

Active only in processes started with POSE_MEGATRON_LM_CPU=1 and this directory on PYTHONPATH:
Python imports ``sitecustomize`` at start-up in every process, so the redirects also reach the
processes Megatron-LM spawns (its checkpoint writer re-imports the script). They are test
scaffolding, never part of the library: on a GPU machine the check runs without them.

Megatron-Core's own CUDA-only spots are redirected by ``pose_megatron.cpu_shims`` (device
queries, ``device="cuda"`` allocations, the CUDA RNG tracker, streams). Megatron-LM's loop adds
its own (measured at core_v0.16.1 and core_v0.19.0):
  * ``initialize_megatron`` asserts CUDA unless ``allow_no_cuda``, which ``pretrain()`` cannot
    pass: it is passed here;
  * model-parallel groups and RNG seeding are gated on ``torch.cuda.device_count() > 0``: one
    "device" is reported and ``torch.cuda.set_device`` does nothing;
  * ``compile_helpers`` runs ``make`` in the wheel's ``megatron/core/datasets`` (no Makefile;
    the wheel ships the compiled helpers): skipped;
  * ``fused_kernels.load`` (0.16) needs CUDA_HOME: skipped (the local spec uses no fused kernel);
  * ``get_model`` wraps DDP construction in a ``torch.cuda.Stream``: a stand-in stream.
Gradient clipping asserts ``torch.cuda.FloatTensor``: the check passes ``--clip-grad 0``.
"""

import os

if os.environ.get("POSE_MEGATRON_LM_CPU") == "1":
    import contextlib
    import functools

    import torch

    class _Stream:
        def __init__(self, *args, **kwargs):
            pass

        def wait_stream(self, _other):
            pass

        def synchronize(self):
            pass

        def record_event(self, event=None):
            return event

    class _Event:
        def __init__(self, *args, **kwargs):
            pass

        def record(self, *args, **kwargs):
            pass

        def synchronize(self):
            pass

        def wait(self, *args, **kwargs):
            pass

        def elapsed_time(self, _other):
            return 0.0

    def _install():
        from pose_megatron import cpu_shims

        cpu_shims.install()
        torch.cuda.device_count = lambda: 1
        torch.cuda.set_device = lambda *a, **k: None
        torch.cuda.Stream = _Stream
        torch.cuda.Event = _Event
        torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
        torch.cuda.set_stream = lambda *a, **k: None
        torch.cuda.empty_cache = lambda: None
        for name in ("memory_allocated", "max_memory_allocated", "memory_reserved",
                     "max_memory_reserved"):
            setattr(torch.cuda, name, lambda *a, **k: 0)

        import megatron.core.datasets.utils as dataset_utils

        dataset_utils.compile_helpers = lambda: None
        try:
            from megatron.legacy import fused_kernels
        except ImportError:  # 0.19 has no legacy fused kernels
            pass
        else:
            fused_kernels.load = lambda args: None

        import megatron.training.initialize as initialize

        original = initialize.initialize_megatron

        @functools.wraps(original)
        def initialize_megatron(*args, **kwargs):
            kwargs["allow_no_cuda"] = True
            return original(*args, **kwargs)

        initialize.initialize_megatron = initialize_megatron
        import megatron.training.training as training  # bound its own name at import

        training.initialize_megatron = initialize_megatron

    try:
        _install()
    except Exception as err:  # Python would print it and go on without the redirects
        import sys

        print(f"error: CPU redirects for Megatron-LM (tools/megatron_lm/sitecustomize.py): "
              f"{type(err).__name__}: {err}", file=sys.stderr)
        raise SystemExit(1)
