"""Evaluation documents from Megatron .bin/.idx, .jsonl and text files."""

import gzip
import json

import numpy as np
import pytest
import torch

from pose_megatron.eval.documents import load_documents
from tests.eval_data import BOS, EOS, VOCAB


def char_encode(text):
    return [VOCAB[c] for c in text]


def write_indexed(prefix, documents):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for doc in documents:
        for part in doc:  # a document may span several sequences
            builder.add_item(torch.tensor(part))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    return prefix


def test_indexed_dataset_documents(tmp_path):
    prefix = write_indexed(str(tmp_path / "val_text_document"), [
        [[BOS, 10, 11, 12], [13, 14, EOS]],  # two sequences, BOS ... EOS (Megatron --append-eod)
        [[20, 21]],
        [[30, 31, 32, 33, 34, 35, EOS]],
    ])
    docs = load_documents([prefix], char_encode, vocab_size=100, bos_id=BOS, eos_id=EOS)
    assert [d.tolist() for d in docs] == [[10, 11, 12, 13, 14], [20, 21], [30, 31, 32, 33, 34, 35]]
    assert all(d.dtype == np.int64 for d in docs)
    # The .bin or .idx name works as well as the prefix; filters apply in order.
    docs = load_documents([prefix + ".idx"], char_encode, vocab_size=100, bos_id=BOS, eos_id=EOS,
                          min_tokens=3, max_tokens=4)
    assert [d.tolist() for d in docs] == [[10, 11, 12, 13], [30, 31, 32, 33]]
    docs = load_documents([prefix + ".bin"], char_encode, vocab_size=100, bos_id=BOS,
                          eos_id=EOS, max_documents=2)
    assert len(docs) == 2
    with pytest.raises(ValueError, match="token id 35 is outside the model vocabulary \\(30\\)"):
        load_documents([prefix], char_encode, vocab_size=30)


def test_text_and_jsonl_files(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("Hello\nworld")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps({"text": "ab"}) + "\n\n" + json.dumps({"text": "xyz1"}) + "\n")
    docs = load_documents([str(txt), str(jsonl)], char_encode, vocab_size=len(VOCAB))
    assert [d.tolist() for d in docs] == [char_encode("Hello\nworld"), char_encode("ab"),
                                         char_encode("xyz1")]
    docs = load_documents([str(txt), str(jsonl)], char_encode, vocab_size=len(VOCAB),
                          min_tokens=3, max_documents=2)
    assert [len(d) for d in docs] == [11, 4]
    other = tmp_path / "c.jsonl"
    other.write_text(json.dumps({"body": "ab"}) + "\n")
    with pytest.raises(ValueError, match=r"c.jsonl:1: no 'text' field \(has \['body'\]; see --text-field\)"):
        load_documents([str(other)], char_encode, vocab_size=len(VOCAB))
    assert len(load_documents([str(other)], char_encode, vocab_size=len(VOCAB),
                              text_field="body")) == 1
    packed = tmp_path / "d.jsonl.gz"  # the preprocessor's compressed inputs evaluate too
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "ab1"}) + "\n")
    assert [d.tolist() for d in load_documents([str(packed)], char_encode, vocab_size=len(VOCAB))] \
        == [char_encode("ab1")]
    with pytest.raises(FileNotFoundError, match="neither a file nor a Megatron prefix"):
        load_documents([str(tmp_path / "missing")], char_encode, vocab_size=len(VOCAB))
