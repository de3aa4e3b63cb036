"""PNG plots of evaluation curves (accuracy or perplexity vs length), one line per model."""

from __future__ import annotations

import os
import tempfile
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
) -> str:
    """Write a line plot of ``series`` ({name: [(x, y), ...]}) to ``path`` atomically.

    The x axis is log2-scaled since evaluation lengths are usually powers of two; ``vlines``
    marks lengths such as the training window ({label: x}).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt
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
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".png.tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
