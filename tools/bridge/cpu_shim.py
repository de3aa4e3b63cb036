"""Tool-side stand-ins that let Megatron-Bridge 0.6.2 import on a CPU-only Python 3.11 machine.

NOT part of the pose_megatron library: only tools/bridge/*.py import this, before Bridge.

Bridge 0.6.2 declares Python >= 3.12 and a CUDA stack. On this machine (CPU, Python 3.11, the
only local torch build being cp311) two things stop ``import megatron.bridge``:

1. ``typing.override`` (new in Python 3.12), imported by ``megatron.training.models.hybrid``
   (shipped in the megatron-core 0.19.2 wheel). The stand-in is the identity decorator, which
   is what ``typing.override`` does at run time apart from setting ``__override__``.
2. ``megatron/bridge/peft/lora_layers.py`` imports ``transformer_engine.pytorch`` at module
   level (LoRA wrappers for TE layers; only touched when a LoRA adapter wraps a TE layer).
   Transformer Engine has no CPU build. A stand-in module is served to that one importer only,
   whose every name is a class that raises when called, so nothing can silently run on it; Megatron-Core and the
   rest of Bridge keep seeing no Transformer Engine (their ``HAVE_TE`` stays False).

Nothing here changes a computation: the conversions under test run Bridge's real code.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
import typing

_ALLOWED_IMPORTERS = ("megatron.bridge.peft.lora_layers",)


def _override(func):
    try:
        func.__override__ = True
    except (AttributeError, TypeError):
        pass
    return func


class _AbsentMeta(type):
    """Names under the stand-in: usable in annotations and class bodies, never instantiable."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _absent(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"{cls.__qualname__}: Transformer Engine is not installed "
                           "(a stand-in from tools/bridge/cpu_shim.py)")


def _absent(qualname: str) -> type:
    return _AbsentMeta(qualname.rsplit(".", 1)[-1], (), {"__qualname__": qualname})


class _Absent(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _absent(f"{self.__name__}.{name}")


def _importer() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(("importlib", "_frozen_importlib", __name__)):
            return name
        frame = frame.f_back
    return ""


class _TEFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] != "transformer_engine":
            return None
        if _importer() not in _ALLOWED_IMPORTERS:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        module = _Absent(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def install() -> None:
    if sys.version_info < (3, 12) and not hasattr(typing, "override"):
        typing.override = _override
    if not any(isinstance(f, _TEFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TEFinder())


def uninstall_te_standin() -> None:
    """Drop the stand-in from sys.modules (lora_layers keeps its reference)."""
    for name in [n for n in sys.modules if n.split(".")[0] == "transformer_engine"]:
        if isinstance(sys.modules[name], _Absent):
            del sys.modules[name]
