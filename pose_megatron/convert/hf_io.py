"""Reading and writing HF checkpoint directories one tensor at a time.

Reading memory-maps safetensors (or ``.bin`` with ``torch.load(mmap=True, weights_only=True)``),
so a tensor costs RAM only while it is in use. Writing fills safetensors shards of bounded size
and names them like ``save_pretrained`` does, with an index when there is more than one.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from typing import Dict, Optional, Tuple

import torch

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "generation_config.json",
)


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class _SafetensorsFile:
    """Reads tensors of a .safetensors file with plain positioned reads.

    Memory-mapping would leave every page read resident (and counted in RSS) until the file is
    closed; reading each tensor into its own buffer keeps RSS at the tensors in use.
    """

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self._base = 8 + n
        self._entries = header

    def keys(self):
        return list(self._entries)

    def get_shape(self, name):
        return tuple(self._entries[name]["shape"])

    def get_dtype(self, name):
        return _SAFETENSORS_DTYPES[self._entries[name]["dtype"]]

    def get_tensor(self, name: str) -> torch.Tensor:
        entry = self._entries[name]
        start, end = entry["data_offsets"]
        buf = torch.empty(end - start, dtype=torch.uint8)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self._base + start)
            view = memoryview(buf.numpy())
            got = 0
            while got < len(view):
                n = f.readinto(view[got:])
                if not n:
                    raise OSError(f"{self.path}: truncated while reading {name}")
                got += n
        return buf.view(_SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])


_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> None:
    """Write ``tensors`` as one .safetensors file, each tensor's bytes straight from its memory.

    The format is an 8-byte little-endian header size, a JSON header (padded with spaces to a
    multiple of 8) naming each tensor's dtype, shape and byte range, then the bytes back to back.
    ``safetensors.torch.save_file`` first copies every tensor into a bytes object (a second
    checkpoint-sized buffer, ~1 s per GB here) and refuses tensors that share storage; writing
    from the tensors needs neither. Tests load the result with safetensors and transformers.
    """
    header: Dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors.values():
            if t.numel():
                f.write(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))


class HFCheckpoint:
    """Lazy view of a HF model directory: ``config``, ``names()``, ``get(name)``."""

    def __init__(self, directory: str):
        self.directory = directory
        config_path = os.path.join(directory, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{config_path} not found: --hf-dir must be a HF model directory")
        with open(config_path) as f:
            self.config = json.load(f)
        self._where: Dict[str, str] = {}  # tensor name -> file
        self._open: Dict[str, object] = {}
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index_path = os.path.join(directory, index_name)
            if os.path.isfile(index_path):
                with open(index_path) as f:
                    self._where = dict(json.load(f)["weight_map"])
                break
        else:
            for single in ("model.safetensors", "pytorch_model.bin"):
                if os.path.isfile(os.path.join(directory, single)):
                    self._where = {name: single for name in self._file_names(single)}
                    break
            else:
                raise FileNotFoundError(
                    f"{directory}: no model.safetensors, pytorch_model.bin or their .index.json"
                )
        missing = sorted({f for f in self._where.values()
                          if not os.path.isfile(os.path.join(directory, f))})
        if missing:
            raise FileNotFoundError(
                f"{directory}: missing shard file(s) {missing} named by the checkpoint index"
            )

    def _handle(self, filename: str):
        if filename not in self._open:
            path = os.path.join(self.directory, filename)
            if filename.endswith(".safetensors"):
                self._open[filename] = _SafetensorsFile(path)
            else:
                self._open[filename] = torch.load(path, map_location="cpu", mmap=True,
                                                  weights_only=True)
        return self._open[filename]

    def _file_names(self, filename: str):
        handle = self._handle(filename)
        return list(handle.keys())

    def names(self):
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise KeyError(f"{self.directory}: tensor {name!r} is not in the checkpoint")
        handle = self._handle(self._where[name])
        if isinstance(handle, dict):
            return handle[name]
        return handle.get_tensor(name)

    def shape(self, name: str):
        handle = self._handle(self._where[name])
        if isinstance(handle, dict):
            return tuple(handle[name].shape)
        return handle.get_shape(name)

    def dtype(self, name: str) -> torch.dtype:
        handle = self._handle(self._where[name])
        return handle[name].dtype if isinstance(handle, dict) else handle.get_dtype(name)

    def nbytes(self) -> int:
        return sum(os.path.getsize(os.path.join(self.directory, f)) for f in set(self._where.values()))

    def close(self):
        self._open.clear()


class HFWriter:
    """Streams tensors into ``model-XXXXX-of-YYYYY.safetensors`` shards of at most ``max_shard_bytes``."""

    def __init__(self, directory: str, max_shard_bytes: int = 5 * 1024**3):
        self.directory = directory
        self.max_shard_bytes = max_shard_bytes
        self._pending: Dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards = []  # (temporary file name, [tensor names])
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        name = f"shard-{len(self._shards):05d}.tmp"
        write_safetensors(os.path.join(self.directory, name), self._pending, {"format": "pt"})
        self._shards.append((name, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> None:
        if self._pending:
            self._flush()
        n = len(self._shards)
        if n == 1:
            os.replace(os.path.join(self.directory, self._shards[0][0]),
                       os.path.join(self.directory, "model.safetensors"))
            return
        weight_map = {}
        for i, (tmp, names) in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(os.path.join(self.directory, tmp), os.path.join(self.directory, final))
            weight_map.update({t: final for t in names})
        with open(os.path.join(self.directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map},
                      f, indent=2)


def copy_tokenizer(src: Optional[str], dst: str) -> Tuple[str, ...]:
    """Copy the tokenizer files found in ``src`` to ``dst``; returns the names copied.

    ``src`` is a tokenizer directory, or a single sentencepiece ``.model`` file (LLaMA-1/2 style),
    which lands as ``tokenizer.model``.
    """
    if not src:
        return ()
    if os.path.isfile(src) and src.endswith(".model"):
        shutil.copy2(src, os.path.join(dst, "tokenizer.model"))
        return ("tokenizer.model",)
    if not os.path.isdir(src):
        raise FileNotFoundError(
            f"--tokenizer {src}: neither a tokenizer directory nor a sentencepiece .model file")
    copied = []
    for name in TOKENIZER_FILES:
        path = os.path.join(src, name)
        if os.path.isfile(path):
            shutil.copy2(path, os.path.join(dst, name))
            copied.append(name)
    return tuple(copied)
