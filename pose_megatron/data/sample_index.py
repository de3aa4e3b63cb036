"""The PoSE sample index: which document(s) each training sample is cut from.

A PoSE sample needs one document of at least ``train_len`` tokens (the paper keeps only those;
the generator then picks the chunks and their content offsets inside it). The index lists, for
the requested number of samples, over as many epochs as needed:

``short_docs="skip"`` (the paper)
    Candidates are the split's documents with ``length >= train_len``, ``m`` of them. Sample
    ``s`` is candidate ``perm_e(s mod m)`` of epoch ``e = s // m``: every epoch visits each
    candidate once, in its own order. ``sample_start`` is None (sample ``s`` is ``doc_order[s]``).
``short_docs="pack"``
    Candidates are the split's non-empty documents. Each epoch visits them in ``perm_e`` order
    and closes a pack as soon as it holds at least ``train_len`` tokens, so a long document
    arriving at an empty pack is a sample of its own and short ones are concatenated (with the
    EOD tokens the preprocessing appended between them) with the document that completes them.
    The epoch's unfinished last pack is dropped. Sample ``s`` is the run
    ``doc_order[sample_start[s]:sample_start[s + 1]]``.

``perm_e`` is a keyed bijection of ``[0, m)``: a 4-round Feistel network (Luby-Rackoff: a strong
pseudo-random permutation given random round functions; here splitmix64 keyed by seed, epoch and
round) on ``ceil(log2 m)`` bits, with cycle walking. Any entry is computed on
its own, so the C++ builder (``csrc/sample_index.cpp``) fills the index in parallel with no sort
and no shuffle pass, and this NumPy version, the reference it must equal exactly, works in
bounded-memory blocks.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from pose_megatron.positions import SHORT_DOCS

_MASK64 = (1 << 64) - 1
_ROUNDS = 4
_BLOCK = 1 << 22  # entries per NumPy block: bounds the reference's temporaries to ~100 MB


try:  # the C++ twin, built by setup.py from csrc/sample_index.cpp
    from pose_megatron import _sample_index as _cpp
except ImportError:  # pragma: no cover - depends on the build
    _cpp = None


def cpp_available() -> bool:
    return _cpp is not None


def _mix64_int(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix64(x: np.ndarray) -> np.ndarray:
    # uint64 array arithmetic wraps modulo 2**64, as the mixer needs.
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class Permutation:
    """The keyed bijection ``perm_e`` of ``[0, n)`` for (seed, epoch)."""

    def __init__(self, n: int, seed: int, epoch: int):
        self.n = int(n)
        bits = 2
        while (1 << bits) < self.n:
            bits += 1
        self.left_bits = bits - bits // 2
        self.right_bits = bits // 2
        base = _mix64_int((_mix64_int(int(seed) & _MASK64) + int(epoch)) & _MASK64)
        self.keys = [np.uint64(_mix64_int((base + r) & _MASK64)) for r in range(_ROUNDS)]

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        wl, wr = self.left_bits, self.right_bits
        for key in self.keys:
            right = x & np.uint64((1 << wr) - 1)
            left = x >> np.uint64(wr)
            f = _mix64(right ^ key) & np.uint64((1 << wl) - 1)
            # (L, R) -> (R, L ^ F(R)): the halves swap widths every round.
            x = (right << np.uint64(wl)) | (left ^ f)
            wl, wr = wr, wl
        return x

    def __call__(self, k: np.ndarray) -> np.ndarray:
        k = np.asarray(k, dtype=np.uint64)
        if self.n <= 1:
            return np.zeros(k.shape, dtype=np.int64)
        y = self._feistel(k)
        out = np.flatnonzero(y >= np.uint64(self.n))
        while out.size:  # cycle walking: re-apply until inside [0, n)
            y[out] = self._feistel(y[out])
            out = out[y[out] >= np.uint64(self.n)]
        return y.astype(np.int64)


@dataclasses.dataclass
class SampleIndex:
    doc_order: np.ndarray  # int32 document ids
    sample_start: Optional[np.ndarray]  # int64 [num_samples + 1] runs of doc_order; None: skip
    epochs: int

    @property
    def num_samples(self) -> int:
        if self.sample_start is None:
            return int(self.doc_order.shape[0])
        return int(self.sample_start.shape[0]) - 1

    def documents(self, sample: int) -> np.ndarray:
        """Document ids of a sample, in reading order."""
        if self.sample_start is None:
            return self.doc_order[sample : sample + 1]
        return self.doc_order[self.sample_start[sample] : self.sample_start[sample + 1]]

    def save(self, prefix: str) -> None:
        """Write ``{prefix}-doc_order.npy`` (and ``-sample_start.npy``), each atomically."""
        _atomic_save(prefix + "-doc_order.npy", self.doc_order)
        if self.sample_start is not None:
            _atomic_save(prefix + "-sample_start.npy", self.sample_start)

    @classmethod
    def load(cls, prefix: str, packed: bool, epochs: int = -1) -> "SampleIndex":
        """Memory-map a saved index."""
        doc_order = np.load(prefix + "-doc_order.npy", mmap_mode="r")
        starts = np.load(prefix + "-sample_start.npy", mmap_mode="r") if packed else None
        return cls(doc_order, starts, epochs)


def _atomic_save(path: str, array: np.ndarray) -> None:
    from pose_megatron.publish import atomic_file

    with atomic_file(path, binary=True) as f:
        np.save(f, array, allow_pickle=False)


def _check(train_len: int, short_docs: str, num_samples: Optional[int]) -> None:
    if short_docs not in SHORT_DOCS:
        raise ValueError(f"short_docs must be one of {SHORT_DOCS}, got {short_docs!r}")
    if train_len < 1:
        raise ValueError(f"train_len must be >= 1, got {train_len}")
    if num_samples is not None and num_samples < 0:
        raise ValueError(f"num_samples must be >= 0 or None, got {num_samples}")


def _no_candidates(source: str, beg: int, end: int, train_len: int, short_docs: str) -> ValueError:
    if short_docs == "skip":
        return ValueError(
            f"{source}: no document in [{beg}, {end}) has at least train_len={train_len} tokens, "
            f"so short_docs='skip' cannot make a single PoSE sample; use short_docs='pack' or a "
            f"corpus of longer documents"
        )
    return ValueError(
        f"{source}: documents [{beg}, {end}) hold fewer than train_len={train_len} tokens in "
        f"total: not one PoSE sample can be packed"
    )


def build_numpy(
    lengths: np.ndarray,
    beg: int,
    end: int,
    train_len: int,
    num_samples: Optional[int],
    seed: int,
    short_docs: str = "skip",
    *,
    source: str = "<lengths>",
) -> SampleIndex:
    """The reference index over documents ``[beg, end)``; ``num_samples=None``: one epoch."""
    _check(train_len, short_docs, num_samples)
    lengths = np.asarray(lengths)
    if not 0 <= beg <= end <= lengths.shape[0]:
        raise ValueError(f"{source}: document range [{beg}, {end}) outside [0, {lengths.shape[0]})")
    pack = short_docs == "pack"
    window = lengths[beg:end]
    cand = (np.flatnonzero(window > 0 if pack else window >= train_len) + beg).astype(np.int32)
    m = cand.shape[0]
    if m == 0 or (pack and int(window.sum(dtype=np.int64)) < train_len):
        raise _no_candidates(source, beg, end, train_len, short_docs)

    def epoch_order(e: int, count: int) -> np.ndarray:
        perm = Permutation(m, seed, e)
        out = np.empty(count, dtype=np.int32)
        for lo in range(0, count, _BLOCK):
            hi = min(count, lo + _BLOCK)
            out[lo:hi] = cand[perm(np.arange(lo, hi, dtype=np.uint64))]
        return out

    if not pack:
        total = m if num_samples is None else num_samples
        epochs = -(-total // m)
        parts = [epoch_order(e, min(m, total - e * m)) for e in range(epochs)]
        doc_order = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return SampleIndex(doc_order, None, epochs)

    if num_samples == 0:
        return SampleIndex(np.zeros(0, np.int32), np.zeros(1, np.int64), 0)
    orders, starts, base, epochs = [], [np.zeros(1, np.int64)], 0, 0
    have = 0
    while True:
        order = epoch_order(epochs, m)
        epochs += 1
        # A pack closes at the first document where the running sum since the last close reaches
        # train_len; the reset makes it a sequential scan, done pack by pack with searchsorted.
        cum = np.cumsum(lengths[order], dtype=np.int64)
        ends, done_at = [], 0
        while True:
            reached = (cum[done_at - 1] if done_at else 0) + train_len
            k = int(np.searchsorted(cum, reached, side="left"))
            if k >= m:
                break
            done_at = k + 1
            ends.append(done_at)
            if num_samples is not None and have + len(ends) == num_samples:
                break
        kept = ends[-1] if ends else 0
        orders.append(order[:kept])
        starts.append(base + np.asarray(ends, dtype=np.int64))
        base += kept
        have += len(ends)
        if num_samples is None or have == num_samples:
            break
    return SampleIndex(np.concatenate(orders), np.concatenate(starts), epochs)


def build_cpp(
    lengths_or_idx,
    beg: int,
    end: int,
    train_len: int,
    num_samples: Optional[int],
    seed: int,
    short_docs: str = "skip",
    *,
    threads: int = 0,
    source: Optional[str] = None,
) -> SampleIndex:
    """The C++ builder; ``lengths_or_idx`` is an int32 array or the path of a Megatron ``.idx``."""
    if _cpp is None:
        raise RuntimeError(
            "pose_megatron._sample_index is not built: run `python setup.py build_ext --inplace` "
            "(or use the NumPy builder)"
        )
    _check(train_len, short_docs, num_samples)
    pack = short_docs == "pack"
    want = -1 if num_samples is None else int(num_samples)
    if isinstance(lengths_or_idx, (str, os.PathLike)):
        source = source or os.fspath(lengths_or_idx)
        doc_order, starts, epochs = _cpp.build_from_idx(
            os.fspath(lengths_or_idx), beg, end, train_len, want, seed & _MASK64, pack, threads)
    else:
        source = source or "<lengths>"
        lengths = np.ascontiguousarray(lengths_or_idx, dtype=np.int32)
        doc_order, starts, epochs = _cpp.build_from_lengths(
            lengths, beg, end, train_len, want, seed & _MASK64, pack, threads)
    if want != 0 and (doc_order.shape[0] == 0 or (pack and starts.shape[0] <= 1)):
        raise _no_candidates(source, beg, end, train_len, short_docs)
    return SampleIndex(doc_order, starts, int(epochs))


def build(lengths, beg, end, train_len, num_samples, seed, short_docs="skip", *,
          backend: str = "auto", threads: int = 0, source: str = "<lengths>") -> SampleIndex:
    """Build with the C++ builder when it is built (``backend='auto'``), else NumPy."""
    if backend not in ("auto", "cpp", "numpy"):
        raise ValueError(f"backend must be auto, cpp or numpy, got {backend!r}")
    if backend == "cpp" or (backend == "auto" and _cpp is not None):
        return build_cpp(lengths, beg, end, train_len, num_samples, seed, short_docs,
                         threads=threads, source=source)
    return build_numpy(lengths, beg, end, train_len, num_samples, seed, short_docs, source=source)
