"""A bundled corpus that every machine already has: the Python standard library's own sources.

``build_corpus(out_dir)`` writes, deterministically for a given Python version:

- ``corpus.jsonl``: one document per stdlib ``.py`` file (source with its docstrings), files in
  sorted relative-path order, test suites, ``idlelib`` and ``site-packages`` left out;
- ``tokenizer.model``: a small sentencepiece BPE model trained on it (single thread, no input
  shuffling, so the same corpus gives the same model);
- ``corpus_text_document.{bin,idx}``: the corpus tokenized by ``tools/preprocess_data.py``'s
  code with BOS prepended and EOD appended.

The file lengths are heavy-tailed (a few hundred to ~100k tokens), which suits PoSE: long
documents for the skip rule, short ones for packing. Nothing here is committed; it is rebuilt
in well under a minute.

    python -m pose_megatron.data.corpus --out runs/stdlib_corpus
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sysconfig
import time
from typing import Dict, Iterator, List, Optional, Tuple

from pose_megatron import publish

_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "__pycache__", "dist-packages"}


def stdlib_files(root: Optional[str] = None) -> List[str]:
    """Relative paths of the stdlib ``.py`` files used, sorted."""
    root = root or sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in filenames:
            if name.endswith(".py"):
                out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def stdlib_documents(root: Optional[str] = None, max_docs: Optional[int] = None
                     ) -> Iterator[Tuple[str, str]]:
    """(relative path, source text) of the corpus documents, in corpus order, read lazily."""
    root = root or sysconfig.get_paths()["stdlib"]
    files = stdlib_files(root)[:max_docs]
    if not files:
        raise ValueError(f"no .py files under {root}")

    def read(rel: str) -> Tuple[str, str]:
        with open(os.path.join(root, rel), "rb") as src:
            return rel, src.read().decode("utf-8", errors="replace")

    return map(read, files)


def write_jsonl(path: str, root: Optional[str] = None, max_docs: Optional[int] = None) -> int:
    docs = stdlib_documents(root, max_docs)
    n = 0
    with publish.atomic_file(path) as f:
        for rel, text in docs:
            f.write(json.dumps({"text": text, "path": rel}) + "\n")
            n += 1
    return n


def train_tokenizer(jsonl: str, model_path: str, vocab_size: int = 2000,
                    max_lines: int = 400_000) -> None:
    """Train a tiny deterministic sentencepiece BPE model on the corpus lines."""
    import sentencepiece as spm

    lines = []
    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            for text_line in json.loads(line)["text"].splitlines():
                if text_line.strip() and len(lines) < max_lines:
                    lines.append(text_line)
    model = io.BytesIO()
    # An iterator and an in-memory writer: no temporary paths end up in the model's trainer spec,
    # so the same corpus gives byte-identical models.
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", character_coverage=0.9995, byte_fallback=True, num_threads=1,
        input_sentence_size=max_lines, shuffle_input_sentence=False,
        # Code: keep indentation and newlines as tokens instead of normalising them away.
        remove_extra_whitespaces=False, normalization_rule_name="identity",
        user_defined_symbols=["\n", "\t"], split_digits=True,
        max_sentence_length=16384, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    with publish.atomic_file(model_path, binary=True) as dst:
        dst.write(model.getvalue())


def build_corpus(out_dir: str, *, vocab_size: int = 2000, max_docs: Optional[int] = None,
                 workers: int = 1, quiet: bool = False) -> Dict[str, str]:
    """Write corpus.jsonl, tokenizer.model and corpus_text_document.{bin,idx} into ``out_dir``.

    Returns their paths (``prefix`` is the ``.bin/.idx`` path prefix for ``--data-path``).
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "jsonl": os.path.join(out_dir, "corpus.jsonl"),
        "tokenizer": os.path.join(out_dir, "tokenizer.model"),
        "prefix": os.path.join(out_dir, "corpus_text_document"),
    }
    t0 = time.time()
    n = write_jsonl(paths["jsonl"], max_docs=max_docs)
    t1 = time.time()
    train_tokenizer(paths["jsonl"], paths["tokenizer"], vocab_size=vocab_size)
    t2 = time.time()
    from pose_megatron.data.preprocess import preprocess

    preprocess(paths["jsonl"], os.path.join(out_dir, "corpus"), paths["tokenizer"],
                  append_eod=True, prepend_bos=True, workers=workers, quiet=quiet,
                  progress=False)
    t3 = time.time()
    if not quiet:
        print(f"{n} documents; corpus {t1 - t0:.1f} s, tokenizer {t2 - t1:.1f} s, "
              f"tokenize {t3 - t2:.1f} s; wrote {out_dir}")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pose_megatron.data.corpus",
        description="Build the bundled corpus from this Python's standard library sources: "
        "corpus.jsonl, a small sentencepiece tokenizer.model and the Megatron "
        "corpus_text_document.bin/.idx, all in --out.")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--vocab-size", type=int, default=2000,
                        help="sentencepiece vocabulary size (default 2000)")
    parser.add_argument("--max-docs", type=int, default=None,
                        help="keep only the first N files in sorted order (default: all)")
    parser.add_argument("--workers", type=int, default=1,
                        help="tokenizer processes for the .bin/.idx step (default 1)")
    from pose_megatron import errors

    errors.add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.vocab_size < 300:
        parser.error("--vocab-size must be >= 300 (256 byte pieces plus specials)")
    build_corpus(args.out, vocab_size=args.vocab_size, max_docs=args.max_docs,
                 workers=args.workers)
    return 0


if __name__ == "__main__":
    from pose_megatron import errors

    errors.run(main)
