"""Tokenize a JSONL corpus into Megatron's indexed dataset (``.bin``/``.idx``).

One document per line, ``{"text": "..."}`` (``--json-keys`` picks the fields; one dataset per
field is written to ``{output_prefix}_{key}_document.{bin,idx}``, Megatron's naming). Inputs may be
plain, gzip (``.gz``) or zstandard (``.zst``). Files are written through Megatron-Core's own
``IndexedDatasetBuilder`` under temporary names and renamed when complete, so a crash never
leaves a half-written dataset behind a valid name.

Example::

    python tools/preprocess_data.py --input corpus.jsonl.zst --output-prefix data/pile \\
        --tokenizer llama2/tokenizer.model --append-eod --workers 8
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import multiprocessing
import os
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

_tokenizer = None
_options = None


def open_text(path: str):
    """Open a JSONL file, decompressing ``.gz`` / ``.zst`` by extension."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError as err:
            raise SystemExit(f"{path}: reading .zst needs the zstandard package") from err
        raw = open(path, "rb")
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8")
    return open(path, "rt", encoding="utf-8")


def read_documents(
    path: str, keys: Sequence[str], flag: str = "--json-keys"
) -> Iterator[Tuple[int, Dict[str, str]]]:
    """(line number, {key: text}) for every non-blank line of a JSONL file (plain, .gz, .zst);
    clear errors name file and line, and ``flag``, the option that picks the keys."""
    with open_text(path) as f:
        lineno = 0
        while True:
            try:
                line = f.readline()
            except (OSError, EOFError, UnicodeDecodeError) as err:
                raise ValueError(f"{path}: unreadable after line {lineno}: {err}") from err
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, "
                                 f"got {type(record).__name__}")
            texts = {}
            for key in keys:
                if key not in record:
                    raise ValueError(f"{path}:{lineno}: no {key!r} field (has {sorted(record)}; "
                                     f"see {flag})")
                if not isinstance(record[key], str):
                    raise ValueError(f"{path}:{lineno}: {key!r} is {type(record[key]).__name__}, "
                                     f"not a string")
                texts[key] = record[key]
            yield lineno, texts


def _init_worker(tokenizer_path: str, append_eod: bool, prepend_bos: bool) -> None:
    global _tokenizer, _options
    from pose_megatron.data.tokenizers import load_tokenizer

    _tokenizer = load_tokenizer(tokenizer_path)
    _options = (append_eod, prepend_bos)


def _encode(item: Tuple[int, Dict[str, str]]) -> Tuple[int, Dict[str, List[int]]]:
    lineno, texts = item
    append_eod, prepend_bos = _options
    out = {}
    for key, text in texts.items():
        ids = list(_tokenizer.tokenize(text))
        if prepend_bos:
            ids.insert(0, _tokenizer.bos)
        if append_eod:
            ids.append(_tokenizer.eod)
        out[key] = ids
    return lineno, out


def length_histogram(lengths: np.ndarray) -> List[Tuple[str, int]]:
    """Counts per power-of-two bucket: [0], [1, 2), [2, 4), ... up to the longest document."""
    rows = [("0", int((lengths == 0).sum()))]
    top = int(lengths.max()) if lengths.size else 0
    lo = 1
    while lo <= top:
        hi = lo * 2
        rows.append((f"{lo}-{hi - 1}", int(((lengths >= lo) & (lengths < hi)).sum())))
        lo = hi
    return rows


