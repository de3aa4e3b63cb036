"""RULER-style synthetic long-context suite, offline (Hsieh et al., 2024).

For each task and length, --samples prompts of exactly that many tokens (the model's tokenizer,
BOS or the chat template included) are generated from the seed, the model answers greedily and
each answer is scored by RULER's string-match recall (the fraction of expected answers it
contains). Tasks, as named in RULER: niah_single_1..3, niah_multikey_1..3, niah_multivalue,
niah_multiquery (needle in a haystack), vt (variable tracking), cwe and fwe (common / frequent
words extraction). Prints a task x length table per model (with the average over tasks), writes
a JSON file and a heat-map PNG. Generation rules, templates and the departures from RULER are
documented in pose_megatron/eval/ruler.py.

Real-text haystacks (RULER's essays) come from --haystack, or by default from the bundled corpus
(this Python's standard library sources, see pose_megatron/data/corpus.py); nothing is downloaded.

Example:
  python tools/eval_ruler.py --model /work/cache/smollm2-135m-hf --lengths 1k 2k 4k \\
      --tasks niah_single_1 vt cwe --samples 20 --output-json results/ruler_base.json
  python tools/eval_ruler.py --model ... --lengths 16k --name yarn4 \\
      --rope-scaling '{"rope_type":"yarn","factor":4}' --compare results/ruler_base.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tqdm import tqdm

from pose_megatron import errors
from pose_megatron.errors import UsageError
from pose_megatron.eval import flags
from pose_megatron.eval.plots import plot_heatmaps
from pose_megatron.eval.prompting import chat_frame
from pose_megatron.eval.report import format_table
from pose_megatron.publish import write_json
from pose_megatron.eval.ruler import TASKS, Builder, load_haystack
from pose_megatron.eval.ruler_scoring import evaluate_task

TOOL = "eval_ruler"


def build_parser() -> argparse.ArgumentParser:
    p = flags.make_parser(__doc__)
    flags.add_model_arguments(p)
    g = p.add_argument_group("protocol")
    g.add_argument("--lengths", nargs="+", default=[], metavar="L",
                   help="prompt lengths in tokens, BOS / chat template included (space or comma "
                        "separated; '2k' = 2048)")
    g.add_argument("--tasks", nargs="+", default=["all"], metavar="TASK",
                   help=f"tasks to run (space or comma separated), or 'all' (default): "
                        f"{', '.join(TASKS)}")
    g.add_argument("--samples", type=int, default=20,
                   help="prompts per task and length (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0,
                   help="sample i of a task at length L is the same in every run with this seed "
                        "(default: %(default)s)")
    g.add_argument("--haystack", nargs="+", default=[], metavar="PATH",
                   help="real text for the essay-haystack tasks: text files, .jsonl files "
                        "(field --text-field) or Megatron .bin/.idx prefixes (decoded with the "
                        "model's tokenizer); default: the bundled corpus (stdlib sources)")
    g.add_argument("--text-field", default="text",
                   help="JSON field holding the text in .jsonl files (default: %(default)s)")
    g.add_argument("--chat-template", default="auto", choices=["auto", "on", "off"],
                   help="wrap each task in the tokenizer's chat template, as RULER wraps it in "
                        "the model's template: auto (when the tokenizer has one), on, off "
                        "(default: %(default)s)")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help="cap on generated tokens per answer (default: RULER's per task: NIAH "
                        "128, vt 30, cwe 120, fwe 50)")
    g.add_argument("--resume", action="store_true",
                   help="keep what this model (same --name and --seed) already has in "
                        "--output-json, down to single samples of an interrupted cell, and run "
                        "only the rest; other models in the file are kept. The file is rewritten "
                        "after every sample")
    flags.add_output_arguments(p, "ruler")
    return p


def parse_tasks(values) -> list:
    names = [v.strip() for item in values for v in item.split(",") if v.strip()]
    if "all" in names:
        return list(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise UsageError(f"--tasks: unknown {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(TASKS)}, all")
    return list(dict.fromkeys(names))


def earlier_run(path: str, name: str, seed: int):
    """For --resume: (task, length) -> result of model ``name`` (same seed) in ``path``, and the
    file's other model entries (kept in the rewritten file)."""
    if not os.path.isfile(path):
        return {}, []
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"--resume: cannot read {path} ({exc})") from None
    if data.get("tool") != TOOL:
        raise UsageError(f"--resume: {path} is not a results file written by {TOOL}")
    cells, others = {}, []
    for entry in data.get("models", []):
        if entry.get("name") != name:
            others.append(entry)
        elif entry.get("seed") == seed:
            cells = {(r["task"], r["length"]): r for r in entry["results"]}
    return cells, others


