"""PoSE GPT dataset for Megatron-Core's ``BlendedMegatronDatasetBuilder``.

``PoseGPTDataset`` is a ``MegatronDataset`` over an ``IndexedDataset`` (``.bin``/``.idx``), so
weighted blends of corpora and train/valid/test splits work as in any Megatron job::

    pose = PoseSettings(train_len=2048, target_len=16384, seed=1234)
    config = PoseDatasetConfig.for_settings(
        pose, blend=(["a_text_document", "b_text_document"], [0.7, 0.3]), split="98,1,1",
        tokenizer=load_tokenizer("tokenizer.model"))
    train, valid, test = BlendedMegatronDatasetBuilder(
        PoseGPTDataset, [num_train, num_valid, num_test], lambda: True, config).build()

Sample ``i`` (``__getitem__``), all NumPy, ``L = train_len``:

- its document(s) come from the sample index (``sample_index.py``): one document of at least
  ``L`` tokens (``short_docs="skip"``, the paper), or a pack of consecutive shuffled documents
  that together reach ``L`` (``"pack"``; read as one document, EOD tokens included, attention
  not reset between them);
- ``pose_megatron.positions`` with (``pose.seed``, ``i``) and the document length picks the
  chunks (document truncated to ``max_doc_len`` first, by default 5 training windows for the
  reference scheme as the authors' code does, the target length otherwise) and their position ids, so any rank, worker or resumed run regenerates the same
  sample;
- ``tokens`` int64 [L]: the chunks' content concatenated; ``position_ids`` int64 [L];
- ``labels`` int64 [L]: ``labels[j] = tokens[j + 1]`` (the chunk boundary is not masked, as in
  the reference); the last label is the document token right after the last chunk, with
  ``loss_mask`` 1, or, when the last chunk ends the document, a pad 0 with ``loss_mask`` 0 (it
  is the only position that may be masked);
- ``loss_mask`` float32 [L]; ``attention_mask`` bool [1, L, L] (True = masked, causal) only with
  ``create_attention_mask`` (one shared read-only array: the mask never changes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset, get_idx_path
from megatron.core.datasets.megatron_dataset import MegatronDataset
from megatron.core.datasets.utils import Split

from pose_megatron import publish
from pose_megatron.data import indexed
from pose_megatron.data import sample_index as sample_index_lib
from pose_megatron.positions import PoseSettings

logger = logging.getLogger(__name__)

# The PoSE settings that shape the sample index (not the seed: Megatron's own keys hold it).
_POSE_CACHE_KEYS = ("train_len", "target_len", "num_chunks", "scheme", "content_offset",
                    "short_docs", "max_doc_len")
_BLOCK = 128  # samples whose positions are generated together (one vectorised call)


@dataclass
class PoseDatasetConfig(GPTDatasetConfig):
    """``GPTDatasetConfig`` plus the PoSE sampling fields; ``sequence_length`` is ``train_len``."""

    # PoSE sets its own position ids and does not reset attention between packed documents.
    reset_position_ids: Optional[bool] = False
    reset_attention_mask: Optional[bool] = False
    eod_mask_loss: Optional[bool] = False

    pose: Optional[PoseSettings] = None
    """The PoSE sampling (``pose_megatron.positions.PoseSettings``); ``pose.train_len`` must equal
    ``sequence_length`` and ``pose.seed`` ``random_seed``: ``for_settings`` builds it so."""

    max_epochs: Optional[int] = None
    """Refuse to repeat a corpus more than this many times to supply the requested samples."""

    index_backend: str = "auto"
    """Index builder: ``cpp`` (csrc/sample_index.cpp), ``numpy`` or ``auto`` (C++ if built)."""

    index_threads: int = 0
    """Threads of the C++ index builder (0: all cores)."""

    @classmethod
    def for_settings(cls, pose: PoseSettings, **fields) -> "PoseDatasetConfig":
        """The config of ``pose`` (window and seed from it) with Megatron's other fields."""
        return cls(random_seed=pose.seed, sequence_length=pose.train_len, pose=pose, **fields)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.pose, PoseSettings):
            raise ValueError("PoseDatasetConfig needs pose=PoseSettings(...) (the train window, "
                             "the target length and the sampling; see for_settings)")
        if self.pose.train_len != self.sequence_length:
            raise ValueError(f"pose.train_len ({self.pose.train_len}) must equal sequence_length "
                             f"({self.sequence_length})")
        if self.pose.seed != self.random_seed:
            raise ValueError(f"pose.seed ({self.pose.seed}) must equal random_seed "
                             f"({self.random_seed}): one seed drives the sample order and the "
                             "positions")
        if self.reset_position_ids or self.reset_attention_mask or self.eod_mask_loss:
            raise ValueError("PoSE samples set their own position ids: reset_position_ids, "
                             "reset_attention_mask and eod_mask_loss must be False")
        if self.index_backend not in ("auto", "cpp", "numpy"):
            raise ValueError(
                f"index_backend must be auto, cpp or numpy, got {self.index_backend!r}")
        if self.mock:
            raise ValueError("PoseGPTDataset needs real data: give blend or blend_per_split "
                             "(pose_megatron.training has a synthetic dataset for smoke runs)")


