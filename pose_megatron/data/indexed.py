"""The package's one reader of Megatron's indexed dataset files (``PREFIX.bin`` / ``PREFIX.idx``)
before Megatron memory-maps them (csrc/sample_index.cpp reads the same header in C++).

``.idx`` layout (Megatron-Core's ``_IndexWriter``): the 9-byte magic, then little-endian
version (u64), token dtype code (u8), sequence count (u64), document-index length (u64); then
the sequence lengths (int32), sequence pointers (int64, byte offsets into the ``.bin``) and the
document index (int64, sequence numbers where documents start, ending at the sequence count).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
HEADER_BYTES = 34


@dataclass(frozen=True)
class IdxHeader:
    path: str
    dtype: type  # numpy scalar type of the tokens
    sequences: int
    documents: int  # entries of the document index (one more than the documents)

    @property
    def size(self) -> int:
        """The file size this header implies."""
        return HEADER_BYTES + self.sequences * 12 + self.documents * 8


def read_header(idx_path: str) -> IdxHeader:
    """The header of ``idx_path``; a file too short, foreign, of another version or with an
    unknown token dtype is refused naming it."""
    from megatron.core.datasets.indexed_dataset import DType

    size = os.path.getsize(idx_path)
    if size < HEADER_BYTES:
        raise ValueError(f"{idx_path}: {size} bytes, shorter than a Megatron .idx header")
    with open(idx_path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if head[:len(MAGIC)] != MAGIC:
        raise ValueError(f"{idx_path}: not a Megatron .idx file (bad magic {head[:9]!r})")
    version, code, count, docs = struct.unpack("<QBQQ", head[len(MAGIC):])
    if version != 1:
        raise ValueError(f"{idx_path}: unsupported .idx version {version}")
    try:
        dtype = DType.dtype_from_code(code)
    except ValueError:
        raise ValueError(f"{idx_path}: unknown token dtype code {code}") from None
    return IdxHeader(idx_path, dtype, int(count), int(docs))


def check_indexed(prefix: str, vocab_size: Optional[int] = None, *,
                  flag: Optional[str] = None) -> Dict[str, int]:
    """Check a ``.bin``/``.idx`` pair before Megatron memory-maps it; returns its sizes.

    Catches what Megatron's reader would turn into bare asserts or silent garbage: missing files,
    a foreign or truncated ``.idx``, a non-integer token dtype (or one too narrow for
    ``vocab_size``), a ``.bin`` whose size does not match the ``.idx`` (truncated, or written with
    another dtype), and an empty corpus. Errors name the file, after ``FLAG PREFIX:`` when the
    prefix came from a flag.
    """
    try:
        return _check(prefix, vocab_size)
    except (ValueError, FileNotFoundError) as err:
        if flag is None:
            raise
        raise type(err)(f"{flag} {prefix}: {err}") from None


def _check(prefix: str, vocab_size: Optional[int]) -> Dict[str, int]:
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: missing (dataset prefix {prefix!r})")
    header = read_header(idx_path)
    dtype, count, docs = header.dtype, header.sequences, header.documents
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"{idx_path}: token dtype {dtype.__name__} is not an integer type; "
                         f"token ids must be stored as uint16/int32")
    if vocab_size is not None and vocab_size - 1 > np.iinfo(dtype).max:
        raise ValueError(f"{idx_path}: token dtype {dtype.__name__} cannot hold ids of a "
                         f"{vocab_size}-token vocabulary: wrong tokenizer or wrong file")
    idx_size = os.path.getsize(idx_path)
    if idx_size != header.size:
        kind = "truncated" if idx_size < header.size else "has trailing bytes"
        raise ValueError(f"{idx_path}: {kind}: {idx_size} bytes, its header ({count} sequences, "
                         f"{docs} document boundaries) needs {header.size}")
    if count == 0:
        raise ValueError(f"{idx_path}: empty corpus (0 documents)")
    if docs < 1:
        raise ValueError(f"{idx_path}: no document boundaries")
    mm = np.memmap(idx_path, mode="r", dtype=np.uint8)
    lengths = np.frombuffer(mm, np.int32, count, HEADER_BYTES)
    pointers = np.frombuffer(mm, np.int64, count, HEADER_BYTES + 4 * count)
    last_doc = int(np.frombuffer(mm, np.int64, 1, HEADER_BYTES + 12 * count + 8 * (docs - 1))[0])
    if last_doc != count:
        raise ValueError(f"{idx_path}: document boundaries end at {last_doc}, not at the "
                         f"{count} sequences")
    itemsize = np.dtype(dtype).itemsize
    need = int(pointers[-1]) + int(lengths[-1]) * itemsize
    bin_size = os.path.getsize(bin_path)
    if need != bin_size:
        raise ValueError(
            f"{bin_path}: {bin_size} bytes, but {idx_path} describes {need} bytes of "
            f"{dtype.__name__} tokens: the pair is mismatched, truncated or of another dtype "
            f"(a truncated .bin, or an .idx of another .bin)")
    return {"sequences": count, "dtype_size": itemsize, "tokens": need // itemsize}
