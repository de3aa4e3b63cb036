"""Tokenize a JSONL corpus into Megatron's indexed dataset (``.bin``/``.idx``).

One document per line, ``{"text": "..."}`` (``--json-keys`` picks the fields; one dataset per
field is written to ``{output_prefix}_{key}_document.{bin,idx}``, Megatron's naming). Inputs may be
plain, gzip (``.gz``) or zstandard (``.zst``). The output is the one Megatron-LM's
``tools/preprocess_data.py`` writes for the same input and tokenizer, byte for byte: one sequence
per document, ``--append-eod`` adds EOS to every non-empty document, and a document with no tokens
stays an empty document (no sequence; ``--eod-for-empty-docs`` writes a one-token ``[EOD]``
sequence instead). Files are written under temporary names and renamed when complete, so a crash
never leaves a half-written dataset behind a valid name.

Throughput: the main process only cuts the input into blocks of whole lines (no JSON parsing);
workers parse a block, tokenize all its documents in one call into the tokenizer's native code and
send back one token array and one length array per key, which the main process writes in one
``write`` per block. Workers are forked (Linux) from a process that has loaded the tokenizer but
not yet Megatron-Core (imported while they work), so they start at once; at most four blocks per
worker are in flight (memory stays flat on any input size); every worker is joined before
``preprocess`` returns or raises.

Example::

    python tools/preprocess_data.py --input corpus.jsonl.zst --output-prefix data/pile \\
        --tokenizer llama2/tokenizer.model --append-eod --workers 8
"""

from __future__ import annotations

import argparse
import gzip
import io
import itertools
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from pose_megatron.errors import UsageError

DEFAULT_BLOCK_BYTES = 1 << 20


def open_binary(path: str):
    """Open a JSONL file as bytes, decompressing ``.gz`` / ``.zst`` by extension."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError as err:
            raise UsageError(f"{path}: reading .zst needs the zstandard package") from err
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True,
                                                           closefd=True)
    return open(path, "rb")


def open_text(path: str):
    """Open a JSONL file as UTF-8 text, decompressing ``.gz`` / ``.zst`` by extension."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8")


def parse_record(path: str, lineno: int, line, keys: Sequence[str],
                 flag: str = "--json-keys") -> Dict[str, str]:
    """{key: text} of one JSONL line (str or UTF-8 bytes); errors name file, line and ``flag``."""
    try:
        record = json.loads(line)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({err})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({err})") from err
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    texts = {}
    for key in keys:
        if key not in record:
            raise ValueError(f"{path}:{lineno}: no {key!r} field (has {sorted(record)}; "
                             f"see {flag})")
        if not isinstance(record[key], str):
            raise ValueError(f"{path}:{lineno}: {key!r} is {type(record[key]).__name__}, "
                             f"not a string")
        texts[key] = record[key]
    return texts


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
            if line.strip():
                yield lineno, parse_record(path, lineno, line, keys, flag)


