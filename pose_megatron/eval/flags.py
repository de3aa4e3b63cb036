"""Command-line pieces shared by tools/eval_passkey.py and tools/eval_ppl.py."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

from pose_megatron import dtypes
from pose_megatron.eval.models import EvalModel, load_model, parse_rope_scaling
from pose_megatron.errors import UsageError
from pose_megatron.eval.plots import plot_curves
from pose_megatron.eval.report import format_table, read_results
from pose_megatron.publish import write_json


def make_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the docstring's first paragraph and epilog the rest."""
    from pose_megatron import errors

    return errors.add_debug_argument(argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(doc.split("\n\n")[1:]),
    ))


def parse_length(text: str) -> int:
    """``4096``, ``4k`` (= 4096) or ``1.5k`` (= 1536)."""
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * 1024 if t.endswith("k") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a length: {text!r} (e.g. 2048 or 2k)") from None
    if value <= 0 or not value.is_integer():
        raise argparse.ArgumentTypeError(f"lengths must be positive whole numbers, got {text!r}")
    return int(value)


def parse_lengths(values: Sequence[str]) -> List[int]:
    """Lengths given as separate arguments and/or comma lists, sorted and deduplicated."""
    out = {parse_length(v) for item in values for v in item.split(",") if v.strip()}
    if not out:
        raise argparse.ArgumentTypeError("--lengths needs at least one length")
    return sorted(out)


def parse_marks(values: Sequence[str]) -> Dict[str, int]:
    marks = {}
    for item in values:
        label, sep, length = item.rpartition("=")
        if not sep or not label:
            raise argparse.ArgumentTypeError(f"--mark wants LABEL=LENGTH, got {item!r}")
        marks[label] = parse_length(length)
    return marks


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", metavar="DIR",
                   help="a HF model directory (config.json, weights, tokenizer) or a pose_megatron "
                        "checkpoint directory (recognised by its pose_model.json); may be omitted "
                        "when --compare only re-plots earlier results")
    g.add_argument("--name", help="label of this model in the table, JSON and plot "
                                  "(default: the directory name)")
    g.add_argument("--tokenizer", metavar="PATH",
                   help="tokenizer: a sentencepiece .model file or a HF tokenizer directory; "
                        "defaults to --model for HF directories and to the checkpoint's "
                        "tokenizer/ directory (written by the converter) for Megatron checkpoints")
    g.add_argument("--rope-scaling", metavar="JSON",
                   help="override the model's RoPE scaling before loading, in HF form, e.g. "
                        "'{\"rope_type\":\"linear\",\"factor\":8}' or '{\"rope_type\":\"yarn\","
                        "\"factor\":8,\"original_max_position_embeddings\":2048}'; 'none' keeps "
                        "the model's own")
    g.add_argument("--device", default="auto",
                   help="auto (the GPU when present, else the CPU), cpu, cuda or cuda:N "
                        "(default: %(default)s)")
    g.add_argument("--dtype", default="auto", choices=["auto", *dtypes.NAMES],
                   help="weights/compute dtype; auto is float32 on CPU and bfloat16 on GPU "
                        "(default: %(default)s)")


def add_output_arguments(parser: argparse.ArgumentParser, default_stem: str) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--output-json", default=f"{default_stem}.json", metavar="PATH",
                   help="results file, written atomically (default: %(default)s)")
    g.add_argument("--plot", metavar="PATH",
                   help="PNG plot path (default: --output-json with .png)")
    g.add_argument("--compare", nargs="+", default=[], metavar="JSON",
                   help="earlier results files of this tool to include in the table and plot")
    g.add_argument("--mark", nargs="+", default=[], metavar="LABEL=LENGTH",
                   help="vertical lines on the plot, e.g. train=128 target=2048")


def plot_path(args) -> str:
    return args.plot or os.path.splitext(args.output_json)[0] + ".png"


def model_from_args(args) -> EvalModel:
    try:
        rope_scaling = parse_rope_scaling(args.rope_scaling)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return load_model(args.model, rope_scaling=rope_scaling, tokenizer_path=args.tokenizer,
                      device=args.device, dtype=args.dtype, name=args.name)


def model_entry(model: EvalModel) -> dict:
    return {"name": model.name, "path": os.path.abspath(model.path), "kind": model.kind,
            "rope_scaling": model.rope_scaling, "device": str(model.device)}


def lengths_marks_and_earlier(args, tool: str):
    """(lengths to evaluate, plot marks, earlier result entries of ``tool`` from --compare);
    bad values exit with a one-line error, as does a run with neither --model nor --compare."""
    if args.model is None and not args.compare:
        raise UsageError("give --model (to evaluate) and/or --compare (to re-plot)")
    try:
        lengths = parse_lengths(args.lengths) if args.model else []
        marks = parse_marks(args.mark)
        entries = [m for path in args.compare for m in read_results(path, tool)]
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return lengths, marks, entries


def report(
    entries: List[dict], args, marks: Dict[str, int], *, tool: str, column: str,
    cell: Callable[[dict], str], value: Callable[[dict], Optional[float]],
    note: Optional[Callable[[dict], Optional[str]]] = None, **plot_kwargs,
) -> None:
    """Print the length x model table, write the JSON results and the PNG plot.

    ``cell`` formats one per-length result for the table, ``value`` gives its plotted value
    (None: not plotted, e.g. a length marked n/a); ``note`` gives a line explaining a cell
    (printed under the table) or None; ``column`` names a model's column after the model name
    (e.g. "ppl").
    """
    lengths = sorted({r["length"] for e in entries for r in e["results"]})
    by_model = [{r["length"]: r for r in e["results"]} for e in entries]
    rows = [[L] + [cell(m[L]) if L in m else "-" for m in by_model] for L in lengths]
    print(format_table(["length"] + [f"{e['name']} {column}" for e in entries], rows))
    if note is not None:
        for e in entries:
            for r in e["results"]:
                text = note(r)
                if text:
                    print(f"{e['name']} length {r['length']}: {text}")
    # in the order the entries were made, as people read them
    write_json(args.output_json, {"tool": tool, "models": entries}, sort_keys=False)
    png = plot_curves(
        {e["name"]: [(r["length"], value(r)) for r in e["results"] if value(r) is not None]
         for e in entries},
        plot_path(args), vlines=marks, **plot_kwargs,
    )
    print(f"wrote {args.output_json}{f' and {png}' if png else ''}", file=sys.stderr)
