"""Sliding-window perplexity vs evaluation length (the PoSE paper's Table 1 protocol).

At each length L, every document is cut into windows of [BOS] + (L-1) tokens that advance by
--stride tokens; each window scores only the tokens the previous window did not, so every token
is scored once with up to L-1 tokens of context. Perplexity is exp of the token-weighted mean NLL
over all documents. Prints a table, writes a JSON file and a PNG plot of perplexity vs length.
The window math is documented in pose_megatron/eval/perplexity.py.

Lengths the documents cannot fill: a length L needs a document of at least L-1 tokens (one full
window). When no document is that long, L is not evaluated: its cell reads "n/a", a line under
the table says how long the longest document is, and its JSON result has "ppl": null and a
"skipped" reason. When only some documents fill L, the others are still scored (with less
context) and the cell is marked "*" with a line saying how many; "full_documents" in the JSON
counts the ones that fill it (use --min-doc-tokens L-1 to score only those). If no length can be
evaluated the tool stops with an error before loading any window.

Data: Megatron .bin/.idx prefixes (tokenised with the model's tokenizer), .jsonl files (one
document per line, field --text-field) or plain text files (one document each).

Example:
  python tools/eval_ppl.py --model out/pose-yarn-hf --data data/val_text_document \\
      --lengths 128 512 1k 2k --stride 64 --num-docs 20 --output-json results/ppl_pose.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from tqdm import tqdm

from pose_megatron import errors
from pose_megatron.errors import UsageError
from pose_megatron.eval import flags
from pose_megatron.eval.documents import load_documents
from pose_megatron.eval.perplexity import perplexity

TOOL = "eval_ppl"


def build_parser() -> argparse.ArgumentParser:
    p = flags.make_parser(__doc__)
    flags.add_model_arguments(p)
    g = p.add_argument_group("protocol")
    g.add_argument("--data", nargs="+", default=[], metavar="PATH",
                   help="evaluation documents: Megatron prefixes (PREFIX, PREFIX.bin or "
                        "PREFIX.idx), .jsonl files or text files")
    g.add_argument("--text-field", default="text",
                   help="JSON field holding the text in .jsonl files (default: %(default)s)")
    g.add_argument("--lengths", nargs="+", default=[], metavar="L",
                   help="evaluation lengths (window sizes in tokens, BOS included; space or "
                        "comma separated; '2k' = 2048); a length no document fills is "
                        "reported n/a (see above)")
    g.add_argument("--stride", type=int, default=1024,
                   help="tokens a window advances by (default: %(default)s, the paper's Table 1). "
                        "At a length L <= stride the windows cannot overlap and the stride "
                        "becomes L-1 (non-overlapping windows); the JSON records the stride used")
    g.add_argument("--num-docs", type=int, default=None,
                   help="evaluate the first N documents that pass --min-doc-tokens "
                        "(default: all)")
    g.add_argument("--min-doc-tokens", type=int, default=1,
                   help="skip documents shorter than this (default: %(default)s)")
    g.add_argument("--max-doc-tokens", type=int, default=None,
                   help="truncate documents to this many tokens (default: no truncation)")
    flags.add_output_arguments(p, "ppl")
    return p


def _partial(r: dict) -> bool:
    return r.get("full_documents", r.get("documents", 0)) < r.get("documents", 0)


def _cell(r: dict) -> str:
    if r["ppl"] is None:
        return "n/a"
    return f"{r['ppl']:.3f}" + ("*" if _partial(r) else "")


def _note(r: dict):
    if r["ppl"] is None:
        return r.get("skipped", "n/a")
    if _partial(r):
        short = r["documents"] - r["full_documents"]
        return (f"* {short} of {r['documents']} documents are shorter than {r['length'] - 1} "
                f"tokens: scored with less context than the length")
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.stride < 1:
        raise UsageError(f"--stride must be >= 1, got {args.stride}")
    for flag in ("num_docs", "max_doc_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    lengths, marks, entries = flags.lengths_marks_and_earlier(args, TOOL)
    if args.model and not args.data:
        raise UsageError("--data is required with --model")
    if lengths and min(lengths) < 2:
        raise UsageError(f"--lengths must be >= 2 (BOS + one token), got {min(lengths)}")

    if args.model:
        try:
            model = flags.model_from_args(args)
            bos = model.bos_id
            tok = model.tokenizer
            docs = load_documents(
                args.data, tok.encode,
                vocab_size=model.info.get("vocab_size") or tok.vocab_size,
                bos_id=tok.bos_id, eos_id=tok.eos_id, text_field=args.text_field,
                min_tokens=args.min_doc_tokens, max_tokens=args.max_doc_tokens,
                max_documents=args.num_docs,
            )
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        if not docs:
            raise UsageError(f"no document in {args.data} has >= {args.min_doc_tokens} "
                             "tokens")
        print(f"{len(docs)} documents, {sum(len(d) for d in docs)} tokens", file=sys.stderr)
        longest = max(len(d) for d in docs)
        if all(longest < length - 1 for length in lengths):
            raise UsageError(
                f"--lengths: no length can be evaluated: the longest document of --data "
                f"has {longest} tokens, and a length L needs a document of L-1 tokens (up to "
                f"{longest + 1} here)")
        results = []
        start = time.time()
        for length in lengths:
            stride = min(args.stride, length - 1)
            if longest < length - 1:
                reason = (f"n/a: the longest document has {longest} tokens; length {length} "
                          f"needs {length - 1}")
                print(f"length {length}: {reason}", file=sys.stderr)
                results.append({"length": length, "stride": stride, "ppl": None,
                                "documents": len(docs), "full_documents": 0,
                                "skipped": reason})
                continue
            if stride != args.stride:
                print(f"length {length}: --stride {args.stride} would skip tokens; using "
                      f"{stride} (non-overlapping windows)", file=sys.stderr)
            res = perplexity(
                model.logits, docs, length, stride, bos,
                progress=lambda it, L=length: tqdm(it, desc=f"{model.name} ppl@{L}",
                                                   unit="window", file=sys.stderr, leave=False),
            )
            print(f"{model.name} length {length}: ppl {res.ppl:.4f} over {res.n_tokens} tokens",
                  file=sys.stderr)
            results.append({**res.to_dict(),
                            "full_documents": sum(len(d) >= length - 1 for d in docs)})
        entry = flags.model_entry(model)
        entry.update(data=[os.path.abspath(d) for d in args.data], documents=len(docs),
                     min_doc_tokens=args.min_doc_tokens, max_doc_tokens=args.max_doc_tokens,
                     seconds=round(time.time() - start, 2), results=results)
        entries.append(entry)

    flags.report(entries, args, marks, tool=TOOL, column="ppl", cell=_cell, value=lambda r: r["ppl"],
               note=_note,
               xlabel="evaluation length (tokens)", ylabel="perplexity",
               title="Sliding-window perplexity", log_y=True)
    return 0


# what the pose-* console script, python -m and tools/ start
run = errors.command(main)


if __name__ == "__main__":
    run()