def read_blocks(path: str, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[Tuple[int, bytes]]:
    """(number of its first line, bytes) for consecutive blocks of whole lines of ``path``, each
    about ``block_bytes`` long (a longer line makes a block of its own)."""
    with open_binary(path) as f:
        lineno, tail = 1, b""
        while True:
            try:
                chunk = f.read(block_bytes)
            except (OSError, EOFError) as err:
                raise ValueError(f"{path}: unreadable after line {lineno - 1}: {err}") from err
            if not chunk:
                if tail:
                    yield lineno, tail
                return
            if tail:
                chunk = tail + chunk
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                tail = chunk
                continue
            block, tail = (chunk, b"") if cut == len(chunk) else (chunk[:cut], chunk[cut:])
            yield lineno, block
            lineno += block.count(b"\n")


class BlockEncoder:
    """Turns a block of JSONL lines into, per key, the block's tokens (one int32 array, documents
    back to back) and its document lengths (int64, 0 for an empty document).

    Picklable without its tokenizer (reloaded from ``tokenizer_path`` where workers are spawned).
    """

    def __init__(self, path: str, keys: Sequence[str], tokenizer_path: str,
                 *, append_eod: bool, prepend_bos: bool, eod_for_empty_docs: bool,
                 tokenizer=None):
        self.path, self.keys, self.tokenizer_path = path, list(keys), tokenizer_path
        self.append_eod, self.prepend_bos = append_eod, prepend_bos
        self.eod_for_empty_docs = eod_for_empty_docs
        self.tokenizer = tokenizer

    def __getstate__(self):
        return {**self.__dict__, "tokenizer": None}

    def _load(self):
        if self.tokenizer is None:
            from pose_megatron.data.text_tokenizer import LocalTokenizer

            self.tokenizer = LocalTokenizer(self.tokenizer_path)
        return self.tokenizer

    def __call__(self, item: Tuple[int, bytes]) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        first_lineno, block = item
        tokenizer = self._load()
        texts: Dict[str, List[str]] = {key: [] for key in self.keys}
        for offset, line in enumerate(block.split(b"\n")):
            if line.strip():
                record = parse_record(self.path, first_lineno + offset, line, self.keys)
                for key in self.keys:
                    texts[key].append(record[key])
        out = {}
        for key in self.keys:
            docs = tokenizer.tokenize_batch(texts[key]) if texts[key] else []
            bos, eod = tokenizer.bos, tokenizer.eod
            for ids in docs:
                # Megatron-LM's rule: EOD closes a non-empty document; an empty one stays empty.
                if ids:
                    if self.prepend_bos:
                        ids.insert(0, bos)
                    if self.append_eod:
                        ids.append(eod)
                elif self.eod_for_empty_docs:
                    ids.append(eod)
            lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
            try:
                tokens = np.fromiter(itertools.chain.from_iterable(docs), dtype=np.int32,
                                     count=int(lengths.sum()))
            except OverflowError as err:
                raise ValueError(f"{self.path}: block at line {first_lineno}: token id out of "
                                 f"range ({err})") from err
            out[key] = (tokens, lengths)
        return out


class DocumentWriter:
    """Appends blocks of documents to a Megatron-Core ``IndexedDatasetBuilder``: the same files as
    ``add_document(doc, [len(doc)] if len(doc) else [])`` per document (Megatron-LM's lengths:
    an empty document has no sequence), with one write per block instead of one per document."""

    def __init__(self, bin_path: str, dtype):
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.builder = IndexedDatasetBuilder(bin_path, dtype=dtype)
        self.dtype = np.dtype(dtype)

    def append(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """``tokens``: int32 ids of the documents back to back; raises ValueError if one does
        not fit the dataset's dtype."""
        limit = np.iinfo(self.dtype).max
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > limit):
            raise ValueError(f"token id out of range for {self.dtype.name}")
        builder = self.builder
        builder.data_file.write(memoryview(tokens.astype(self.dtype, copy=False)))
        nonempty = lengths > 0
        builder.sequence_lengths.extend(lengths[nonempty].tolist())
        before = builder.document_indices[-1]  # sequences written before this block
        builder.document_indices.extend((before + np.cumsum(nonempty)).tolist())

    def finalize(self, idx_path: str) -> None:
        self.builder.finalize(idx_path)

    def close(self) -> None:
        self.builder.data_file.close()


class BoundedFeed:
    """Iterates ``items``, each taken only once a slot is free (``release`` one per result): a
    pool's task feeder would otherwise read the whole input into memory ahead of the workers."""

    def __init__(self, items: Iterator, slots: int):
        self.items, self.slots, self.stopped = items, threading.Semaphore(slots), False

    def __iter__(self):
        for item in self.items:
            self.slots.acquire()
            if self.stopped:
                return
            yield item

    def release(self) -> None:
        self.slots.release()

    def stop(self) -> None:
        """Let a feeder blocked on a slot finish (a pool's terminate joins it)."""
        self.stopped = True
        self.slots.release()


def _set_worker_encoder(encoder: BlockEncoder) -> None:
    global _worker_encoder
    # Ctrl-C reaches the whole process group: the main process alone handles it (and stops the
    # workers), instead of every worker printing its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_encoder = encoder


def _encode_in_worker(item):
    return _worker_encoder(item)


def _start_method() -> str:
    # Fork shares the loaded tokenizer and skips re-importing torch/Megatron in every worker
    # (seconds of CPU each); spawn where fork is not the platform's safe choice.
    return "fork" if sys.platform.startswith("linux") else "spawn"


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
    eod_for_empty_docs: bool = False,
    workers: int = 1,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    progress: Optional[bool] = None,
    quiet: bool = False,
) -> Dict[str, dict]:
    """Write ``{output_prefix}_{key}_document.{bin,idx}`` per key; return a summary per key."""
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"--input {input_path!r} does not exist")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if block_bytes < 1:
        raise ValueError(f"--block-size must be >= 1, got {block_bytes}")
    if eod_for_empty_docs and not append_eod:
        raise ValueError("--eod-for-empty-docs needs --append-eod")
    from pose_megatron.data.text_tokenizer import LocalTokenizer

    tokenizer = LocalTokenizer(tokenizer_path)
    if append_eod and tokenizer.eod < 0:
        raise ValueError(f"--append-eod: tokenizer {tokenizer_path} has no EOS token")
    if prepend_bos and tokenizer.bos < 0:
        raise ValueError(f"--prepend-bos: tokenizer {tokenizer_path} has no BOS token")
    encoder = BlockEncoder(input_path, json_keys, tokenizer_path, append_eod=append_eod,
                           prepend_bos=prepend_bos, eod_for_empty_docs=eod_for_empty_docs,
                           tokenizer=tokenizer)

    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    final, writers, lengths = {}, {}, {key: [] for key in json_keys}
    if progress is None:
        progress = sys.stderr.isatty()
    start = time.time()
    pool = None
    blocks = BoundedFeed(read_blocks(input_path, block_bytes), 4 * workers)
    try:
        if workers == 1:
            encoded = map(encoder, blocks)
        else:
            # Workers start before this process imports Megatron-Core (seconds of CPU), so they
            # tokenize while it does.
            pool = multiprocessing.get_context(_start_method()).Pool(
                workers, initializer=_set_worker_encoder, initargs=(encoder,))
            encoded = pool.imap(_encode_in_worker, blocks)
        from megatron.core.datasets.indexed_dataset import DType

        from pose_megatron import publish

        dtype = DType.optimal_dtype(tokenizer.vocab_size)
        for key in json_keys:
            prefix = f"{output_prefix}_{key}_document"
            publish.clean_stale_files(prefix)  # left by killed runs
            tmp = publish.temp_file_prefix(prefix)
            writers[key] = DocumentWriter(tmp + ".bin", dtype)
            final[key] = (prefix, tmp)
        from tqdm import tqdm

        with tqdm(desc=f"tokenize {os.path.basename(input_path)}", unit="doc",
                  disable=not progress) as bar:
            for per_key in encoded:
                blocks.release()
                for key, (tokens, doc_lengths) in per_key.items():
                    try:
                        writers[key].append(tokens, doc_lengths)
                    except ValueError as err:
                        raise ValueError(f"{input_path}: after document "
                                         f"{sum(map(len, lengths[key]))}: {err}") from err
                    lengths[key].append(doc_lengths)
                bar.update(len(next(iter(per_key.values()))[1]))
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        for key in json_keys:
            if not sum(map(len, lengths[key])):
                raise ValueError(f"{input_path}: empty corpus (no JSON lines with {key!r})")
            prefix, tmp = final[key]
            writers[key].finalize(tmp + ".idx")
            publish.move_into_place(tmp + ".bin", prefix + ".bin")
            publish.move_into_place(tmp + ".idx", prefix + ".idx")
    finally:
        blocks.stop()
        if pool is not None:
            pool.terminate()
            pool.join()
        for key, (_, tmp) in final.items():
            writers[key].close()
            for ext in (".bin", ".idx"):
                if os.path.exists(tmp + ext):
                    os.unlink(tmp + ext)

    elapsed = time.time() - start
    summary = {}
    for key in json_keys:
        lens = np.concatenate(lengths[key])
        summary[key] = {
            "prefix": final[key][0], "documents": int(lens.size), "tokens": int(lens.sum()),
            "empty_documents": int((lens == 0).sum()),
            "mean_length": float(lens.mean()), "max_length": int(lens.max()),
            "histogram": length_histogram(lens), "seconds": elapsed,
            "dtype": np.dtype(dtype).name,
        }
        if not quiet:
            s = summary[key]
            print(f"{s['prefix']}.{{bin,idx}}: {s['documents']} documents "
                  f"({s['empty_documents']} empty), {s['tokens']} tokens "
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
                        help="append the tokenizer's EOS token to every non-empty document "
                        "(needed to separate documents that --short-docs pack concatenates)")
    parser.add_argument("--eod-for-empty-docs", action="store_true",
                        help="with --append-eod, write a one-token [EOD] sequence for a document "
                        "that has no tokens (default: keep it as an empty document with no "
                        "sequence, as Megatron-LM's tools/preprocess_data.py does)")
    parser.add_argument("--prepend-bos", action="store_true",
                        help="prepend the tokenizer's BOS token to every non-empty document "
                        "(LLaMA style; PoSE keeps position 0 for the first token)")
    parser.add_argument("--workers", type=int, default=1,
                        help="tokenizer processes, one core each (default 1: tokenize in this "
                        "process)")
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_BYTES,
                        help="bytes of input lines handed to a worker at a time "
                        f"(default {DEFAULT_BLOCK_BYTES})")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from pose_megatron import errors

    errors.add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        preprocess(args.input, args.output_prefix, args.tokenizer, json_keys=args.json_keys,
                   append_eod=args.append_eod, prepend_bos=args.prepend_bos,
                   eod_for_empty_docs=args.eod_for_empty_docs, workers=args.workers,
                   block_bytes=args.block_size, progress=False if args.no_progress else None)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    from pose_megatron import errors

    errors.run(main)
