"""The package's one tokenizer loader, from local files, without Megatron: a sentencepiece
``.model`` file (LLaMA-1/2, the bundled corpus; also a directory holding only
``tokenizer.model``) or a Hugging Face tokenizer directory (LLaMA-3, Mistral, Qwen2) loaded with
``AutoTokenizer`` from local files only and without remote code.

Kept free of Megatron-Core and torch imports so preprocessing can load it and fork its workers
in a fraction of a second; ``pose_megatron.data.tokenizers.PoseTokenizer`` wraps it for
Megatron's dataset config, ``pose_megatron.eval.models.load_tokenizer`` for the evaluations.
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional

# Files whose presence makes a directory a HF tokenizer (tokenizer.model alone does not: see
# ``_resolve``).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def _resolve(path: str) -> str:
    """``path``, or the sentencepiece file of a directory that holds only ``tokenizer.model`` (a
    checkpoint's tokenizer/ of a LLaMA-2 model): transformers would try to convert that file (and
    ask for tiktoken) instead of reading it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer {path!r} does not exist")
    if os.path.isdir(path) and not any(
            os.path.exists(os.path.join(path, name)) for name in HF_TOKENIZER_FILES):
        model_file = os.path.join(path, "tokenizer.model")
        if not os.path.isfile(model_file):
            raise ValueError(f"{path} holds no tokenizer: expected tokenizer.json, "
                             f"tokenizer_config.json or a sentencepiece tokenizer.model")
        return model_file
    return path


class LocalTokenizer:
    """``tokenize(text) -> ids`` without special tokens; ``eod`` is the tokenizer's EOS
    (-1 where it has none, likewise ``bos`` and ``pad``)."""

    def __init__(self, path: str):
        path = _resolve(os.fspath(path))
        self.path = path
        self.kind = "hf" if os.path.isdir(path) else "sentencepiece"
        if self.kind == "sentencepiece":
            import sentencepiece

            self._sp = sentencepiece.SentencePieceProcessor()
            try:
                self._sp.Load(path)
            except Exception as err:  # sentencepiece raises OSError/RuntimeError by version
                raise ValueError(f"{path}: not a sentencepiece model ({err})") from err
            self.vocab_size = int(self._sp.GetPieceSize())
            self.eod = int(self._sp.eos_id())
            self.bos = int(self._sp.bos_id())
            self.pad = int(self._sp.pad_id())
        else:
            from transformers import AutoTokenizer

            try:
                self._hf = AutoTokenizer.from_pretrained(
                    path, local_files_only=True, trust_remote_code=False)
            except Exception as err:
                raise ValueError(f"{path}: cannot load a Hugging Face tokenizer ({err})") from err
            # Documents are far longer than any model window; the warning would fire per document.
            self._hf.model_max_length = 1 << 62
            self.vocab_size = len(self._hf)
            self.eod = -1 if self._hf.eos_token_id is None else int(self._hf.eos_token_id)
            self.bos = -1 if self._hf.bos_token_id is None else int(self._hf.bos_token_id)
            self.pad = -1 if self._hf.pad_token_id is None else int(self._hf.pad_token_id)

    def tokenize(self, text: str) -> List[int]:
        if self.kind == "sentencepiece":
            return self._sp.EncodeAsIds(text)
        return self._hf.encode(text, add_special_tokens=False)

    def tokenize_batch(self, texts: List[str]) -> List[List[int]]:
        """``[tokenize(t) for t in texts]`` in one call into the tokenizer's native code.

        Sentencepiece encodes on one thread; a Hugging Face tokenizer as ``TOKENIZERS_PARALLELISM``
        says (preprocessing workers turn it off: they parallelise over processes, one core each).
        """
        if self.kind == "sentencepiece":
            return self._sp.Encode(texts, out_type=int, num_threads=1)
        return self._hf(texts, add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]

    def detokenize(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; sentencepiece drops its control tokens (BOS/EOS) either way."""
        ids = [int(i) for i in ids]
        if self.kind == "sentencepiece":
            return self._sp.DecodeIds(ids)
        return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def chat_renderer(self) -> Optional[Callable[[str], str]]:
        """One user message -> the chat-formatted prompt text with the assistant turn opened;
        None when the tokenizer has no chat template (sentencepiece files, base models)."""
        if self.kind == "sentencepiece" or not getattr(self._hf, "chat_template", None):
            return None
        hf = self._hf

        def render(content: str) -> str:
            return hf.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                          add_generation_prompt=True)

        return render

    def vocab(self):
        if self.kind == "sentencepiece":
            return {self._sp.IdToPiece(i): i for i in range(self.vocab_size)}
        return self._hf.get_vocab()