_FINGERPRINTS: Dict[tuple, str] = {}


def corpus_fingerprint(path_prefix: str) -> str:
    """Hash of what a sample index depends on: the ``.idx`` header and its document lengths.

    Part of the index's cache key, so a corpus rewritten under the same prefix (other documents,
    other lengths) gets a new index instead of silently reusing the old one. Remembered per
    (path, size, mtime) within a process: one pass over the lengths per corpus, not per split.
    """
    idx_path = get_idx_path(path_prefix)
    st = os.stat(idx_path)
    key = (os.path.abspath(idx_path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _FINGERPRINTS:
        count = indexed.read_header(idx_path).sequences
        mm = np.memmap(idx_path, mode="r", dtype=np.uint8)
        digest = hashlib.blake2b(digest_size=16)
        digest.update(mm[:indexed.HEADER_BYTES])
        digest.update(mm[indexed.HEADER_BYTES:indexed.HEADER_BYTES + 4 * count])
        _FINGERPRINTS[key] = digest.hexdigest()
    return _FINGERPRINTS[key]


class PoseGPTDataset(MegatronDataset):
    """PoSE samples from one ``IndexedDataset`` split; see the module docstring."""

    def __init__(self, indexed_dataset: IndexedDataset, dataset_path: Optional[str],
                 indexed_indices: np.ndarray, num_samples: Optional[int], index_split: Split,
                 config: PoseDatasetConfig) -> None:
        super().__init__(indexed_dataset, dataset_path, indexed_indices, num_samples, index_split,
                         config)
        # MegatronDataset keys caches on the path and config only; add the corpus content (the
        # same JSON + MD5 as MegatronDataset, so blends built on top see it too).
        for key in _POSE_CACHE_KEYS:  # after Megatron's keys: cache names of earlier runs hold
            self.unique_identifiers[key] = getattr(config.pose, key)
        self.unique_identifiers["corpus"] = corpus_fingerprint(indexed_dataset.path_prefix)
        self.unique_description = json.dumps(
            self.unique_identifiers, indent=4, default=lambda obj: obj.unique_identifiers)
        self.unique_description_hash = hashlib.md5(
            self.unique_description.encode("utf-8"), usedforsecurity=False).hexdigest()
        self.pose = config.pose
        self._lengths = np.asarray(indexed_dataset.sequence_lengths)
        self.index = self._build_or_load_index()
        self._block = -1
        self._block_positions = None
        self._block_token_index = None
        self._mask = None

    # -- MegatronDataset hooks ------------------------------------------------------------------

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: IndexedDataset) -> int:
        # Split by document, as GPT does: a document never straddles train and valid.
        return low_level_dataset.sequence_lengths.shape[0]

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: PoseDatasetConfig) -> IndexedDataset:
        vocab = getattr(config.tokenizer, "vocab_size", None)
        indexed.check_indexed(dataset_path, vocab if isinstance(vocab, int) else None)
        return IndexedDataset(dataset_path, multimodal=False, mmap=config.mmap_bin_files)

    @staticmethod
    def _key_config_attributes() -> List[str]:
        from pose_megatron.megatron_compat import dataset_key_config_attributes

        return dataset_key_config_attributes()

    # -- index ---------------------------------------------------------------------------------

    def _cache_prefix(self) -> str:
        root = self.config.path_to_cache or os.path.join(
            os.path.dirname(os.path.abspath(self.dataset.path_prefix)), "cache",
            f"{type(self).__name__}_indices")
        base = f"{self.unique_description_hash}-{type(self).__name__}-{self.index_split.name}"
        return os.path.join(root, base)

    def _build_or_load_index(self) -> sample_index_lib.SampleIndex:
        indices = np.asarray(self.indices)
        source = get_idx_path(self.dataset.path_prefix)
        if indices.size == 0:
            raise ValueError(f"{source}: the {self.index_split.name} split holds no documents; "
                             f"change the split or give this split its own corpus")
        beg, end = int(indices[0]), int(indices[-1]) + 1
        if end - beg != indices.size or not np.all(np.diff(indices) == 1):
            raise ValueError(
                f"{source}: PoseGPTDataset needs a contiguous document range per split")
        packed = self.pose.short_docs == "pack"
        prefix = self._cache_prefix()
        description = prefix + "-description.json"
        if os.path.isfile(description):  # written last, so its presence means a complete index
            with open(description) as f:
                meta = json.load(f)
            logger.info("load the PoSE sample index %s", prefix)
            index = sample_index_lib.SampleIndex.load(prefix, packed, meta["epochs"])
        else:
            t0 = time.time()
            use_cpp = self.config.index_backend == "cpp" or (
                self.config.index_backend == "auto" and sample_index_lib.cpp_available())
            lengths_or_idx = source if use_cpp else self._lengths
            index = sample_index_lib.build(
                lengths_or_idx, beg, end, self.pose.train_len, self.num_samples, self.pose.seed,
                self.pose.short_docs, backend="cpp" if use_cpp else "numpy",
                threads=self.config.index_threads, source=source)
            index.save(prefix)
            meta = {"epochs": index.epochs, "num_samples": index.num_samples,
                    "description": json.loads(self.unique_description)}
            with publish.atomic_file(description) as f:
                json.dump(meta, f, indent=2, default=str)
            logger.info("built the PoSE sample index %s (%d samples, %d epochs) in %.2f s",
                        prefix, index.num_samples, index.epochs, time.time() - t0)
        if self.config.max_epochs is not None and index.epochs > self.config.max_epochs:
            raise ValueError(
                f"{source}: {index.num_samples} {self.index_split.name} samples need "
                f"{index.epochs} epochs of this corpus, more than "
                f"max_epochs={self.config.max_epochs}")
        return index

    # -- samples -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.index.num_samples

    def document_length(self, idx: int) -> int:
        """Tokens in sample ``idx``'s (possibly packed) document, before truncation."""
        return int(self._lengths[self.index.documents(idx)].sum(dtype=np.int64))

    def _positions(self, idx: int):
        """(position_ids [L], token_index [L]) of sample idx, generated a block at a time."""
        block = idx // _BLOCK
        if block != self._block:
            lo, hi = block * _BLOCK, min(len(self), (block + 1) * _BLOCK)
            doc_lens = [self.document_length(i) for i in range(lo, hi)]
            batch = self.pose.batch(np.arange(lo, hi), doc_lens)
            self._block, self._block_lo = block, lo
            self._block_positions, self._block_token_index = batch.position_ids, batch.token_index
        row = idx - self._block_lo
        return self._block_positions[row], self._block_token_index[row]

    def _read(self, docs: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the concatenation of ``docs``."""
        if docs.shape[0] == 1:
            return self.dataset.get(int(docs[0]), offset=start, length=stop - start)
        parts, offset = [], 0
        for doc in docs:
            n = int(self._lengths[doc])
            a, b = max(start, offset), min(stop, offset + n)
            if a < b:
                parts.append(self.dataset.get(int(doc), offset=a - offset, length=b - a))
            offset += n
            if offset >= stop:
                break
        return np.concatenate(parts)

    def __getitem__(self, idx) -> Dict[str, np.ndarray]:
        if idx is None:
            raise ValueError("PoseGPTDataset has no padding samples (idx=None)")
        idx = int(idx)
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range for {len(self)} samples")
        docs = self.index.documents(idx)
        full = self.document_length(idx)
        positions, token_index = self._positions(idx)
        lo, last = int(token_index.min()), int(token_index.max())
        stop = min(full, last + 2)  # one more token: the label after the last chunk
        span = self._read(docs, lo, stop).astype(np.int64)
        tokens = span[token_index - lo]
        labels = np.empty_like(tokens)
        labels[:-1] = tokens[1:]
        loss_mask = np.ones(tokens.shape[0], dtype=np.float32)
        # The label of the last token is the one after it in the sample's last chunk.
        end = int(token_index[-1]) + 1
        if end < full:
            labels[-1] = span[end - lo]
        else:
            labels[-1] = 0
            loss_mask[-1] = 0.0
        sample = {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
                  "position_ids": positions.astype(np.int64, copy=True)}
        if self.config.create_attention_mask:
            if self._mask is None:
                n = tokens.shape[0]
                self._mask = ~np.tri(n, n, dtype=bool)[None]
                self._mask.setflags(write=False)
            sample["attention_mask"] = self._mask
        return sample


def build_datasets(data_path, tokenizer, pose: PoseSettings, *, sizes, split: str = "969,30,1",
                   path_to_cache: Optional[str] = None, is_built_on_rank=None, **fields):
    """(train, valid, test) PoSE datasets from a Megatron-style ``--data-path`` list.

    ``data_path`` is ``["prefix", ...]`` or ``["weight", "prefix", ...]`` (Megatron's blend
    list); ``tokenizer`` a ``PoseTokenizer`` or a path for ``load_tokenizer``; ``pose`` the PoSE
    sampling (its seed is the data seed); ``sizes`` the samples per split (``[train, valid,
    test]``); ``fields`` any other ``PoseDatasetConfig`` field (``create_attention_mask``,
    ``index_backend``...). Call it on every rank: rank 0 builds the indexes first, the others then
    memory-map them.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder)
    from megatron.core.datasets.utils import get_blend_from_list

    from pose_megatron.data.tokenizers import PoseTokenizer, load_tokenizer

    if isinstance(data_path, str):
        data_path = data_path.split()
    if not isinstance(tokenizer, PoseTokenizer):
        tokenizer = load_tokenizer(tokenizer)
    config = PoseDatasetConfig.for_settings(
        pose, blend=get_blend_from_list(list(data_path)), split=split, tokenizer=tokenizer,
        path_to_cache=path_to_cache, **fields)
    return BlendedMegatronDatasetBuilder(
        PoseGPTDataset, list(sizes), is_built_on_rank or (lambda: True), config).build()
