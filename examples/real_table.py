#!/usr/bin/env python
"""Tables and plot of examples/reproduce_real.sh's result files.

  python examples/real_table.py RESULTS_DIR [--logs LOGS_DIR] [--plot PNG]

Reads every result file the script writes (``ppl_<method>_<L>.json`` on the licences,
``ppl_pydoc_<method>_<L>.json`` on the second held-out text, ``passkey_<method>_<L>.json``,
``ruler_<method>_<L>.json``) and prints markdown tables: perplexity per text, passkey as
correct/trials with a 95% Wilson interval, RULER niah_single_2, and each training arm's steps,
minutes of steps and peak memory from LOGS_DIR. Cells not measured yet are "-". The plot
(default RESULTS_DIR/real_model.png) is skipped with one line when matplotlib is missing.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys

METHODS = (("base", "base, no scaling"), ("yarn_only", "YaRN x4, no training"),
           ("control_yarn", "YaRN x4 fine-tuned, no skips (control)"),
           ("pose_yarn", "PoSE-YaRN x4"))
WINDOW = 8192


def wilson(k: int, n: int, z: float = 1.959964) -> tuple:
    """95% Wilson score interval of k successes in n trials."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _entries(path: str):
    data = json.load(open(path))
    return data["models"] if "models" in data else [data]


def collect(results: str) -> dict:
    """{kind: {method: {length: value}}}; kinds ppl, ppl_pydoc, passkey, ruler."""
    cells = {"ppl": {}, "ppl_pydoc": {}, "passkey": {}, "ruler": {}}
    for path in sorted(glob.glob(os.path.join(results, "*.json"))):
        base = os.path.basename(path)
        kind = ("ppl_pydoc" if base.startswith("ppl_pydoc_") else
                next((k for k in ("ppl", "passkey", "ruler") if base.startswith(k + "_")), None))
        if kind is None:
            continue
        for model in _entries(path):
            for r in model["results"]:
                if kind.startswith("ppl"):
                    value = r["ppl"]
                elif kind == "passkey":
                    value = (r["correct"], r["trials"])
                else:
                    value = r.get("score", r.get("accuracy"))
                    if value is None:
                        continue
                cells[kind].setdefault(model["name"], {})[r.get("length")] = value
    return cells


def training(logs: str, arm: str) -> str:
    log, timing = os.path.join(logs, f"{arm}.jsonl"), os.path.join(logs, f"{arm}.time")
    if not os.path.exists(log):
        return "-"
    steps = {}
    for line in open(log):  # a step redone after a kill: its last record counts
        rec = json.loads(line)
        steps[rec["iteration"]] = rec["step_time_s"]
    rss = ([json.loads(line)["max_rss_kb"] for line in open(timing)]
           if os.path.exists(timing) else [])
    peak = f", {max(rss) / 2**20:.1f} GiB peak RSS" if rss else ""
    return f"{len(steps)} steps, {sum(steps.values()) / 60:.0f} min of steps{peak}"


def table(title: str, by_method: dict, fmt) -> list:
    lengths = sorted({L for v in by_method.values() for L in v})
    if not lengths:
        return []
    lines = [f"**{title}**", "", "| method | " + " | ".join(str(L) for L in lengths) + " |",
             "|---" * (1 + len(lengths)) + "|"]
    for name, label in METHODS:
        row = by_method.get(name, {})
        lines.append(f"| {label} | " + " | ".join(fmt(row[L]) if L in row else "-"
                                                  for L in lengths) + " |")
    return lines + [""]


def passkey_cell(value) -> str:
    k, n = value
    lo, hi = wilson(k, n)
    return f"{k}/{n} [{100 * lo:.0f}-{100 * hi:.0f}%]"


def plot(cells: dict, png: str) -> None:
    from pose_megatron.eval.plots import pyplot, save

    plt = pyplot(png)  # None, and one line, without matplotlib
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (("ppl", "perplexity: licences (first L tokens)"),
              ("ppl_pydoc", "perplexity: Python reference prose"),
              ("passkey", "passkey retrieval, % (95% Wilson)"))
    for ax, (kind, title) in zip(axes, panels):
        for name, label in METHODS:
            pts = sorted(cells[kind].get(name, {}).items())
            if not pts:
                continue
            xs = [L for L, _ in pts]
            if kind == "passkey":
                ys = [100 * k / n for _, (k, n) in pts]
                ci = [wilson(k, n) for _, (k, n) in pts]
                err = [[y - 100 * lo for y, (lo, _) in zip(ys, ci)],
                       [100 * hi - y for y, (_, hi) in zip(ys, ci)]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
            else:
                ax.plot(xs, [v for _, v in pts], marker="o", label=label)
        ax.axvline(WINDOW, color="grey", linestyle=":", label=f"model's window ({WINDOW})")
        ax.set_xlabel("L (tokens)")
        ax.set_title(title, fontsize=10)
    axes[2].set_ylim(-5, 105)
    axes[0].legend(fontsize=7)
    fig.suptitle("SmolLM2-135M-Instruct extended past its window (examples/reproduce_real.sh)")
    fig.tight_layout()
    print(f"wrote {save(fig, png)}", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="the script's results directory")
    p.add_argument("--logs", default=None, help="the script's logs directory (training rows)")
    p.add_argument("--plot", default=None, help="PNG path (default RESULTS/real_model.png)")
    opts = p.parse_args(argv)
    cells = collect(opts.results)
    lines = []
    lines += table("Perplexity, licences (the held-out text of the training data's kind)",
                   cells["ppl"], lambda v: f"{v:.2f}")
    lines += table("Perplexity, Python Language Reference prose (another kind of text)",
                   cells["ppl_pydoc"], lambda v: f"{v:.2f}")
    lines += table("Passkey retrieval: correct/trials [95% Wilson interval]",
                   cells["passkey"], passkey_cell)
    lines += table("RULER niah_single_2, % of samples", cells["ruler"], lambda v: f"{v:.0f}")
    if opts.logs:
        lines += ["**Training** (window 2048, global batch 1, lr 2e-5, 10 warm-up steps)", "",
                  "| arm | training |", "|---|---|"]
        lines += [f"| {arm} | {training(opts.logs, arm)} |"
                  for arm in ("pose_yarn", "control_yarn")]
    print("\n".join(lines))
    plot(cells, opts.plot or os.path.join(opts.results, "real_model.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