def preprocess(
    input_path: str,
    output_prefix: str,
    tokenizer_path: str,
    *,
    json_keys: Sequence[str] = ("text",),
    append_eod: bool = False,
    prepend_bos: bool = False,
    workers: int = 1,
    chunk_size: int = 32,
    progress: Optional[bool] = None,
    quiet: bool = False,
) -> Dict[str, dict]:
    """Write ``{output_prefix}_{key}_document.{bin,idx}`` per key; return a summary per key."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    from pose_megatron.data.tokenizers import load_tokenizer

    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"--input {input_path!r} does not exist")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    tokenizer = load_tokenizer(tokenizer_path)
    if append_eod and tokenizer.eod < 0:
        raise ValueError(f"--append-eod: tokenizer {tokenizer_path} has no EOS token")
    if prepend_bos and tokenizer.bos < 0:
        raise ValueError(f"--prepend-bos: tokenizer {tokenizer_path} has no BOS token")
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    limit = np.iinfo(dtype).max

    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    final, builders, lengths = {}, {}, {}
    for key in json_keys:
        prefix = f"{output_prefix}_{key}_document"
        tmp = f"{prefix}.tmp-{os.getpid()}"
        final[key] = (prefix, tmp)
        builders[key] = IndexedDatasetBuilder(tmp + ".bin", dtype=dtype)
        lengths[key] = []

    if progress is None:
        progress = sys.stderr.isatty()
    start = time.time()
    docs = read_documents(input_path, json_keys)
    pool = None
    try:
        if workers == 1:
            _init_worker(tokenizer_path, append_eod, prepend_bos)
            encoded = map(_encode, docs)
        else:
            pool = multiprocessing.get_context("spawn").Pool(
                workers, initializer=_init_worker,
                initargs=(tokenizer_path, append_eod, prepend_bos))
            encoded = pool.imap(_encode, docs, chunksize=chunk_size)
        from tqdm import tqdm

        for lineno, per_key in tqdm(encoded, desc=f"tokenize {os.path.basename(input_path)}",
                                    unit="doc", disable=not progress):
            for key, ids in per_key.items():
                array = np.asarray(ids, dtype=np.int64)
                if array.size and (array.min() < 0 or array.max() > limit):
                    raise ValueError(f"{input_path}:{lineno}: token id out of range for "
                                     f"{dtype.__name__}")
                builders[key].add_document(array.astype(dtype), [array.size])
                lengths[key].append(array.size)
        for key in json_keys:
            if not lengths[key]:
                raise ValueError(f"{input_path}: empty corpus (no JSON lines with {key!r})")
            prefix, tmp = final[key]
            builders[key].finalize(tmp + ".idx")
            os.replace(tmp + ".bin", prefix + ".bin")
            os.replace(tmp + ".idx", prefix + ".idx")
    finally:
        if pool is not None:
            pool.terminate()
        for key in json_keys:
            _, tmp = final[key]
            builders[key].data_file.close()
            for ext in (".bin", ".idx"):
                if os.path.exists(tmp + ext):
                    os.unlink(tmp + ext)

    elapsed = time.time() - start
    summary = {}
    for key in json_keys:
        lens = np.asarray(lengths[key], dtype=np.int64)
        summary[key] = {
            "prefix": final[key][0], "documents": int(lens.size), "tokens": int(lens.sum()),
            "mean_length": float(lens.mean()), "max_length": int(lens.max()),
            "histogram": length_histogram(lens), "seconds": elapsed, "dtype": dtype.__name__,
        }
        if not quiet:
            s = summary[key]
            print(f"{s['prefix']}.{{bin,idx}}: {s['documents']} documents, {s['tokens']} tokens "
                  f"(mean {s['mean_length']:.1f}, max {s['max_length']}), {s['dtype']}, "
                  f"{elapsed:.1f} s ({s['documents'] / max(elapsed, 1e-9):.0f} docs/s)")
            print("  document length histogram (tokens: documents)")
            for bucket, count in s["histogram"]:
                print(f"  {bucket:>15}: {count}")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Tokenize a JSONL corpus (plain, .gz or .zst) into Megatron-Core .bin/.idx "
        "files, one dataset per JSON key: {output-prefix}_{key}_document.{bin,idx}.")
    parser.add_argument("--input", required=True,
                        help="JSONL file, one JSON object per line; .gz and .zst are decompressed")
    parser.add_argument("--output-prefix", required=True,
                        help="path prefix of the outputs; '_{key}_document.bin/.idx' is appended")
    parser.add_argument("--tokenizer", required=True,
                        help="a sentencepiece .model file, or a Hugging Face tokenizer directory "
                        "(local files only, no remote code)")
    parser.add_argument("--json-keys", nargs="+", default=["text"],
                        help="JSON fields to tokenize, one output dataset each (default: text)")
    parser.add_argument("--append-eod", action="store_true",
                        help="append the tokenizer's EOS token to every document (needed to "
                        "separate documents that --short-docs pack concatenates)")
    parser.add_argument("--prepend-bos", action="store_true",
                        help="prepend the tokenizer's BOS token to every document (LLaMA style; "
                        "PoSE keeps position 0 for the first token)")
    parser.add_argument("--workers", type=int, default=1,
                        help="tokenizer processes (default 1: tokenize in this process)")
    parser.add_argument("--chunk-size", type=int, default=32,
                        help="documents handed to a worker at a time (default 32)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        preprocess(args.input, args.output_prefix, args.tokenizer, json_keys=args.json_keys,
                   append_eod=args.append_eod, prepend_bos=args.prepend_bos,
                   workers=args.workers, chunk_size=args.chunk_size,
                   progress=False if args.no_progress else None)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
