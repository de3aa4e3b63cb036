#!/usr/bin/env python
"""Tables and plot of examples/reproduce_real.sh's result files.

  python examples/real_table.py RESULTS_DIR [--logs LOGS_DIR] [--plot PNG]

Reads every result file the script writes (``ppl_<method>_<L>.json`` on the licences,
``ppl_pydoc_<method>_<L>.json`` on the second held-out text, ``passkey_<method>_<L>.json``,
``ruler_<method>_<L>.json``) and prints markdown tables: perplexity per text, passkey as
correct/trials with a 95% Wilson interval, RULER niah_single_2, and each training arm's steps,
minutes of steps and peak memory from LOGS_DIR. Cells not measured yet are "-".

PoSE against the control, paired (both score the same tokens and answer the same prompts):
- perplexity ratio PoSE/control over the whole window and over the tokens past the model's
  window, with a 95% interval from resampling 256-token blocks (the result files' block sums;
  neighbouring tokens are not independent, blocks are the unit);
- the same ratio per 8192-token region of the longest window both have (every window is the
  first L tokens of one document and attention is causal, so shorter windows are its prefixes);
- passkey: trials only PoSE got right, trials only the control got right, and the exact McNemar
  p-value of that split.

The plot (default RESULTS_DIR/real_model.png) is skipped with one line when matplotlib is missing.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys

import numpy as np

METHODS = (("base", "base, no scaling"), ("yarn_only", "YaRN x4, no training"),
           ("control_yarn", "YaRN x4 fine-tuned, no skips (control)"),
           ("pose_yarn", "PoSE-YaRN x4"))
WINDOW = 8192
BOOTSTRAP = 4000  # resamples per interval; the seed is fixed so the table is reproducible


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
    """{kind: {method: {length: value}}}; kinds ppl, ppl_pydoc, passkey, ruler; and the paired
    data: blocks_ppl / blocks_ppl_pydoc (block sums, block size, tokens), records_passkey."""
    cells = {"ppl": {}, "ppl_pydoc": {}, "passkey": {}, "ruler": {}, "blocks_ppl": {},
             "blocks_ppl_pydoc": {}, "records_passkey": {}}
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
                    if r.get("block_nll"):
                        cells["blocks_" + kind].setdefault(model["name"], {})[r["length"]] = (
                            r["block_nll"], r["block_tokens"], r["tokens"])
                elif kind == "passkey":
                    value = (r["correct"], r["trials"])
                    cells["records_passkey"].setdefault(model["name"], {})[r["length"]] = {
                        rec["trial"]: bool(rec["correct"]) for rec in r["records"]}
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


def block_tokens(size: int, n_blocks: int, tokens: int) -> np.ndarray:
    counts = np.full(n_blocks, size, dtype=np.float64)
    counts[-1] = tokens - size * (n_blocks - 1)
    return counts


def paired_ratio(a, b, first_block: int = 0, seed: int = 0, end_block=None):
    """ppl(a)/ppl(b) over blocks ``first_block``..``end_block`` (exclusive; default all), with a
    95% block-bootstrap interval; a and b are (block sums, block size, tokens) of the same text
    scored by two models."""
    (sa, size, tokens), (sb, size_b, tokens_b) = a, b
    if (size, tokens, len(sa)) != (size_b, tokens_b, len(sb)) or first_block >= len(sa):
        return None
    diff = (np.asarray(sa) - np.asarray(sb))[first_block:end_block]
    counts = block_tokens(size, len(sa), tokens)[first_block:end_block]
    ratio = math.exp(diff.sum() / counts.sum())
    idx = np.random.default_rng(seed).integers(0, len(diff), (BOOTSTRAP, len(diff)))
    boot = np.exp(diff[idx].sum(1) / counts[idx].sum(1))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return ratio, float(lo), float(hi)


def mcnemar(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the discordant split against Binomial(n, 1/2)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


TEXTS = (("blocks_ppl", "licences"), ("blocks_ppl_pydoc", "Python reference"))


def paired_texts(cells: dict, a: str, b: str):
    """(text, a's blocks by length, b's blocks by length, lengths both have) per text that has
    any."""
    for kind, text in TEXTS:
        ra, rb = cells[kind].get(a, {}), cells[kind].get(b, {})
        common = sorted(set(ra) & set(rb))
        if common:
            yield text, ra, rb, common


def ratio_cell(got) -> str:
    return "-" if got is None else f"{got[0]:.3f} [{got[1]:.3f}-{got[2]:.3f}]"


def region_table(cells: dict, a: str, b: str, region: int = WINDOW) -> list:
    """The paired ratio by position region of the longest window both models have on each text.
    Every window is the first L tokens of the same document and attention is causal, so a
    shorter window's tokens are scored as in the longest one: its regions hold the whole story."""
    lines = []
    for text, ra, rb, common in paired_texts(cells, a, b):
        L = common[-1]
        size = ra[L][1]
        edges = list(range(0, L, region)) + [L]
        cols = [f"{lo}-{hi}" for lo, hi in zip(edges, edges[1:])]
        row = [ratio_cell(paired_ratio(ra[L], rb[L], lo // size, end_block=-(-hi // size)))
               for lo, hi in zip(edges, edges[1:])]
        lines += [f"**PoSE/control by position, {text}, window {L}** (tokens of the document; "
                  "same interval)", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|",
                  "| " + " | ".join(row) + " |", ""]
    return lines


def paired_tables(cells: dict, a: str = "pose_yarn", b: str = "control_yarn") -> list:
    texts = list(paired_texts(cells, a, b))
    lines = []
    if texts:
        lengths = sorted({L for *_, common in texts for L in common})
        lines += ["**PoSE vs the control, paired**: perplexity ratio PoSE/control on the same "
                  "tokens [95% interval, 256-token blocks resampled]; below 1: PoSE better", "",
                  "| text, tokens | " + " | ".join(str(L) for L in lengths) + " |",
                  "|---" * (1 + len(lengths)) + "|"]
        for text, ra, rb, common in texts:
            for label, past in (("all", False), (f"past the first {WINDOW}", True)):
                # the first block past the window, in the file's own block size
                row = [ratio_cell(paired_ratio(ra[L], rb[L], -(-WINDOW // ra[L][1]) if past
                                               else 0)) if L in common else "-"
                       for L in lengths]
                lines.append(f"| {text}, {label} | " + " | ".join(row) + " |")
        lines.append("")
    lines += region_table(cells, a, b)
    pa, pb = cells["records_passkey"].get(a, {}), cells["records_passkey"].get(b, {})
    lengths = sorted(set(pa) & set(pb))
    if lengths:
        lines += ["**Passkey, PoSE vs the control on the same prompts**", "",
                  "| L | trials | only PoSE right | only control right | exact McNemar p |",
                  "|---|---|---|---|---|"]
        for L in lengths:
            common = sorted(set(pa[L]) & set(pb[L]))
            only_a = sum(pa[L][t] and not pb[L][t] for t in common)
            only_b = sum(pb[L][t] and not pa[L][t] for t in common)
            lines.append(f"| {L} | {len(common)} | {only_a} | {only_b} | "
                         f"{mcnemar(only_a, only_b):.2f} |")
        lines.append("")
    return lines


def by_position(ax, cells: dict, a: str = "pose_yarn", b: str = "control_yarn",
                bin_tokens: int = 2048) -> None:
    """Mean NLL of PoSE minus the control's per ``bin_tokens`` of the longest window both have
    on each text: where in the window PoSE gains or loses."""
    for text, ra, rb, common in paired_texts(cells, a, b):
        L = common[-1]
        (sa, size, tokens), (sb, _, _) = ra[L], rb[L]
        counts = block_tokens(size, len(sa), tokens)
        diff = np.asarray(sa) - np.asarray(sb)
        per = max(1, bin_tokens // size)
        xs, ys = [], []
        for i in range(0, len(diff), per):
            xs.append((i + min(per, len(diff) - i) / 2) * size)
            ys.append(diff[i:i + per].sum() / counts[i:i + per].sum())
        ax.plot(xs, ys, marker="o", label=f"{text}, L={L}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axvline(WINDOW, color="grey", linestyle=":")
    ax.set_xlabel("position in the window (tokens)")
    ax.set_ylabel("NLL PoSE - control (nats/token)")
    ax.set_title(f"PoSE minus control, per {bin_tokens} tokens (below 0: PoSE better)",
                 fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def plot(cells: dict, png: str) -> None:
    from pose_megatron.eval.plots import pyplot, save

    plt = pyplot(png)  # None, and one line, without matplotlib
    if plt is None:
        return
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
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
                # max(0, ..): at k = n (or 0) the bound is the point up to rounding
                err = [[max(0.0, y - 100 * lo) for y, (lo, _) in zip(ys, ci)],
                       [max(0.0, 100 * hi - y) for y, (_, hi) in zip(ys, ci)]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
            else:
                ax.plot(xs, [v for _, v in pts], marker="o", label=label)
        if kind != "passkey":
            ax.set_yscale("log")  # the base model's blow-up past its window hides the rest
        ax.axvline(WINDOW, color="grey", linestyle=":", label=f"model's window ({WINDOW})")
        ax.set_xlabel("L (tokens)")
        ax.set_title(title, fontsize=10)
    axes[2].set_ylim(-5, 105)
    axes[0].legend(fontsize=7)
    by_position(axes[3], cells)
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
    lines += paired_tables(cells)
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
