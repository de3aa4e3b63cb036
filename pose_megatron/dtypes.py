"""The floating-point dtypes of weights, by name: the one table the package reads and writes.

Canonical names are torch's attribute names (what ``pose_model.json`` and HF ``config.json``
store); the short spellings are what the ``--dtype`` flags and Megatron's ``--bf16``/``--fp16``
use. Kept free of torch imports so the configuration modules can use it.
"""

from __future__ import annotations

from typing import Optional, Sequence

NAMES = ("float32", "float16", "bfloat16")
ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
SHORT_NAMES = ("bf16", "fp16", "fp32")  # the choices of the converters' --dtype


def canonical(name: str, *, source: str = "--dtype", also: Sequence[str] = ()) -> str:
    """``name`` (canonical or short) as its canonical name; anything else is refused in one line
    naming ``source`` and the value (``also``: other words the caller accepts, for the message)."""
    if name in NAMES:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise ValueError(f"{source} {name!r}: expected one of "
                     f"{', '.join((*also, *SHORT_NAMES, *NAMES))}")


def lookup(name, default: Optional[str] = None) -> Optional[str]:
    """The canonical name of ``name`` (canonical, short, or ``str(torch_dtype)`` such as
    ``"torch.bfloat16"``), or ``default`` when it names none of them ("auto", None...)."""
    text = str(name)
    text = text[len("torch."):] if text.startswith("torch.") else text
    return text if text in NAMES else ALIASES.get(text, default)


def to_torch(name: str, *, source: str = "--dtype", also: Sequence[str] = ()):
    """The torch dtype of ``name`` (see ``canonical``)."""
    import torch

    return getattr(torch, canonical(name, source=source, also=also))


def name_of(dtype) -> str:
    """The canonical name of a torch dtype of the table (``torch.bfloat16`` -> ``"bfloat16"``)."""
    name = lookup(dtype)
    if name is None:
        raise ValueError(f"dtype {dtype}: expected one of {', '.join(NAMES)}")
    return name
