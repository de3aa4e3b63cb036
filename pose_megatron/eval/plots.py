"""PNG plots of evaluation curves (accuracy or perplexity vs length), one line per model.

matplotlib is an optional extra (``pip install -e .[plots]``): without it every plot is skipped
with one line saying how to get it, and the tool's results (table, JSON) are complete as ever.
"""

from __future__ import annotations

import sys
from typing import Mapping, Optional, Sequence, Tuple

Series = Mapping[str, Sequence[Tuple[float, float]]]


def plot_curves(
    series: Series,
    path: str,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    log_y: bool = False,
    y_limits: Optional[Tuple[float, float]] = None,
    vlines: Mapping[str, float] = {},
) -> Optional[str]:
    """Write a line plot of ``series`` ({name: [(x, y), ...]}) to ``path`` atomically; returns
    ``path``, or None when matplotlib is missing (see ``pyplot``).

    The x axis is log2-scaled since evaluation lengths are usually powers of two; ``vlines``
    marks lengths such as the training window ({label: x}).
    """
    plt = pyplot(path)
    if plt is None:
        return None
    import matplotlib
    import matplotlib.ticker  # noqa: F401  (FuncFormatter below)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs_all = set()
    for name, points in series.items():
        points = sorted(points)
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        xs_all.update(xs)
        ax.plot(xs, ys, marker="o", label=name)
    xs_all.update(vlines.values())
    for label, x in vlines.items():
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.annotate(label, (x, 1), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=8, color="grey")
    if xs_all and min(xs_all) > 0:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(xs_all))
        ax.set_xticklabels([str(int(x)) if float(x).is_integer() else str(x)
                            for x in sorted(xs_all)], rotation=45, fontsize=8)
        ax.minorticks_off()
    if log_y:
        ax.set_yscale("log")
        # Plain numbers: perplexity curves often span less than a decade, where the default
        # log formatter prints mantissa-exponent labels.
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    if y_limits is not None:
        ax.set_ylim(*y_limits)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return save(fig, path)


def pyplot(path: str):
    """matplotlib.pyplot (non-interactive), or None when matplotlib is not installed: then one
    line says the plot ``path`` is skipped and how to get it."""
    try:
        import matplotlib
    except ImportError:
        print(f"note: skipped the plot {path}: matplotlib is not installed (pip install "
              f"matplotlib, or pip install -e '.[plots]')", file=sys.stderr, flush=True)
        return None
    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str) -> str:
    """Write ``fig`` to ``path`` as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    from pose_megatron.publish import atomic_file

    fig.tight_layout()
    try:
        with atomic_file(path, binary=True) as f:
            fig.savefig(f, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path


def plot_heatmaps(
    panels: Mapping[str, Tuple[Sequence[str], Sequence[int], Sequence[Sequence[float]]]],
    path: str,
    *,
    title: str = "",
    value_range: Tuple[float, float] = (0, 100),
    vlines: Mapping[str, float] = {},
) -> Optional[str]:
    """One annotated heat map per model: {name: (row labels, column lengths, values[row][col])},
    NaN for cells not run; ``vlines`` marks lengths (e.g. the training window) between columns.
    Returns ``path``, or None when matplotlib is missing."""
    import numpy as np

    plt = pyplot(path)
    if plt is None:
        return None
    n = max(1, len(panels))
    rows = max((len(r) for r, _, _ in panels.values()), default=1)
    cols = sum(max(1, len(c)) for _, c, _ in panels.values())
    fig, axes = plt.subplots(1, n, figsize=(2.2 + 0.9 * cols + 1.6 * n, 1.2 + 0.42 * rows),
                             squeeze=False)
    for ax, (name, (row_labels, lengths, values)) in zip(axes[0], panels.items()):
        grid = np.array(values, dtype=float).reshape(len(row_labels), len(lengths))
        ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=value_range[0],
                  vmax=value_range[1], aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.0f}", ha="center", va="center",
                    fontsize=7)
        ax.set_xticks(range(len(lengths)))
        ax.set_xticklabels([str(L) for L in lengths], rotation=45, fontsize=7)
        ax.set_yticks(range(len(row_labels)))
        ax.set_yticklabels(row_labels if ax is axes[0][0] else [], fontsize=7)
        ax.set_title(name, fontsize=8)
        for label, x in vlines.items():
            # Between the last column at or below the mark and the next one.
            at = sum(L <= x for L in lengths) - 0.5
            if -0.5 < at < len(lengths) - 0.5:
                ax.axvline(at, color="black", linestyle="--", linewidth=1)
                ax.annotate(label, (at, 0), xycoords=("data", "axes fraction"), fontsize=7,
                            rotation=90, va="bottom", ha="right")
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path)