def print_tables(entries) -> None:
    for e in entries:
        lengths = sorted({r["length"] for r in e["results"]})
        tasks = task_order(e)
        cells = {(r["task"], r["length"]): r["score"] for r in e["results"]}
        rows = [[t] + [f"{cells[t, L]:.1f}" if (t, L) in cells else "-" for L in lengths]
                for t in tasks]
        means = []
        for L in lengths:
            column = [cells[t, L] for t in tasks if (t, L) in cells]
            means.append(f"{sum(column) / len(column):.1f}" if len(column) == len(tasks) else "-")
        rows.append(["average"] + means)
        samples = sorted({r["samples"] for r in e["results"]})
        print(f"{e['name']} (RULER score %, {'/'.join(map(str, samples))} samples per cell)")
        print(format_table(["task"] + [str(L) for L in lengths], rows))
        print()


def task_order(entry) -> list:
    """The entry's tasks in RULER's order (unknown names, from other versions, last)."""
    names = {r["task"] for r in entry["results"]}
    return [t for t in TASKS if t in names] + sorted(names - set(TASKS))


def merge_by_name(entries) -> list:
    """Entries of one model name (runs of different tasks or lengths, e.g. from several
    --compare files) become one; a (task, length) cell of a later entry replaces an earlier one."""
    merged = {}
    for e in entries:
        if e["name"] not in merged:
            merged[e["name"]] = dict(e, results=[])
        cells = {(r["task"], r["length"]): r for r in merged[e["name"]]["results"]}
        cells.update({(r["task"], r["length"]): r for r in e["results"]})
        merged[e["name"]]["results"] = list(cells.values())
    return list(merged.values())


def report(entries, args, marks) -> None:
    entries = merge_by_name(entries)
    print_tables(entries)
    write_json(args.output_json, {"tool": TOOL, "models": entries}, sort_keys=False)
    panels = {}
    for e in entries:
        lengths = sorted({r["length"] for r in e["results"]})
        tasks = task_order(e)
        cells = {(r["task"], r["length"]): r["score"] for r in e["results"]}
        panels[e["name"]] = (tasks, lengths, [[cells.get((t, L), float("nan")) for L in lengths]
                                              for t in tasks])
    png = plot_heatmaps(panels, flags.plot_path(args), vlines=marks,
                        title="RULER score (%) by task and prompt length")
    print(f"wrote {args.output_json}{f' and {png}' if png else ''}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.samples < 1:
        raise UsageError(f"--samples must be >= 1, got {args.samples}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    tasks = parse_tasks(args.tasks)
    lengths, marks, entries = flags.lengths_marks_and_earlier(args, TOOL)

    if args.model:
        try:
            model = flags.model_from_args(args)
            tok = model.tokenizer
            chat = chat_frame(tok.render_chat, args.chat_template)
            bos = None if chat is not None else model.bos_id
            needs_text = any(TASKS[t].params.get("haystack") == "essay" for t in tasks)
            haystack = load_haystack(args.haystack, tok.decode, args.text_field) \
                if needs_text else None
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        builder = Builder(tok.encode, tok.decode, bos, chat=chat, haystack=haystack,
                          seed=args.seed)
        done, others = earlier_run(args.output_json, model.name, args.seed) \
            if args.resume else ({}, [])
        entry = flags.model_entry(model)
        entry.update(seed=args.seed, samples=args.samples, chat_template=chat is not None,
                     haystack=haystack.source if haystack else None,
                     max_new_tokens=args.max_new_tokens, results=[])
        names = {e["name"] for e in entries}
        entries = [e for e in entries if e["name"] != model.name]
        entries += [e for e in others if e["name"] not in names] + [entry]
        start = time.time()
        cells = [(L, t) for L in lengths for t in tasks]
        # Cells of earlier runs that this run does not redo stay in the file.
        entry["results"] = [r for key, r in done.items()
                            if (key[1], key[0]) not in set(cells)]
        for n, (length, task) in enumerate(cells):
            earlier = done.get((task, length), {}).get("records", [])
            if len(earlier) >= args.samples:
                entry["results"].append({k: v for k, v in done[task, length].items()
                                         if k != "partial"})
                continue
            entry["results"].append({})

            def save(res, final=False):
                # Every finished sample is on disk: an interrupted run resumes with --resume.
                entry["results"][-1] = dict(res.to_dict(), **({} if final else {"partial": True}))
                entry["seconds"] = round(time.time() - start, 2)
                write_json(args.output_json, {"tool": TOOL, "models": entries}, sort_keys=False)

            try:
                res = evaluate_task(
                    model.greedy, builder, task, length, args.samples,
                    max_new_tokens=args.max_new_tokens, done=earlier, on_record=save,
                    progress=lambda it, L=length, t=task, n=n: tqdm(
                        it, desc=f"[{n + 1}/{len(cells)}] {model.name} {t}@{L}",
                        file=sys.stderr, leave=False),
                )
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            save(res, final=True)
            print(f"{model.name} {task}@{length}: {res.score:.1f}", file=sys.stderr)

    report(entries, args, marks)
    return 0


# what the pose-* console script, python -m and tools/ start
run = errors.command(main)


if __name__ == "__main__":
    run()
