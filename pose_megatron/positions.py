"""PoSE position ids: which document tokens a training sample holds and which positions they get.

A PoSE sample of ``train_len`` tokens is cut into chunks. Chunk ``i`` (length ``l_i``, starting at
``st_i = l_0 + ... + l_{i-1}`` inside the sample) takes the document tokens
``[v_i + st_i, v_i + st_i + l_i)`` and the positions ``u_i + st_i .. u_i + st_i + l_i - 1``, with
non-decreasing skip biases ``u_0 = 0 <= u_1 <= ... <= target_len - train_len``, so every position
is below ``target_len`` and positions are contiguous inside a chunk.

Schemes:
  reference  ``train_preprocess_function_pose`` of the PoSE authors' ``src/train_pose.py``
             (the default), for a document of ``len`` tokens truncated to ``max_doc_len``
             (default ``5 * train_len``, as that code), with ``c = min(len, train_len)`` sample tokens: two chunks,
             ``l_0 ~ U{1..floor((c+1)/2)}``, ``l_1 = c - l_0``; chunk 0 is ``x[0:l_0]`` at
             positions ``0..l_0-1`` (BOS stays at 0); chunk 1 is ``x[e-l_1:e]`` with
             ``e ~ U{c..len}`` (``content_offset="random"``) at positions shifted by
             ``u_1 ~ U{0..target-c}``. A document shorter than ``train_len`` (``c = len``) thus
             keeps its whole content and chunk 0's positions, and only the rest is shifted.
  uniform    the paper's general form: N chunks whose lengths are a uniformly random composition
             of ``c`` into N positive parts (N-1 distinct cut points drawn uniformly from
             1..c-1), ``u_i ~ U{u_{i-1}..target-c}``; ``u_0 = 0`` keeps the first token (BOS)
             at position 0 as the reference does. Short documents get ``min(N, len)`` chunks.
  full       positions 0..n-1 (plain or full-length training; ``target_len`` only validated).
  randpos    the RandPos baseline: n distinct positions drawn from range(target_len), sorted, on
             contiguous content.

Content offsets (``v_i``): ``random`` (``v_0 = 0``, ``v_i ~ U{v_{i-1}..len-train}``, independent of
``u``; the reference), ``zero`` (contiguous content), ``equal_u`` (``v_i = min(u_i, len-train)``: the
content skips exactly as the positions do, as far as the document allows).

Randomness is stateless: every draw is a 64-bit hash (splitmix64) of (seed, stream, sample index),
so sample ``k`` is the same on any rank, in any worker, before or after a resume, and a batch is
generated with a handful of vectorised NumPy passes. A bounded integer ``U{lo..hi}`` is
``lo + h mod (hi - lo + 1)``; its bias is below ``(hi - lo + 1) / 2**64``, i.e. nil in practice.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Optional, Sequence

import numpy as np

try:  # one-pass C++ fill; NumPy (np.repeat) does the same in several passes
    from pose_megatron import _positions as _native
except ImportError:  # pragma: no cover - extension not built
    _native = None

SCHEMES = ("reference", "uniform", "full", "randpos")
# The authors' ``train_preprocess_function_pose`` tokenizes with ``max_length =
# model_max_position_embeddings * 5``: a document is cut to 5 training windows before chunk 1's
# content end is drawn. The authors answered (their pull request #13, closed unmerged) that this
# bound is deliberate, a cheaper stand-in for the target length.
REFERENCE_DOC_WINDOWS = 5
CONTENT_OFFSETS = ("random", "zero", "equal_u")
SHORT_DOCS = ("skip", "pack")

# Independent random streams: one per kind of draw and per chunk.
_STREAM_CUT = 1_000
_STREAM_SKIP = 2_000
_STREAM_CONTENT = 3_000
_STREAM_RANDPOS = 5_000

_U64 = np.uint64
_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # uint64 arithmetic wraps modulo 2**64 in NumPy arrays, which is what the mixer needs.
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _stream_key(seed: int, stream: int) -> np.ndarray:
    return _splitmix64(np.array([(seed * 0x2545F4914F6CDD1D + stream) & _MASK64], dtype=np.uint64))


def random_u64(seed: int, stream: int, index: np.ndarray) -> np.ndarray:
    """64-bit hash of (seed, stream, index) for every entry of ``index`` (uint64)."""
    index = np.asarray(index, dtype=np.uint64)
    return _splitmix64(_splitmix64(index) ^ _stream_key(seed, stream))


def randint_inclusive(seed: int, stream: int, index: np.ndarray, lo, hi) -> np.ndarray:
    """Draw ``U{lo..hi}`` (inclusive, arrays broadcast with ``index``) as int64."""
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    if np.any(hi < lo):
        raise ValueError("empty range in randint_inclusive")
    span = (hi - lo + 1).astype(np.uint64)
    return lo + (random_u64(seed, stream, index) % span).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Chunk:
    src_start: int  # first document token of the chunk
    length: int
    pos_start: int  # position id of its first token


@dataclasses.dataclass(frozen=True)
class PoSESample:
    position_ids: np.ndarray  # int64 [n]
    chunks: tuple  # of Chunk, in sample order

    @property
    def token_index(self) -> np.ndarray:
        """Index into the document of every sample token (int64 [n])."""
        if not self.chunks:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(
            [np.arange(c.src_start, c.src_start + c.length, dtype=np.int64) for c in self.chunks]
        )


@dataclasses.dataclass(frozen=True)
class PoSEBatch:
    """Samples of one length, with their chunk tables ``[B, N]``."""

    position_ids: np.ndarray  # int64 [B, L]
    src_start: np.ndarray  # int64 [B, N]
    length: np.ndarray  # int64 [B, N]
    pos_start: np.ndarray  # int64 [B, N]

    @property
    def token_index(self) -> np.ndarray:
        """Index into each sample's document of every token (int64 [B, L])."""
        return _fill_ranges(self.src_start, self.length, self.position_ids.shape[1])


