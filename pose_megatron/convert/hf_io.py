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

import numpy as np
import torch

from pose_megatron import publish

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "generation_config.json",
    # the chat template: transformers >= 4.47 saves it beside tokenizer_config.json, not in it;
    # an Instruct model without it formats no conversation
    "chat_template.jinja", "chat_template.json",
)
# transformers 5 saves named chat templates besides the default one as files in this directory
TOKENIZER_DIRS = ("additional_chat_templates",)


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not valid JSON ({err})") from None


class _SafetensorsFile:
    """Reads tensors of a .safetensors file, memory-mapped or with plain positioned reads.

    Mapped (copy-on-write), a tensor is the file's pages themselves: no copy and no fresh memory,
    which is what a writer that holds every tensor until it saves wants (HF -> torch_dist: 7-11 s
    instead of 12-15 s for 2 GB here). But the pages stay resident, and counted in RSS, until the
    file is closed, so a writer that drops tensors as it goes (the legacy layout, one pipeline
    stage at a time) reads each tensor into its own buffer instead.
    """

    def __init__(self, path: str, mmap: bool = False):
        self.path = path
        self.mmap = mmap
        self._map = None
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{path}: {size} bytes, too short for a safetensors file "
                                 "(truncated?)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ValueError(f"{path}: the header says {n} bytes but the file has {size}: "
                                 "truncated or not a safetensors file")
            try:
                header = json.loads(f.read(n))
            except ValueError:
                raise ValueError(f"{path}: the safetensors header is not valid JSON "
                                 "(damaged file?)") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: the safetensors header is not a JSON object")
        header.pop("__metadata__", None)
        self._base = 8 + n
        self._entries = header

    def check_complete(self) -> None:
        """Refuse a file shorter than its header says (a tensor read names it too, later)."""
        size = os.path.getsize(self.path)
        try:
            end = max((int(e["data_offsets"][1]) for e in self._entries.values()), default=0)
        except (KeyError, TypeError, ValueError, IndexError):
            raise ValueError(f"{self.path}: the safetensors header lists a tensor without valid "
                             "data_offsets (damaged file?)") from None
        if self._base + end > size:
            raise ValueError(f"{self.path}: {size} bytes but its header places tensor data up "
                             f"to byte {self._base + end}: truncated (copy or download it again)")

    def keys(self):
        return list(self._entries)

    def get_shape(self, name):
        return tuple(self._entries[name]["shape"])

    def get_dtype(self, name):
        return _SAFETENSORS_DTYPES[self._entries[name]["dtype"]]

    def get_tensor(self, name: str) -> torch.Tensor:
        entry = self._entries[name]
        start, end = entry["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        if self.mmap:
            if self._map is None:
                self._map = np.memmap(self.path, dtype=np.uint8, mode="c")
            if self._base + end > self._map.shape[0]:
                raise OSError(f"{self.path}: truncated while reading {name}")
            if end == start:
                return torch.empty(entry["shape"], dtype=dtype)
            buf = torch.from_numpy(self._map[self._base + start:self._base + end])
            return buf.view(dtype).reshape(entry["shape"])
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
        return buf.view(dtype).reshape(entry["shape"])


_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}


