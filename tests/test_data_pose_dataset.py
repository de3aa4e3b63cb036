"""PoseGPTDataset inside Megatron-Core's BlendedMegatronDatasetBuilder: content, blends, errors."""

import json
import os
import struct

import numpy as np
import pytest

from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from pose_megatron.data import sample_index as si
from pose_megatron.data.pose_dataset import PoseDatasetConfig, PoseGPTDataset
from pose_megatron.data.tokenizers import load_tokenizer
from pose_megatron.positions import PoseSettings, pose_position_ids

VOCAB = 400
TRAIN, TARGET = 64, 512


@pytest.fixture(scope="module")
def tokenizer(sp_model):
    return load_tokenizer(sp_model)  # its vocabulary is VOCAB


def write_corpus(prefix, lengths, seed, dtype=np.uint16):
    """Random-token documents of the given lengths; returns them for checking."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(3, VOCAB, n).astype(dtype) for n in lengths]
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in docs:
        builder.add_document(doc, [doc.size])
    builder.finalize(prefix + ".idx")
    return [d.astype(np.int64) for d in docs]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpora")
    rng = np.random.default_rng(0)
    out = {}
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        # Heavy tail, many short documents and some of exactly TRAIN tokens.
        lengths = np.concatenate([
            np.minimum(rng.pareto(1.2, 150) * 40, 2000).astype(int) + 1,
            np.full(10, TRAIN)])
        rng.shuffle(lengths)
        out[name] = (str(d / name), write_corpus(str(d / name), lengths, seed))
    return out


_POSE_FIELDS = ("train_len", "num_chunks", "scheme", "content_offset", "max_doc_len",
                "short_docs")


def make_config(tokenizer, blend, **kw):
    kw.setdefault("split", "90,10,0")
    pose = PoseSettings(**{"train_len": TRAIN, "target_len": TARGET, "seed": kw.pop("seed", 7),
                           **{k: kw.pop(k) for k in _POSE_FIELDS if k in kw}})
    return PoseDatasetConfig(random_seed=pose.seed, sequence_length=TRAIN, pose=pose,
                             blend=blend, tokenizer=tokenizer,
                             create_attention_mask=kw.pop("create_attention_mask", False), **kw)


def build(config, sizes):
    return BlendedMegatronDatasetBuilder(PoseGPTDataset, sizes, lambda: True, config).build()


def check_sample(ds, docs, idx, config):
    s = ds[idx]
    vdoc = np.concatenate([docs[d] for d in ds.index.documents(idx)])
    full = vdoc.size
    assert full >= TRAIN
    ref = pose_position_ids(TRAIN, TARGET, doc_len=full, num_chunks=config.pose.num_chunks,
                            scheme=config.pose.scheme, content_offset=config.pose.content_offset,
                            seed=config.random_seed, index=idx,
                            max_doc_len=config.pose.max_doc_len)
    expected = np.concatenate([vdoc[c.src_start:c.src_start + c.length] for c in ref.chunks])
    np.testing.assert_array_equal(s["tokens"], expected)
    np.testing.assert_array_equal(s["position_ids"], ref.position_ids)
    np.testing.assert_array_equal(s["labels"][:-1], expected[1:])
    end = ref.chunks[-1].src_start + ref.chunks[-1].length
    if end < full:
        assert s["labels"][-1] == vdoc[end] and s["loss_mask"][-1] == 1.0
    else:
        assert s["labels"][-1] == 0 and s["loss_mask"][-1] == 0.0
    assert (s["loss_mask"][:-1] == 1.0).all()
    assert s["tokens"].dtype == np.int64 and s["labels"].dtype == np.int64
    assert s["position_ids"].dtype == np.int64 and s["loss_mask"].dtype == np.float32
    assert s["position_ids"].max() < TARGET
    return end == full


@pytest.mark.parametrize("short_docs", ["skip", "pack"])
@pytest.mark.parametrize("scheme,chunks,offset", [("reference", 2, "random"),
                                                  ("uniform", 3, "equal_u")])
def test_samples_match_the_position_generator(tokenizer, corpora, tmp_path, short_docs, scheme,
                                              chunks, offset):
    prefix, docs = corpora["a"]
    config = make_config(tokenizer, ([prefix], None), short_docs=short_docs, scheme=scheme,
                         num_chunks=chunks, content_offset=offset,
                         path_to_cache=str(tmp_path / "cache"))
    train, valid, _ = build(config, [300, 20, 0])
    assert len(train) == 300 and len(valid) == 20
    n_train_docs = int(round(0.9 * len(docs)))
    masked_last = 0
    for idx in range(0, 300, 3):
        documents = train.index.documents(idx)
        assert (documents < n_train_docs).all()  # the split's documents only
        if short_docs == "skip":
            assert documents.size == 1 and docs[documents[0]].size >= TRAIN
        masked_last += check_sample(train, docs, idx, config)
    for idx in range(20):
        assert (valid.index.documents(idx) >= n_train_docs).all()
        check_sample(valid, docs, idx, config)
    if short_docs == "skip" and offset == "random":
        assert masked_last > 0  # documents of exactly TRAIN tokens end inside the sample


def test_pack_uses_short_documents(tokenizer, corpora, tmp_path):
    prefix, docs = corpora["b"]
    config = make_config(tokenizer, ([prefix], None), short_docs="pack",
                         path_to_cache=str(tmp_path / "cache"))
    train, _, _ = build(config, [200, 10, 0])
    sizes = [train.index.documents(i).size for i in range(200)]
    assert max(sizes) > 1
    skip = build(make_config(tokenizer, ([prefix], None), path_to_cache=str(tmp_path / "c2")),
                 [200, 10, 0])[0]
    assert {int(d) for i in range(200) for d in train.index.documents(i)} > \
        {int(skip.index.documents(i)[0]) for i in range(200)}


def test_three_corpus_blend_ratios(tokenizer, corpora, tmp_path):
    prefixes = [corpora[k][0] for k in "abc"]
    weights = [0.5, 0.3, 0.2]
    config = make_config(tokenizer, (prefixes, weights), path_to_cache=None)
    train, valid, test = build(config, [10_000, 100, 0])
    assert len(train) == 10_000 and test is None
    share = np.bincount(train.dataset_index, minlength=3) / len(train)
    np.testing.assert_allclose(share, weights, atol=0.01)
    for k in (0, 1, 5000, 9999):
        s = train[k]
        name = "abc"[s["dataset_id"]]
        inner = train.datasets[s["dataset_id"]]
        assert inner.dataset_path == corpora[name][0]
        check_sample(inner, corpora[name][1], int(train.dataset_sample_index[k]), config)


def test_cache_is_reused_and_backends_agree(tokenizer, corpora, tmp_path):
    prefix, docs = corpora["c"]
    cache = str(tmp_path / "cache")
    config = make_config(tokenizer, ([prefix], None), short_docs="pack", path_to_cache=cache,
                         index_backend="numpy")
    first = build(config, [500, 10, 0])[0]
    files = sorted(os.listdir(cache))
    assert [f for f in files if f.endswith("-train-description.json")]
    assert not [f for f in files if ".tmp" in f]
    again = build(config, [500, 10, 0])[0]
    assert sorted(os.listdir(cache)) == files
    assert isinstance(again.index.doc_order, np.memmap)  # loaded, memory-mapped
    if si.cpp_available():
        cpp = build(make_config(tokenizer, ([prefix], None), short_docs="pack",
                                path_to_cache=str(tmp_path / "cpp"), index_backend="cpp"),
                    [500, 10, 0])[0]
        np.testing.assert_array_equal(cpp.index.doc_order, first.index.doc_order)
        np.testing.assert_array_equal(cpp.index.sample_start, first.index.sample_start)
    for k in (0, 250, 499):
        np.testing.assert_array_equal(again[k]["tokens"], first[k]["tokens"])


def test_corpus_changed_under_the_same_prefix_gets_a_new_index(tokenizer, tmp_path):
    # The cache key covers the .idx content: a rewritten corpus must not reuse the old index
    # (it would train on the wrong documents or fail later with an IndexError).
    prefix, cache = str(tmp_path / "corpus"), str(tmp_path / "cache")
    write_corpus(prefix, [TRAIN + 5 * k for k in range(40)], seed=1)
    config = make_config(tokenizer, ([prefix], None), path_to_cache=cache,
                         index_backend="numpy")
    first = build(config, [60, 4, 0])[0]
    old = set(os.listdir(cache))
    docs = write_corpus(prefix, [TRAIN + 200 + 3 * k for k in range(7)], seed=2)
    second = build(config, [60, 4, 0])[0]
    assert second.unique_description_hash != first.unique_description_hash
    assert set(os.listdir(cache)) > old  # a new index beside the old one
    assert int(second.index.doc_order.max()) < 7
    for k in range(0, 60, 7):
        check_sample(second, docs, k, config)
    # The same content written again keeps its key: the index is reused, not rebuilt.
    write_corpus(prefix, [TRAIN + 200 + 3 * k for k in range(7)], seed=2)
    files = set(os.listdir(cache))
    third = build(config, [60, 4, 0])[0]
    assert third.unique_description_hash == second.unique_description_hash
    assert set(os.listdir(cache)) == files


def test_attention_mask_is_causal(tokenizer, corpora, tmp_path):
    prefix, _ = corpora["a"]
    config = make_config(tokenizer, ([prefix], None), create_attention_mask=True,
                         path_to_cache=str(tmp_path / "cache"))
    s = build(config, [5, 1, 0])[0][0]
    mask = s["attention_mask"]
    assert mask.shape == (1, TRAIN, TRAIN) and mask.dtype == bool
    np.testing.assert_array_equal(mask[0], np.triu(np.ones((TRAIN, TRAIN), bool), k=1))


# -- bad input --------------------------------------------------------------------------------


def _copy(prefix, new, bin_bytes=None, idx_bytes=None):
    for ext, override in ((".bin", bin_bytes), (".idx", idx_bytes)):
        with open(prefix + ext, "rb") as f:
            data = f.read()
        with open(new + ext, "wb") as f:
            f.write(override(data) if override else data)
    return new


def test_bad_files_are_named(tokenizer, corpora, tmp_path):
    prefix, _ = corpora["a"]
    other, _ = corpora["b"]
    cases = {
        "missing": (str(tmp_path / "nothing"), r"nothing\.idx: missing"),
        "truncated_bin": (_copy(prefix, str(tmp_path / "tb"), bin_bytes=lambda b: b[:-10]),
                          r"tb\.bin: .* mismatched, truncated or of another dtype"),
        "truncated_idx": (_copy(prefix, str(tmp_path / "ti"), idx_bytes=lambda b: b[:-8]),
                          r"ti\.idx: truncated"),
        "mismatched": (_copy(prefix, str(tmp_path / "mm"),
                             bin_bytes=lambda b: open(other + ".bin", "rb").read()),
                       r"mm\.bin: .* bytes, but .*mm\.idx describes"),
        "float_dtype": (_copy(prefix, str(tmp_path / "fl"),
                              idx_bytes=lambda b: b[:17] + struct.pack("<B", 7) + b[18:]),
                        r"fl\.idx: token dtype float32 is not an integer type"),
        "foreign": (_copy(prefix, str(tmp_path / "fo"), idx_bytes=lambda b: b"JUNK" + b[4:]),
                    r"fo\.idx: not a Megatron \.idx file"),
    }
    for name, (path, pattern) in cases.items():
        config = make_config(tokenizer, ([path], None), path_to_cache=str(tmp_path / "cache"))
        with pytest.raises((ValueError, FileNotFoundError), match=pattern):
            build(config, [10, 1, 0])


def test_empty_corpus_and_unsuppliable_blend(tokenizer, corpora, tmp_path):
    empty = str(tmp_path / "empty")
    write_corpus(empty, [], 0)
    config = make_config(tokenizer, ([empty], None), path_to_cache=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"empty\.idx: empty corpus"):
        build(config, [10, 1, 0])
    short = str(tmp_path / "short")
    write_corpus(short, [10, 20, 30, 5] * 10, 0)
    blend = ([corpora["a"][0], short, corpora["b"][0]], [0.4, 0.2, 0.4])
    with pytest.raises(ValueError, match=r"short\.idx: no document .* train_len=64"):
        build(make_config(tokenizer, blend, path_to_cache=str(tmp_path / "c2")), [100, 5, 0])
    capped = make_config(tokenizer, ([corpora["a"][0]], None), max_epochs=2,
                         path_to_cache=str(tmp_path / "c3"))
    with pytest.raises(ValueError, match=r"a\.idx: .* epochs of this corpus, more than max_epochs"):
        build(capped, [100_000, 5, 0])


def test_config_errors(tokenizer, corpora):
    prefix, _ = corpora["a"]
    with pytest.raises(ValueError, match="needs pose=PoseSettings"):
        PoseDatasetConfig(random_seed=0, sequence_length=64, blend=([prefix], None),
                          split="1", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="train_len"):
        make_config(tokenizer, ([prefix], None), train_len=32)
    with pytest.raises(ValueError, match="pose.seed"):
        PoseDatasetConfig(random_seed=3, sequence_length=TRAIN, pose=PoseSettings(TRAIN, TARGET),
                          blend=([prefix], None), split="1", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="short_docs"):
        make_config(tokenizer, ([prefix], None), short_docs="truncate")
    with pytest.raises(ValueError, match="reset_position_ids"):
        make_config(tokenizer, ([prefix], None), reset_position_ids=True)


# -- distributed: built once on rank 0, memory-mapped by the others ---------------------------


def _distributed_body(rank, world, prefix, cache, vocab_model):
    import torch.distributed as dist

    from pose_megatron import parallel

    parallel.initialize(tensor_model_parallel_size=1)
    config = make_config(load_tokenizer(vocab_model), ([prefix, prefix], [0.5, 0.5]),
                         path_to_cache=cache)
    built_before = sorted(os.listdir(cache)) if os.path.isdir(cache) else []
    train = build(config, [400, 10, 0])[0]
    dist.barrier()
    out = (len(built_before), len(train), train[123]["tokens"].tolist(),
           isinstance(train.datasets[0].index.doc_order, np.memmap))
    parallel.destroy()
    return out


def test_distributed_build_once(tokenizer, corpora, tmp_path):
    from tests.distributed import run_distributed

    prefix, _ = corpora["a"]
    cache = str(tmp_path / "cache")
    results = run_distributed(_distributed_body, 2, prefix, cache, tokenizer.path)
    assert results[0][1:3] == results[1][1:3]
    assert results[0][1] == 400
    assert results[1][3]  # rank 1 found rank 0's index and memory-mapped it
    descriptions = [f for f in os.listdir(cache) if f.endswith("description.json")]
    assert descriptions
    meta = json.load(open(os.path.join(cache, sorted(descriptions)[0])))
    assert meta["description"]["train_len"] == TRAIN


def test_build_datasets_from_a_data_path_list(tokenizer, corpora, tmp_path):
    from pose_megatron.data.pose_dataset import build_datasets

    data_path = ["70", corpora["a"][0], "30", corpora["b"][0]]
    train, valid, test = build_datasets(
        data_path, tokenizer.path, PoseSettings(TRAIN, TARGET, seed=7, short_docs="pack"),
        sizes=[2000, 50, 0], split="90,10,0", path_to_cache=None, create_attention_mask=False)
    assert len(train) == 2000 and len(valid) == 50 and test is None
    share = np.bincount(train.dataset_index, minlength=2) / len(train)
    np.testing.assert_allclose(share, [0.7, 0.3], atol=0.01)
    assert train.datasets[0].config.pose.short_docs == "pack"
    assert train[1999]["tokens"].shape == (TRAIN,)