# ----------------------------------------------------------------------------------------------
# Validation


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def validate(
    train_len, target_len, *, num_chunks=2, scheme="reference", content_offset="random",
    seed=0, max_doc_len=None,
) -> None:
    """Raise a clear ``ValueError``/``TypeError`` for a bad PoSE configuration."""
    train_len = _check_int("train_len", train_len, 1)
    target_len = _check_int("target_len", target_len, 1)
    if train_len > target_len:
        raise ValueError(
            f"train_len ({train_len}) must be <= target_len ({target_len}): PoSE trains on a "
            f"short window to reach a longer one"
        )
    num_chunks = _check_int("num_chunks", num_chunks, 1)
    if num_chunks > train_len:
        raise ValueError(f"num_chunks ({num_chunks}) must be <= train_len ({train_len})")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    if scheme == "reference" and num_chunks != 2:
        raise ValueError(
            f"scheme='reference' is the PoSE authors' code, which always uses 2 chunks "
            f"(got num_chunks={num_chunks}); use scheme='uniform' for N chunks"
        )
    if content_offset not in CONTENT_OFFSETS:
        raise ValueError(
            f"unknown content_offset {content_offset!r}; expected one of {CONTENT_OFFSETS}"
        )
    seed = _check_int("seed", seed, 0)
    if seed > _MASK64:
        raise ValueError(f"seed must be below 2**64, got {seed}")
    if max_doc_len is not None:
        _check_int("max_doc_len", max_doc_len, train_len)


def default_max_doc_len(train_len: int, target_len: int, scheme: str) -> int:
    """Where a document is cut before a sample is drawn from it, unless ``max_doc_len`` says.

    The reference scheme cuts at ``REFERENCE_DOC_WINDOWS * train_len`` as the authors' code does;
    the other schemes at ``target_len`` (content beyond it could not be placed at its distance).
    """
    return REFERENCE_DOC_WINDOWS * train_len if scheme == "reference" else target_len


