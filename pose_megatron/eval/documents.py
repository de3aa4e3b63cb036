"""Evaluation documents as token-id arrays, from Megatron ``.bin/.idx`` or text files.

- ``PREFIX`` (or ``PREFIX.bin`` / ``PREFIX.idx``): a Megatron-Core ``IndexedDataset``; a document
  is the concatenation of its sequences (``document_indices``).
- ``*.jsonl`` (also ``.jsonl.gz``, ``.jsonl.zst``): one document per line, its text in the field
  ``text_field``.
- any other file: the whole file is one document (UTF-8 text).

Tokens are the document's own text tokens: a leading BOS and a trailing EOS stored in a
``.bin`` (Megatron's ``--append-eod``) are dropped so a text file and its preprocessed ``.bin``
score the same tokens, and the perplexity windows add BOS themselves.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, List, Optional

import numpy as np

from pose_megatron.data.preprocess import read_documents


def _strip_specials(doc: np.ndarray, bos_id: Optional[int], eos_id: Optional[int]) -> np.ndarray:
    if bos_id is not None and len(doc) and doc[0] == bos_id:
        doc = doc[1:]
    if eos_id is not None and len(doc) and doc[-1] == eos_id:
        doc = doc[:-1]
    return doc


def _indexed_prefix(path: str) -> Optional[str]:
    prefix = path[:-4] if path.endswith((".bin", ".idx")) else path
    if os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx"):
        return prefix
    return None


def iter_indexed(prefix: str) -> Iterator[np.ndarray]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    bounds = ds.document_indices
    for d in range(len(bounds) - 1):
        parts = [ds[i] for i in range(int(bounds[d]), int(bounds[d + 1]))]
        if parts:
            yield np.concatenate(parts).astype(np.int64)


def iter_text(path: str, text_field: str) -> Iterator[str]:
    if path.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        for _, record in read_documents(path, [text_field], flag="--text-field"):
            yield record[text_field]
    else:
        with open(path, encoding="utf-8") as f:
            yield f.read()


def load_documents(
    paths: List[str],
    encode: Callable[[str], List[int]],
    *,
    vocab_size: int,
    bos_id: Optional[int] = None,
    eos_id: Optional[int] = None,
    text_field: str = "text",
    min_tokens: int = 1,
    max_tokens: Optional[int] = None,
    max_documents: Optional[int] = None,
) -> List[np.ndarray]:
    """Documents with at least ``min_tokens`` tokens, truncated to ``max_tokens``, in order,
    at most ``max_documents`` of them."""
    docs: List[np.ndarray] = []
    for path in paths:
        prefix = _indexed_prefix(path)
        if prefix is not None:
            source = (_strip_specials(d, bos_id, eos_id) for d in iter_indexed(prefix))
        elif os.path.isfile(path):
            source = (np.asarray(encode(t), dtype=np.int64) for t in iter_text(path, text_field))
        else:
            raise FileNotFoundError(
                f"--data {path}: neither a file nor a Megatron prefix with .bin and .idx"
            )
        for doc in source:
            if len(doc) < max(1, min_tokens):
                continue
            if len(doc) and int(doc.max()) >= vocab_size:
                raise ValueError(
                    f"--data {path}: token id {int(doc.max())} is outside the model vocabulary "
                    f"({vocab_size}); was it tokenised with another tokenizer?"
                )
            docs.append(doc[:max_tokens] if max_tokens else doc)
            if max_documents is not None and len(docs) >= max_documents:
                return docs
    return docs
