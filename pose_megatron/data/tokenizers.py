"""The tokenizer for Megatron's dataset config: a ``MegatronTokenizerBase`` over a
``LocalTokenizer`` (sentencepiece ``.model`` file or Hugging Face directory, local files only).

``PoseTokenizer`` can sit in a ``GPTDatasetConfig``: Megatron reads ``vocab_size``, ``eod``, ``pad``
and ``unique_identifiers``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List

from megatron.core.tokenizers import MegatronTokenizerBase

from pose_megatron.data.text_tokenizer import LocalTokenizer


class PoseTokenizer(MegatronTokenizerBase):
    """``tokenize(text) -> ids`` without special tokens; ``eod`` is the tokenizer's EOS."""

    def __init__(self, path: str):
        local = LocalTokenizer(path)
        super().__init__(local.path, {})
        self.local = local
        self.kind, self.eod, self.bos, self.pad = local.kind, local.eod, local.bos, local.pad
        self.unique_identifiers = OrderedDict(
            [("class", type(self).__name__), ("kind", self.kind), ("path", local.path),
             ("vocab_size", local.vocab_size), ("eod", self.eod)])

    @property
    def vocab_size(self) -> int:
        return self.local.vocab_size

    @property
    def eos(self) -> int:
        return self.eod

    def tokenize(self, text: str) -> List[int]:
        return self.local.tokenize(text)

    def tokenize_batch(self, texts: List[str]) -> List[List[int]]:
        return self.local.tokenize_batch(texts)

    def detokenize(self, ids) -> str:
        return self.local.detokenize(ids)

    def vocab(self):
        return self.local.vocab()

    def apply_chat_template(self, *args, **kwargs):
        raise NotImplementedError("PoSE pretraining data has no chat template")


def load_tokenizer(path: str) -> PoseTokenizer:
    return PoseTokenizer(path)