class HFCheckpoint:
    """Lazy view of a HF model directory: ``config``, ``names()``, ``get(name)``."""

    def __init__(self, directory: str, mmap: bool = False):
        self.directory = directory
        self.mmap = mmap  # see _SafetensorsFile
        config_path = os.path.join(directory, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{config_path} not found: --hf-dir must be a HF model directory")
        self.config = _read_json(config_path)
        if not isinstance(self.config, dict):
            raise ValueError(f"{config_path}: expected a JSON object")
        self._where: Dict[str, str] = {}  # tensor name -> file
        self._open: Dict[str, object] = {}
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index_path = os.path.join(directory, index_name)
            if os.path.isfile(index_path):
                index = _read_json(index_path)
                if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
                    raise ValueError(f"{index_path}: no 'weight_map' object")
                self._where = dict(index["weight_map"])
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
                self._open[filename] = _SafetensorsFile(path, mmap=self.mmap)
            else:
                try:
                    self._open[filename] = torch.load(path, map_location="cpu", mmap=True,
                                                      weights_only=True)
                except (RuntimeError, EOFError, ValueError) as err:
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                    raise ValueError(f"{path}: not a readable PyTorch weights file ({first})") \
                        from None
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

    def check_files(self) -> None:
        """Open every weights file (headers only): a damaged one fails here with its name,
        before a reader that would not name it (transformers' ``from_pretrained``)."""
        for filename in sorted(set(self._where.values())):
            handle = self._handle(filename)
            if isinstance(handle, _SafetensorsFile):
                handle.check_complete()

    def nbytes(self) -> int:
        return sum(os.path.getsize(os.path.join(self.directory, f)) for f in set(self._where.values()))

    def close(self):
        self._open.clear()


class HFWriter:
    """Streams tensors into ``model-XXXXX-of-YYYYY.safetensors`` shards of at most ``max_shard_bytes``.

    Each tensor is written as soon as it is added, by one background thread, so writing overlaps
    whatever produces the next tensors (reading the next layers of a Megatron checkpoint). A
    shard's header can only be known when the shard is complete, so its bytes start after
    ``header_reserve`` bytes and the header is written last, padded with spaces (which the format
    allows); a header that outgrows the reserve has its shard rewritten once. At most
    ``max_queued_bytes`` of tensors wait for the thread.
    """

    def __init__(self, directory: str, max_shard_bytes: int = 5 * 1024**3, *,
                 header_reserve: int = 1 << 20, max_queued_bytes: int = 1 << 30):
        from concurrent.futures import ThreadPoolExecutor

        self.directory = directory
        self.max_shard_bytes = max_shard_bytes
        self.header_reserve = header_reserve
        self.max_queued_bytes = max_queued_bytes
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hf-writer")
        self._queued = []  # (future, bytes) in submission order
        self._shard = None  # {"name", "entries", "bytes"} of the shard being written
        self._shards = []  # (temporary file name, [tensor names])
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._shard and self._shard["entries"] and self._shard["bytes"] + size > self.max_shard_bytes:
            self._close_shard()
        if self._shard is None:
            self._shard = {"name": f"shard-{len(self._shards):05d}.tmp", "entries": {}, "bytes": 0}
            self._submit(_start_shard, 0, os.path.join(self.directory, self._shard["name"]),
                         self.header_reserve)
        shard = self._shard
        shard["entries"][name] = {"dtype": _SAFETENSORS_NAMES[tensor.dtype],
                                  "shape": list(tensor.shape),
                                  "data_offsets": [shard["bytes"], shard["bytes"] + size]}
        self._submit(_write_at, size, os.path.join(self.directory, shard["name"]),
                     self.header_reserve + shard["bytes"], tensor)
        shard["bytes"] += size
        self.total_bytes += size

    def _submit(self, fn, size, *args) -> None:
        pending = []
        for future, n in self._queued:  # finished writes leave the queue, their errors surface
            if future.done():
                future.result()
            else:
                pending.append((future, n))
        self._queued = pending
        while self._queued and sum(n for _, n in self._queued) + size > self.max_queued_bytes:
            future, _ = self._queued.pop(0)
            future.result()
        self._queued.append((self._pool.submit(fn, *args), size))

    def _close_shard(self) -> None:
        shard, self._shard = self._shard, None
        path = os.path.join(self.directory, shard["name"])
        self._submit(_finish_shard, 0, path, self.header_reserve, shard["entries"])
        self._shards.append((shard["name"], list(shard["entries"])))

    def _drain(self) -> None:
        queued, self._queued = self._queued, []
        for future, _ in queued:
            future.result()  # the writer thread's errors surface here

    def finish(self) -> None:
        if self._shard is not None:
            self._close_shard()
        self._drain()
        n = len(self._shards)
        if n == 1:
            publish.move_into_place(os.path.join(self.directory, self._shards[0][0]),
                                    os.path.join(self.directory, "model.safetensors"))
            return
        weight_map = {}
        for i, (tmp, names) in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            publish.move_into_place(os.path.join(self.directory, tmp),
                                    os.path.join(self.directory, final))
            weight_map.update({t: final for t in names})
        with open(os.path.join(self.directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map},
                      f, indent=2)

    def close(self) -> None:
        """Stop the writer thread (after what it has queued); call on every path out."""
        self._pool.shutdown(wait=True)


def _start_shard(path: str, reserve: int) -> None:
    with open(path, "wb") as f:
        f.truncate(reserve)


def _write_at(path: str, offset: int, tensor: torch.Tensor) -> None:
    if not tensor.numel():
        return
    data = memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
    fd = os.open(path, os.O_WRONLY)
    try:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + done)
        # Start writing these pages back now rather than letting gigabytes of dirty pages pile
        # up for the final fsync: the writes then stream to disk, and were 1.5-3x faster here.
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, offset, len(data), os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _finish_shard(path: str, reserve: int, entries: dict) -> None:
    header = {"__metadata__": {"format": "pt"}, **entries}
    raw = json.dumps(header, separators=(",", ":")).encode()
    if len(raw) + 8 > reserve:  # rare: rewrite with a header of its own size
        with open(path, "rb") as f:
            f.seek(reserve)
            data = f.read()
        raw += b" " * (-len(raw) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            f.write(data)
        return
    with open(path, "r+b") as f:
        f.write(struct.pack("<Q", reserve - 8))
        f.write(raw + b" " * (reserve - 8 - len(raw)))


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
    for name in TOKENIZER_DIRS:
        path = os.path.join(src, name)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(dst, name))
            copied.append(name)
    return tuple(copied)
