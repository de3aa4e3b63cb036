"""Properties of the PoSE position-id generator against the reference semantics."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pose_megatron import positions as P
from pose_megatron.positions import pose_position_ids, pose_position_ids_batch


@st.composite
def configs(draw, schemes=("reference", "uniform", "full", "randpos")):
    scheme = draw(st.sampled_from(schemes))
    train = draw(st.integers(2 if scheme == "reference" else 1, 96))
    target = draw(st.integers(train, 4 * train + 64))
    chunks = 2 if scheme == "reference" else draw(st.integers(1, min(train, 6)))
    return dict(
        train_len=train, target_len=target, scheme=scheme, num_chunks=chunks,
        content_offset=draw(st.sampled_from(P.CONTENT_OFFSETS)),
        seed=draw(st.integers(0, 2**64 - 1)), index=draw(st.integers(0, 2**40)),
        doc_len=draw(st.one_of(st.none(), st.integers(1, 8 * train + 10))),
        max_doc_len=draw(st.sampled_from([None, train, 5 * train])),
    )


def _default_cut(cfg):
    # Restated, not imported: the authors' code cuts at 5 windows, the other schemes at the target.
    return 5 * cfg["train_len"] if cfg["scheme"] == "reference" else cfg["target_len"]


@settings(max_examples=400, deadline=None)
@given(configs())
def test_invariants(cfg):
    s = pose_position_ids(**cfg)
    train, target, doc = cfg["train_len"], cfg["target_len"], cfg["doc_len"]
    doc = train if doc is None else doc
    n = min(train, doc)
    pos = s.position_ids
    assert pos.dtype == np.int64 and pos.shape == (n,)
    assert pos.min() >= 0 and pos.max() < target
    assert np.all(np.diff(pos) > 0), "positions strictly increase"
    # The chunks tile the sample in order, with contiguous positions inside each chunk.
    assert sum(c.length for c in s.chunks) == n
    at = 0
    for c in s.chunks:
        np.testing.assert_array_equal(pos[at:at + c.length], c.pos_start + np.arange(c.length))
        at += c.length
    # Content comes from the (truncated) document, in order, without overlap.
    usable = min(doc, cfg["max_doc_len"] or _default_cut(cfg))
    tok = s.token_index
    assert tok.shape == (n,) and tok.min() >= 0 and tok.max() < usable
    assert np.all(np.diff(tok) > 0)
    # Same inputs, same sample: the generator is stateless.
    np.testing.assert_array_equal(pose_position_ids(**cfg).position_ids, pos)


@settings(max_examples=300, deadline=None)
@given(configs(schemes=("reference", "uniform")))
def test_chunked_scheme_rules(cfg):
    s = pose_position_ids(**cfg)
    train, target = cfg["train_len"], cfg["target_len"]
    doc = train if cfg["doc_len"] is None else cfg["doc_len"]
    if doc < train:
        # Short documents: whole content, chunk 0 from position 0, the rest shifted.
        np.testing.assert_array_equal(s.token_index, np.arange(doc))
        assert s.chunks[0].src_start == 0 and s.position_ids[0] == 0
        assert s.position_ids[-1] <= target - 1
        return
    usable = min(doc, cfg["max_doc_len"] or _default_cut(cfg))
    lengths = np.array([c.length for c in s.chunks])
    starts = np.cumsum(lengths) - lengths
    skips = np.array([c.pos_start for c in s.chunks]) - starts
    offsets = np.array([c.src_start for c in s.chunks]) - starts
    assert skips[0] == 0 and s.position_ids[0] == 0, "u_0 = 0 keeps BOS at position 0"
    assert np.all(np.diff(skips) >= 0) and skips[-1] <= target - train
    assert np.all(np.diff(offsets) >= 0) and offsets[0] == 0 and offsets[-1] <= usable - train
    if cfg["scheme"] == "reference":
        assert len(s.chunks) == 2 and 1 <= lengths[0] <= (train + 1) // 2
    else:
        assert len(s.chunks) == cfg["num_chunks"] and lengths.min() >= 1
    if cfg["content_offset"] == "zero":
        np.testing.assert_array_equal(offsets, 0)
    elif cfg["content_offset"] == "equal_u":
        np.testing.assert_array_equal(offsets, np.minimum(skips, usable - train))


@settings(max_examples=100, deadline=None)
@given(configs(schemes=("reference", "uniform", "full", "randpos")))
def test_batch_rows_equal_single_samples(cfg):
    doc = max(cfg["doc_len"] or cfg["train_len"], cfg["train_len"])
    indices = [cfg["index"], cfg["index"] + 1, 7]
    kw = {k: cfg[k] for k in ("num_chunks", "scheme", "content_offset", "seed", "max_doc_len")}
    b = pose_position_ids_batch(cfg["train_len"], cfg["target_len"], indices,
                                doc_lens=[doc] * 3, **kw)
    for row, k in enumerate(indices):
        s = pose_position_ids(cfg["train_len"], cfg["target_len"], doc_len=doc, index=k, **kw)
        np.testing.assert_array_equal(b.position_ids[row], s.position_ids)
        np.testing.assert_array_equal(b.token_index[row], s.token_index)


@pytest.mark.parametrize("scheme", ["reference", "uniform", "full", "randpos"])
def test_train_equals_target_degenerates_to_arange(scheme):
    for k in range(20):
        s = pose_position_ids(64, 64, doc_len=300, scheme=scheme, index=k,
                              num_chunks=2 if scheme == "reference" else 3)
        np.testing.assert_array_equal(s.position_ids, np.arange(64))


def test_one_chunk_is_plain_positions():
    for k in range(20):
        s = pose_position_ids(50, 500, num_chunks=1, scheme="uniform", index=k)
        np.testing.assert_array_equal(s.position_ids, np.arange(50))


def test_reference_draw_ranges_are_exactly_the_papers():
    # l0 ~ U{1..floor((L+1)/2)}, u1 ~ U{0..T-L}, chunk 1 ends at e ~ U{L..len}, all inclusive.
    train, target, doc = 9, 20, 14
    b = pose_position_ids_batch(train, target, np.arange(20000), doc_lens=np.full(20000, doc))
    first = b.length[:, 0]
    skip = b.pos_start[:, 1] - first
    end = b.src_start[:, 1] + b.length[:, 1]
    for values, expected in ((first, range(1, 6)), (skip, range(0, 12)), (end, range(9, 15))):
        counts = np.bincount(values, minlength=max(expected) + 1)
        assert set(np.flatnonzero(counts)) == set(expected)
        share = counts[list(expected)] / len(values)
        assert np.all(np.abs(share * len(expected) - 1) < 0.1), "uniform within 10%"
    # Independence of the draws: l0 and u1 uncorrelated.
    assert abs(np.corrcoef(first, skip)[0, 1]) < 0.03


def test_documents_are_truncated_as_the_authors_code():
    # train_pose.py: max_length=model_max_position_embeddings*5 (5 windows), whatever the target.
    b = pose_position_ids_batch(10, 40, np.arange(5000), doc_lens=np.full(5000, 1000))
    end = b.src_start[:, 1] + b.length[:, 1]
    assert end.max() == 50 and end.min() == 10
    # The target length on request; the uniform scheme cuts there by default.
    b = pose_position_ids_batch(10, 40, np.arange(5000), doc_lens=np.full(5000, 1000),
                                max_doc_len=40)
    assert (b.src_start[:, 1] + b.length[:, 1]).max() == 40
    b = pose_position_ids_batch(10, 40, np.arange(5000), doc_lens=np.full(5000, 1000),
                                scheme="uniform")
    assert (b.src_start[:, -1] + b.length[:, -1]).max() == 40


def test_uniform_chunk_lengths_are_uniform_compositions():
    # Compositions of 5 into 3 positive parts: C(4, 2) = 6, each with probability 1/6.
    b = pose_position_ids_batch(5, 30, np.arange(30000), num_chunks=3, scheme="uniform")
    comps, counts = np.unique(b.length, axis=0, return_counts=True)
    assert len(comps) == 6
    assert np.all(np.abs(counts / 5000 - 1) < 0.08)


def test_seed_and_index_change_the_sample():
    a = pose_position_ids(2048, 16384, index=0, seed=0).position_ids
    assert not np.array_equal(a, pose_position_ids(2048, 16384, index=1, seed=0).position_ids)
    assert not np.array_equal(a, pose_position_ids(2048, 16384, index=0, seed=1).position_ids)


def test_known_sample_is_stable_across_versions():
    # Pinned values: a change here silently changes every resumed or re-run PoSE job.
    s = pose_position_ids(16, 64, doc_len=40, seed=3, index=5)
    assert [(c.src_start, c.length, c.pos_start) for c in s.chunks] == [(0, 6, 0), (19, 10, 38)]


def test_randpos_is_sorted_distinct_subset():
    s = pose_position_ids(100, 1000, scheme="randpos", index=3)
    assert len(np.unique(s.position_ids)) == 100 and s.position_ids.max() < 1000
    assert s.position_ids[-1] > 500, "spread over the target window"
    assert sum(c.length for c in s.chunks) == 100


def test_native_fill_equals_numpy():
    if P._native is None:
        pytest.skip("C++ extension not built")
    b = pose_position_ids_batch(64, 1000, np.arange(500), num_chunks=5, scheme="uniform",
                                doc_lens=np.arange(500) + 64)
    for starts in (b.pos_start, b.src_start):
        np.testing.assert_array_equal(P._fill_ranges(starts, b.length, 64, use_native=True),
                                      P._fill_ranges(starts, b.length, 64, use_native=False))
    with pytest.raises(ValueError, match="sum to"):
        P._native.fill_chunk_ranges(b.pos_start, b.length, 63, 1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(train_len=0, target_len=10), ValueError, "train_len must be >= 1"),
        (dict(train_len=20, target_len=10), ValueError, r"must be <= target_len"),
        (dict(train_len=2.0, target_len=10), TypeError, "train_len must be an integer"),
        (dict(train_len=True, target_len=10), TypeError, "integer"),
        (dict(train_len=4, target_len=10, num_chunks=5, scheme="uniform"), ValueError,
         r"num_chunks \(5\) must be <= train_len"),
        (dict(train_len=4, target_len=10, num_chunks=0, scheme="uniform"), ValueError, "num_chunks"),
        (dict(train_len=4, target_len=10, num_chunks=3), ValueError, "always uses 2 chunks"),
        (dict(train_len=4, target_len=10, scheme="nope"), ValueError, "unknown scheme"),
        (dict(train_len=4, target_len=10, content_offset="u"), ValueError, "content_offset"),
        (dict(train_len=4, target_len=10, seed=-1), ValueError, "seed"),
        (dict(train_len=4, target_len=10, doc_len=0), ValueError, "doc_len"),
        (dict(train_len=4, target_len=10, index=-3), ValueError, "index"),
    ],
)
def test_bad_configurations_are_refused_clearly(kwargs, error, match):
    with pytest.raises(error, match=match):
        pose_position_ids(**kwargs)


def test_batch_refuses_short_documents():
    with pytest.raises(ValueError, match="has 5 tokens < train_len 8"):
        pose_position_ids_batch(8, 20, [0, 1], doc_lens=[9, 5])


@pytest.mark.parametrize("scheme,chunks", [("reference", 2), ("uniform", 3), ("uniform", 1),
                                           ("full", 1)])
def test_coverage_counts_equal_brute_force(scheme, chunks):
    train, target, samples = 12, 40, 300
    dist, pos = P.coverage(train, target, samples, num_chunks=chunks, scheme=scheme, seed=7,
                           batch_size=64)
    want_dist = np.zeros(target, np.int64)
    want_pos = np.zeros(target, np.int64)
    for k in range(samples):
        p = pose_position_ids(train, target, num_chunks=chunks, scheme=scheme, seed=7,
                              index=k).position_ids
        np.add.at(want_pos, p, 1)
        diff = p[None, :] - p[:, None]
        np.add.at(want_dist, diff[diff > 0], 1)
    np.testing.assert_array_equal(dist, want_dist)
    np.testing.assert_array_equal(pos, want_pos)


def test_every_relative_distance_is_seen_2k_to_16k():
    dist, pos = P.coverage(2048, 16384, 100_000)
    assert np.all(dist[1:] > 0), f"unseen distances: {np.flatnonzero(dist[1:] == 0)[:10] + 1}"
    assert np.all(pos > 0)
    # The far end is rare but present; the middle is flat within 5%.
    middle = dist[3000:14000]
    assert middle.max() / middle.min() < 1.05


def test_coverage_cli_prints_and_plots(tmp_path, capsys):
    png = tmp_path / "coverage.png"
    assert P.main(["--train-len", "64", "--target-len", "512", "--samples", "2000",
                   "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "relative distances 1..target-1: 511/511 covered (100.00%)" in out
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_cli_rejects_bad_flags(capsys):
    with pytest.raises(SystemExit):
        P.main(["--train-len", "100", "--target-len", "50"])
    assert "must be <= target_len" in capsys.readouterr().err