@dataclasses.dataclass(frozen=True)
class PoseSettings:
    """A run's PoSE sampling, validated once; every consumer (the dataset, the synthetic dataset,
    the training loop, the Megatron-LM helpers) takes this instead of loose keywords.

    ``seed`` is the run's data seed (Megatron's ``random_seed``): it drives the sample index and
    every positional draw. ``short_docs`` says what happens to documents shorter than
    ``train_len``: ``skip`` (the paper) or ``pack`` consecutive ones.
    """

    train_len: int
    target_len: int
    num_chunks: int = 2
    scheme: str = "reference"
    content_offset: str = "random"
    seed: int = 0
    max_doc_len: Optional[int] = None
    short_docs: str = "skip"

    def __post_init__(self) -> None:
        validate(self.train_len, self.target_len, num_chunks=self.num_chunks, scheme=self.scheme,
                 content_offset=self.content_offset, seed=self.seed, max_doc_len=self.max_doc_len)
        if self.short_docs not in SHORT_DOCS:
            raise ValueError(f"short_docs must be one of {SHORT_DOCS}, got {self.short_docs!r}")
        for name in ("train_len", "target_len", "num_chunks", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @classmethod
    def from_flags(cls, args, *, seed: Optional[int] = None) -> "PoseSettings":
        """From the ``--pose-*`` flags (``pose_megatron.train``'s or Megatron-LM's namespace,
        where ``add_pose_arguments`` defined them) and ``--seed``."""
        return cls(train_len=args.pose_train_len, target_len=args.pose_target_len,
                   num_chunks=args.pose_num_chunks, scheme=args.pose_scheme,
                   content_offset=args.pose_content_offset,
                   seed=args.seed if seed is None else seed, max_doc_len=args.pose_max_doc_len,
                   short_docs=args.pose_short_docs)

    @property
    def synthetic_doc_len(self) -> int:
        """The document length of the synthetic data: the reference's cut, bounded by the
        target (longer content could not be placed at its distance)."""
        return max(self.train_len, min(self.target_len, REFERENCE_DOC_WINDOWS * self.train_len))

    def sample(self, index: int, doc_len: Optional[int] = None) -> "PoSESample":
        """Sample ``index`` of the run (``pose_position_ids``)."""
        return pose_position_ids(
            self.train_len, self.target_len, doc_len=doc_len, num_chunks=self.num_chunks,
            scheme=self.scheme, content_offset=self.content_offset, seed=self.seed, index=index,
            max_doc_len=self.max_doc_len)

    def batch(self, indices, doc_lens=None) -> "PoSEBatch":
        """Samples ``indices`` of the run at once (``pose_position_ids_batch``)."""
        return pose_position_ids_batch(
            self.train_len, self.target_len, indices, doc_lens=doc_lens,
            num_chunks=self.num_chunks, scheme=self.scheme, content_offset=self.content_offset,
            seed=self.seed, max_doc_len=self.max_doc_len)


# ----------------------------------------------------------------------------------------------
# Generation


def _fill_per_chunk(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[B, L] array holding ``values[b, i]`` over the ``lengths[b, i]`` tokens of chunk i."""
    batch = values.shape[0]
    total = int(lengths[0].sum()) if batch else 0
    return np.repeat(values.ravel(), lengths.ravel()).reshape(batch, total)


def _fill_ranges(starts: np.ndarray, lengths: np.ndarray, row_len: int,
                 use_native: Optional[bool] = None) -> np.ndarray:
    """[B, L] array whose row b runs ``starts[b, i] .. starts[b, i] + lengths[b, i] - 1`` per chunk."""
    if (_native is not None) if use_native is None else use_native:
        return _native.fill_chunk_ranges(np.ascontiguousarray(starts, np.int64),
                                         np.ascontiguousarray(lengths, np.int64), row_len, 2)
    within_sample = np.cumsum(lengths, axis=1) - lengths
    out = _fill_per_chunk(starts - within_sample, lengths)
    out += np.arange(row_len, dtype=np.int64)
    return out


def _chunk_lengths(scheme, train_len, num_chunks, seed, idx) -> np.ndarray:
    batch = idx.shape[0]
    if scheme == "reference":
        first = randint_inclusive(seed, _STREAM_CUT, idx, 1, (train_len + 1) // 2)
        return np.stack([first, train_len - first], axis=1)
    if num_chunks == 1:
        return np.full((batch, 1), train_len, dtype=np.int64)
    # Floyd's algorithm: num_chunks-1 distinct cut points, uniform over subsets of 1..train_len-1.
    top = train_len - 1
    picks = num_chunks - 1
    cuts = np.empty((batch, picks), dtype=np.int64)
    for col, j in enumerate(range(top - picks + 1, top + 1)):
        t = randint_inclusive(seed, _STREAM_CUT + col, idx, 1, j)
        seen = (cuts[:, :col] == t[:, None]).any(axis=1) if col else np.zeros(batch, bool)
        cuts[:, col] = np.where(seen, j, t)
    cuts.sort(axis=1)
    bounds = np.concatenate(
        [np.zeros((batch, 1), np.int64), cuts, np.full((batch, 1), train_len, np.int64)], axis=1
    )
    return np.diff(bounds, axis=1)


def _monotone_draws(seed, stream, idx, num_chunks, upper) -> np.ndarray:
    """x_0 = 0, x_i ~ U{x_{i-1}..upper} (upper broadcast per sample)."""
    out = np.zeros((idx.shape[0], num_chunks), dtype=np.int64)
    for i in range(1, num_chunks):
        out[:, i] = randint_inclusive(seed, stream + i, idx, out[:, i - 1], upper)
    return out


def _validate_batch(train_len, target_len, indices, doc_lens, max_doc_len, scheme):
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
        raise ValueError("sample indices must be >= 0")
    if doc_lens is None:
        doc = np.full(idx.shape[0], train_len, dtype=np.int64)
    else:
        doc = np.asarray(doc_lens, dtype=np.int64).reshape(-1)
        if doc.shape != idx.shape:
            raise ValueError(f"doc_lens has {doc.shape[0]} entries for {idx.shape[0]} indices")
        if doc.size and doc.min() < train_len:
            bad = int(np.argmin(doc))
            raise ValueError(
                f"document of sample {int(idx[bad])} has {int(doc[bad])} tokens < train_len "
                f"{train_len}; use pose_position_ids() for short documents"
            )
    if max_doc_len is None:
        max_doc_len = default_max_doc_len(train_len, target_len, scheme)
    return idx, np.minimum(doc, max_doc_len)


def _chunk_tables(train_len, target_len, idx, doc, num_chunks, scheme, content_offset, seed):
    """(src_start, length, pos_start), each [B, N], for the chunked schemes and ``full``."""
    batch = idx.shape[0]
    if scheme == "full":
        zeros = np.zeros((batch, 1), np.int64)
        return zeros, np.full((batch, 1), train_len, np.int64), zeros.copy()
    uidx = idx.astype(np.uint64)
    n = 2 if scheme == "reference" else num_chunks
    lengths = _chunk_lengths(scheme, train_len, n, seed, uidx)
    starts = np.cumsum(lengths, axis=1) - lengths
    skips = _monotone_draws(seed, _STREAM_SKIP, uidx, n, target_len - train_len)
    slack = doc - train_len
    if content_offset == "random":
        offsets = _monotone_draws(seed, _STREAM_CONTENT, uidx, n, slack)
    elif content_offset == "zero":
        offsets = np.zeros_like(skips)
    else:
        offsets = np.minimum(skips, slack[:, None])
    return offsets + starts, lengths, skips + starts


def pose_position_ids_batch(
    train_len: int,
    target_len: int,
    indices: Sequence[int] | np.ndarray,
    *,
    doc_lens: Optional[Sequence[int] | np.ndarray] = None,
    num_chunks: int = 2,
    scheme: str = "reference",
    content_offset: str = "random",
    seed: int = 0,
    max_doc_len: Optional[int] = None,
) -> PoSEBatch:
    """PoSE samples ``indices`` (global sample numbers) for documents of at least ``train_len``.

    ``doc_lens[b]`` is the length of sample b's document (default: exactly ``train_len``, i.e.
    contiguous content); documents are truncated to ``max_doc_len`` tokens (default
    ``default_max_doc_len``, see ``pose_position_ids``). Documents shorter than ``train_len`` need
    ``pose_position_ids``, which returns shorter samples. ``randpos`` describes each token as its
    own chunk.
    """
    validate(train_len, target_len, num_chunks=num_chunks, scheme=scheme,
             content_offset=content_offset, seed=seed, max_doc_len=max_doc_len)
    idx, doc = _validate_batch(train_len, target_len, indices, doc_lens, max_doc_len, scheme)
    batch = idx.shape[0]
    if scheme == "randpos":
        positions = np.stack([_randpos(seed, int(i), train_len, target_len) for i in idx]) \
            if batch else np.zeros((0, train_len), np.int64)
        return PoSEBatch(positions,
                         np.broadcast_to(np.arange(train_len), (batch, train_len)).copy(),
                         np.ones((batch, train_len), np.int64), positions.copy())
    src, lengths, pos = _chunk_tables(train_len, target_len, idx, doc, num_chunks, scheme,
                                      content_offset, seed)
    return PoSEBatch(_fill_ranges(pos, lengths, train_len), src, lengths, pos)


def _randpos(seed: int, index: int, n: int, target_len: int) -> np.ndarray:
    # n smallest of target_len hash keys: a uniformly random n-subset, independent of NumPy's RNG.
    keys = random_u64(seed, _STREAM_RANDPOS,
                      np.uint64(index) * np.uint64(target_len) + np.arange(target_len, dtype=np.uint64))
    chosen = np.argpartition(keys, n - 1)[:n] if n < target_len else np.arange(target_len)
    return np.sort(chosen).astype(np.int64)


def _runs(positions: np.ndarray, src_start: int = 0) -> tuple:
    """Maximal runs of consecutive positions over contiguous content, as chunks."""
    if positions.size == 0:
        return ()
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    bounds = np.concatenate([[0], breaks, [positions.size]])
    return tuple(
        Chunk(src_start + int(a), int(b - a), int(positions[a])) for a, b in zip(bounds[:-1], bounds[1:])
    )


def pose_position_ids(
    train_len: int,
    target_len: int,
    *,
    doc_len: Optional[int] = None,
    num_chunks: int = 2,
    scheme: str = "reference",
    content_offset: str = "random",
    seed: int = 0,
    index: int = 0,
    max_doc_len: Optional[int] = None,
) -> PoSESample:
    """The PoSE sample number ``index`` of a run: position ids and the chunks they come from.

    ``doc_len`` is the length of the document the sample is cut from (default ``train_len``).
    The sample has ``min(train_len, doc_len)`` tokens. The document is first truncated to
    ``max_doc_len`` tokens, by default ``default_max_doc_len``: ``5 * train_len`` for the
    reference scheme, as the authors' code (``max_length=model_max_position_embeddings*5``);
    pass ``max_doc_len=target_len`` for the target-length cut that their repository's unmerged
    pull request #13 proposed. It only bounds where chunk 1's content may end.
    """
    validate(train_len, target_len, num_chunks=num_chunks, scheme=scheme,
             content_offset=content_offset, seed=seed, max_doc_len=max_doc_len)
    index = _check_int("index", index, 0)
    doc_len = train_len if doc_len is None else _check_int("doc_len", doc_len, 1)
    n = min(train_len, doc_len)

    if scheme == "full" or (scheme == "randpos" and n == target_len):
        positions = np.arange(n, dtype=np.int64)
        return PoSESample(positions, (Chunk(0, n, 0),))
    if scheme == "randpos":
        positions = _randpos(seed, index, n, target_len)
        return PoSESample(positions, _runs(positions))
    if doc_len < train_len:
        # The reference runs its two-chunk code with the document's length in place of
        # train_len: the content stays whole (e ~ U{len..len}), chunk 0 keeps positions from 0
        # and only chunk 1 is shifted, by u_1 ~ U{0..target-len}.
        idx = np.array([index], np.int64)
        src, lengths, pos = _chunk_tables(n, target_len, idx, np.array([n], np.int64),
                                          min(num_chunks, n), scheme, content_offset, seed)
        chunks = tuple(Chunk(int(a), int(b), int(c))
                       for a, b, c in zip(src[0], lengths[0], pos[0]) if b > 0)
        return PoSESample(_fill_ranges(pos, lengths, n, use_native=False)[0], chunks)

    batch = pose_position_ids_batch(
        train_len, target_len, [index], doc_lens=[doc_len], num_chunks=num_chunks, scheme=scheme,
        content_offset=content_offset, seed=seed, max_doc_len=max_doc_len,
    )
    chunks = tuple(
        Chunk(int(s), int(l), int(p))
        for s, l, p in zip(batch.src_start[0], batch.length[0], batch.pos_start[0])
    )
    return PoSESample(batch.position_ids[0], chunks)


# ----------------------------------------------------------------------------------------------
# Coverage: how often each relative distance and each absolute position is trained.


def coverage(
    train_len: int,
    target_len: int,
    samples: int,
    *,
    num_chunks: int = 2,
    scheme: str = "reference",
    seed: int = 0,
    batch_size: int = 8192,
    progress: bool = False,
):
    """Counts over ``samples`` samples: (distance_counts[d], position_counts[p]) for d, p < target.

    ``distance_counts[d]`` is the number of (query, key) token pairs at relative distance d >= 1
    that causal attention sees; it is exact, computed from the chunk tables with second
    differences (each pair of chunks contributes a trapezoid), so 10^5 samples take seconds.
    """
    validate(train_len, target_len, num_chunks=num_chunks, scheme=scheme, seed=seed)
    if scheme == "randpos":
        raise ValueError("coverage() supports the chunked schemes (reference, uniform, full)")
    size = target_len + 2 * train_len + 4
    second_diff = np.zeros(size, dtype=np.int64)
    first_diff = np.zeros(size, dtype=np.int64)
    starts = range(0, samples, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="coverage", unit="batch")
    for start in starts:
        idx = np.arange(start, min(start + batch_size, samples))
        _, lens, pos = _chunk_tables(train_len, target_len, idx,
                                     np.full(idx.shape, train_len, np.int64), num_chunks, scheme,
                                     "zero", seed)
        first_diff += np.bincount(pos.ravel(), lens.ravel() > 0, size)[:size].astype(np.int64)
        first_diff -= np.bincount((pos + lens).ravel(), lens.ravel() > 0, size).astype(np.int64)
        n = lens.shape[1]
        for i in range(n):
            li = lens[:, i]
            # Pairs inside chunk i: count(d) = li - d for 1 <= d < li.
            second_diff += np.bincount(np.ones_like(li), li - 1, size).astype(np.int64)
            second_diff -= np.bincount(np.full_like(li, 2), li, size).astype(np.int64)
            second_diff += np.bincount(li + 1, None, size).astype(np.int64)
            for j in range(i + 1, n):
                lj = lens[:, j]
                live = (li > 0) & (lj > 0)
                s = pos[:, j] - (pos[:, i] + li - 1)
                for where, sign in ((s, 1), (s + li, -1), (s + lj, -1), (s + li + lj, 1)):
                    second_diff += sign * np.bincount(where[live], None, size).astype(np.int64)
    distance = np.cumsum(np.cumsum(second_diff))[:target_len]
    distance[0] = 0
    position = np.cumsum(first_diff)[:target_len]
    return distance, position


def _summary(name: str, counts: np.ndarray, first: int) -> str:
    part = counts[first:]
    seen = np.count_nonzero(part)
    lines = [
        f"{name}: {seen}/{part.size} covered ({100.0 * seen / part.size:.2f}%), "
        f"count min {part.min()} median {int(np.median(part))} max {part.max()}, "
        f"coefficient of variation {part.std() / max(part.mean(), 1e-12):.3f}"
    ]
    edges = np.linspace(first, counts.size, 11).astype(int)
    mean = part.mean()
    cells = [f"[{a},{b}) {counts[a:b].mean() / mean:.2f}" for a, b in zip(edges[:-1], edges[1:])]
    lines.append("  share of mean count per tenth: " + "  ".join(cells))
    return "\n".join(lines)


def plot_coverage(distance: np.ndarray, position: np.ndarray, path: str, title: str) -> bool:
    """Write the coverage histograms to ``path``; False when matplotlib is missing (skipped)."""
    from pose_megatron.eval.plots import pyplot, save

    plt = pyplot(path)
    if plt is None:
        return False
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5))
    axes[0].plot(np.arange(1, distance.size), np.maximum(distance[1:], 0.5), lw=0.6)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("relative distance")
    axes[0].set_ylabel("token pairs trained")
    axes[1].plot(np.arange(position.size), np.maximum(position, 0.5), lw=0.6, color="tab:orange")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("absolute position")
    axes[1].set_ylabel("tokens trained")
    fig.suptitle(title)
    save(fig, path)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pose_megatron.positions",
        description="Generate PoSE position ids and report how uniformly they cover the target "
        "window: relative distances 1..target-1 and absolute positions 0..target-1.",
    )
    parser.add_argument("--train-len", type=int, default=2048,
                        help="training window L_train in tokens (default 2048)")
    parser.add_argument("--target-len", type=int, default=16384,
                        help="target context length L_target; every position is below it")
    parser.add_argument("--samples", type=int, default=10000, help="number of samples to draw")
    parser.add_argument("--num-chunks", type=int, default=2,
                        help="chunks per sample (the reference scheme requires 2)")
    parser.add_argument("--scheme", choices=SCHEMES, default="reference",
                        help="position scheme: reference (PoSE authors' code), uniform (paper's "
                        "N-chunk form), full (0..L-1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stateless generator")
    parser.add_argument("--show", type=int, default=3,
                        help="print the chunk tables of the first SHOW samples")
    parser.add_argument("--plot", metavar="PNG", default=None,
                        help="write histograms of distance and position coverage to this PNG")
    args = parser.parse_args(argv)
    try:
        validate(args.train_len, args.target_len, num_chunks=args.num_chunks, scheme=args.scheme,
                 seed=args.seed)
        if args.samples < 1:
            raise ValueError("--samples must be >= 1")
    except (TypeError, ValueError) as err:
        parser.error(str(err))

    for k in range(min(args.show, args.samples)):
        s = pose_position_ids(args.train_len, args.target_len, num_chunks=args.num_chunks,
                              scheme=args.scheme, seed=args.seed, index=k)
        table = ", ".join(f"positions {c.pos_start}..{c.pos_start + c.length - 1}"
                          for c in s.chunks)
        print(f"sample {k}: {table}")
    distance, position = coverage(args.train_len, args.target_len, args.samples,
                                  num_chunks=args.num_chunks, scheme=args.scheme, seed=args.seed,
                                  progress=sys.stderr.isatty())
    print(f"{args.samples} samples, train {args.train_len} -> target {args.target_len}, "
          f"scheme {args.scheme}, {args.num_chunks} chunks")
    print(_summary("relative distances 1..target-1", distance, 1))
    print(_summary("absolute positions 0..target-1", position, 0))
    if args.plot:
        if plot_coverage(distance, position, args.plot,
                         f"PoSE {args.scheme}: {args.train_len} -> {args.target_len}, "
                         f"{args.samples} samples"):
            print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
