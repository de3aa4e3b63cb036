"""The C++ sample index builder equals the NumPy reference exactly, and both mean what they say."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pose_megatron.data import sample_index as si

needs_cpp = pytest.mark.skipif(not si.cpp_available(),
                               reason="pose_megatron._sample_index not built (setup.py build_ext)")


def _heavy_tailed(rng, n, scale):
    # Pareto-like lengths with zeros and many short documents, like real corpora.
    return np.minimum(rng.pareto(1.1, n) * scale, 1 << 20).astype(np.int32)


@st.composite
def corpora(draw):
    n = draw(st.integers(0, 400))
    seed = draw(st.integers(0, 2**32 - 1))
    lengths = _heavy_tailed(np.random.default_rng(seed), n, draw(st.sampled_from([3, 50, 400])))
    beg = draw(st.integers(0, n))
    end = draw(st.integers(beg, n))
    return lengths, beg, end


def _build_both(lengths, beg, end, train_len, num_samples, seed, short_docs):
    out = []
    for fn in (si.build_numpy, si.build_cpp):
        try:
            out.append(fn(lengths, beg, end, train_len, num_samples, seed, short_docs))
        except ValueError as err:
            out.append(err)
    return out


@needs_cpp
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus=corpora(), train_len=st.integers(1, 700),
       num_samples=st.one_of(st.none(), st.integers(1, 3000)),
       seed=st.integers(0, 2**64 - 1), short_docs=st.sampled_from(["skip", "pack"]))
def test_cpp_equals_numpy(corpus, train_len, num_samples, seed, short_docs):
    lengths, beg, end = corpus
    ref, cpp = _build_both(lengths, beg, end, train_len, num_samples, seed, short_docs)
    if isinstance(ref, ValueError):
        assert isinstance(cpp, ValueError) and str(cpp) == str(ref)
        return
    assert not isinstance(cpp, Exception), cpp
    assert cpp.epochs == ref.epochs
    assert cpp.doc_order.dtype == np.int32 and ref.doc_order.dtype == np.int32
    np.testing.assert_array_equal(cpp.doc_order, ref.doc_order)
    if short_docs == "pack":
        np.testing.assert_array_equal(cpp.sample_start, ref.sample_start)
    else:
        assert cpp.sample_start is None and ref.sample_start is None
    if num_samples is not None:
        assert ref.num_samples == num_samples


@needs_cpp
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 17, 64, 65, 1000, 4097, 70001])
def test_permutation_is_a_bijection_equal_in_both(n):
    from pose_megatron import _sample_index

    ref = si.Permutation(n, seed=11, epoch=2)(np.arange(n))
    np.testing.assert_array_equal(_sample_index.permutation(n, 11, 2), ref)
    np.testing.assert_array_equal(np.sort(ref), np.arange(n))


def test_permutation_depends_on_seed_and_epoch():
    base = si.Permutation(1000, 1, 0)(np.arange(1000))
    assert (base != np.arange(1000)).mean() > 0.99
    assert (si.Permutation(1000, 2, 0)(np.arange(1000)) != base).mean() > 0.99
    assert (si.Permutation(1000, 1, 1)(np.arange(1000)) != base).mean() > 0.99


def test_skip_visits_each_long_document_once_per_epoch():
    lengths = np.array([5, 600, 0, 512, 511, 9000, 700, 3], dtype=np.int32)
    index = si.build_numpy(lengths, 0, 8, 512, 10, seed=4, short_docs="skip")
    long_docs = [1, 3, 5, 6]
    assert index.epochs == 3
    assert sorted(index.doc_order[:4]) == long_docs
    assert sorted(index.doc_order[4:8]) == long_docs
    assert set(index.doc_order[8:]) <= set(long_docs) and len(index.doc_order) == 10
    # A different epoch is a different order (4! orders, so compare over many seeds).
    diffs = sum(
        list(si.build_numpy(lengths, 0, 8, 512, 8, s, "skip").doc_order[:4])
        != list(si.build_numpy(lengths, 0, 8, 512, 8, s, "skip").doc_order[4:])
        for s in range(20))
    assert diffs >= 15


def test_skip_respects_the_split_range():
    lengths = np.full(100, 1000, dtype=np.int32)
    index = si.build_numpy(lengths, 30, 60, 512, None, seed=0, short_docs="skip")
    np.testing.assert_array_equal(np.sort(index.doc_order), np.arange(30, 60))


def test_pack_closes_at_train_len_and_drops_the_epoch_tail():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 300, 500).astype(np.int32)
    train_len = 700
    index = si.build_numpy(lengths, 0, 500, train_len, None, seed=9, short_docs="pack")
    assert index.epochs == 1
    used = []
    for s in range(index.num_samples):
        docs = index.documents(s)
        sizes = lengths[docs]
        assert sizes.sum() >= train_len > sizes[:-1].sum()  # closes at the first doc reaching L
        assert (sizes > 0).all()
        used.extend(docs.tolist())
    assert len(used) == len(set(used))  # one epoch: no document twice
    nonempty = int((lengths > 0).sum())
    leftover = sorted(set(np.flatnonzero(lengths > 0)) - set(used))
    assert len(used) + len(leftover) == nonempty
    assert lengths[leftover].sum() < train_len  # only the unfinished last pack is dropped


def test_pack_repeats_epochs_for_more_samples():
    lengths = np.array([100, 200, 300, 400, 900], dtype=np.int32)
    index = si.build_numpy(lengths, 0, 5, 500, 7, seed=1, short_docs="pack")
    assert index.num_samples == 7 and index.epochs >= 3
    for s in range(7):
        assert lengths[index.documents(s)].sum() >= 500


def test_errors_name_the_source():
    lengths = np.array([10, 20, 30], dtype=np.int32)
    with pytest.raises(ValueError, match=r"corpus\.idx: no document .* train_len=512.*'pack'"):
        si.build_numpy(lengths, 0, 3, 512, 5, 0, "skip", source="corpus.idx")
    with pytest.raises(ValueError, match=r"corpus\.idx: .* fewer than train_len=512"):
        si.build_numpy(lengths, 0, 3, 512, 5, 0, "pack", source="corpus.idx")
    with pytest.raises(ValueError, match="short_docs"):
        si.build_numpy(lengths, 0, 3, 5, 5, 0, "truncate")


@needs_cpp
@pytest.mark.parametrize("short_docs", ["skip", "pack"])
def test_cpp_equals_numpy_on_many_blocks_threads_and_huge_pages(short_docs):
    # Large enough for several thread blocks (> 64k documents each) and for output arrays on
    # the builder's huge-page allocator (>= 2 MB); epochs end mid-way, so the partial last
    # epoch's skipped destinations are exercised too.
    lengths = np.minimum(np.random.default_rng(8).lognormal(np.log(450), 1.5, 600_000),
                         1 << 20).astype(np.int32)
    beg, end = 1_234, 598_765
    num_samples = 700_003 if short_docs == "skip" else 450_001
    ref = si.build_numpy(lengths, beg, end, 2048, num_samples, 2**63 + 5, short_docs)
    for threads in (1, 2, 3):
        cpp = si.build_cpp(lengths, beg, end, 2048, num_samples, 2**63 + 5, short_docs,
                           threads=threads)
        assert cpp.epochs == ref.epochs > 1
        np.testing.assert_array_equal(cpp.doc_order, ref.doc_order)
        if short_docs == "pack":
            np.testing.assert_array_equal(cpp.sample_start, ref.sample_start)


@needs_cpp
def test_cpp_reads_the_idx_file_directly(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(3)
    lengths = _heavy_tailed(rng, 3000, 300)
    prefix = str(tmp_path / "c")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for n in lengths:
        builder.add_document(np.zeros(n, np.uint16), [int(n)])
    builder.finalize(prefix + ".idx")
    for short_docs in ("skip", "pack"):
        a = si.build_cpp(prefix + ".idx", 100, 2900, 256, 5000, 77, short_docs)
        b = si.build_numpy(lengths, 100, 2900, 256, 5000, 77, short_docs)
        np.testing.assert_array_equal(a.doc_order, b.doc_order)
        if short_docs == "pack":
            np.testing.assert_array_equal(a.sample_start, b.sample_start)
    # A truncated .idx is refused with its name.
    bad = str(tmp_path / "bad.idx")
    with open(prefix + ".idx", "rb") as src, open(bad, "wb") as dst:
        dst.write(src.read()[:1000])
    with pytest.raises(RuntimeError, match="bad.idx: truncated"):
        si.build_cpp(bad, 0, 10, 256, 10, 0, "skip")


def test_save_and_load_round_trip(tmp_path):
    lengths = np.arange(1, 200, dtype=np.int32) * 7
    for short_docs in ("skip", "pack"):
        index = si.build_numpy(lengths, 0, 199, 300, 500, 5, short_docs)
        prefix = str(tmp_path / short_docs)
        index.save(prefix)
        loaded = si.SampleIndex.load(prefix, short_docs == "pack")
        assert loaded.num_samples == 500
        np.testing.assert_array_equal(loaded.doc_order, index.doc_order)
        assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
