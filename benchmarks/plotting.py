"""Pareto plots for the benchmark pages: our methods in colour, the peers in grey, one legend outside.

Used by ``results_page.py`` (``RESULTS.md``'s figures) and ``budget_compare.py``
(``BUDGET_RESULTS.md``'s figures). Each caller keeps its own ``LABELS`` (the names its tables use)
and its style table (method -> colour and marker); this module only aggregates seeds and draws.

Example:
    >>> mean_se([0.9, 0.9])
    (90.0, 0.0)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Point = tuple[float, float, float]
"""One plotted point: x (the cost, mean over seeds), y (accuracy %, mean) and its standard error."""


def mean_se(values: Iterable[float]) -> tuple[float, float]:
    """Mean and standard error of the mean of accuracies given as fractions, both in percent.

    Args:
        values: one accuracy per seed, in [0, 1].

    Returns:
        ``(mean, standard error)`` in percent; the error is 0 for a single seed.

    Example:
        >>> mean_se([0.9])
        (90.0, 0.0)
    """
    a = 100 * np.asarray(list(values), float)
    if a.size == 0:
        raise ValueError("mean_se needs at least one value: pass the accuracies of one or more seeds")
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(a.size)) if a.size > 1 else 0.0


def pareto_figure(
    panels: Mapping[str, Mapping[str, Sequence[Point]]],
    *,
    labels: Mapping[str, str],
    style: Mapping[str, tuple[str, str]],
    ours: Sequence[str],
    xlabel: str,
    ylabel: str,
    path: str,
    titles: Mapping[str, str] | None = None,
    ylims: Mapping[str, tuple[float, float]] | None = None,
    connect: bool = False,
    panel_width: float = 5.0,
    dpi: int = 90,
) -> str:
    """Accuracy against a cost, one panel per model, mean +- standard error per method and budget.

    Our methods are drawn in their colours, larger and on top; the peers in their greys. The x axis
    is logarithmic; the legend (in ``labels``' order) sits outside the panels, on the right.

    Args:
        panels: panel name (a model) -> method -> points ``(x, mean %, standard error %)``.
        labels: method -> the name its table uses; also fixes the legend order.
        style: method -> ``(matplotlib colour, marker)``.
        ours: the methods to highlight.
        xlabel: the x axis label, in words with units.
        ylabel: the y axis label of the first panel.
        path: the PNG file to write.
        titles: panel name -> title (default: the panel name).
        ylims: panel name -> y limits, where some points must stay off-scale.
        connect: join each method's points, in cost order, with a thin line.
        panel_width: inches per panel.
        dpi: resolution of the PNG.

    Returns:
        ``path``.

    Example:
        >>> pareto_figure({"anchor": {"thin": [(1e5, 95.0, 0.2)]}}, labels={"thin": "thin"},
        ...               style={"thin": ("0.4", "s")}, ours=(), xlabel="MACs", ylabel="acc %",
        ...               path="/tmp/p.png")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    missing = sorted({m for series in panels.values() for m in series if m not in labels or m not in style})
    if missing:
        raise ValueError(f"no label or style for methods {missing}: add them to the caller's LABELS and style table")
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_width * len(panels), 4.5), squeeze=False)
    handles: dict[str, object] = {}
    for ax, (panel, series) in zip(axes[0], panels.items()):
        for m in labels:
            pts = sorted(series.get(m, ()))
            if not pts:
                continue
            xs, ys, es = (np.array(v) for v in zip(*pts))
            color, marker = style[m]
            mine = m in ours
            handles[m] = ax.errorbar(
                xs, ys, yerr=es, color=color, marker=marker, capsize=3,
                linestyle="-" if connect else "none", linewidth=1.6 if mine else 0.8,
                markersize=7 if mine else 5, markeredgecolor="black" if mine else color, markeredgewidth=0.6,
                zorder=3 if mine else 2, label=labels[m],
            )  # fmt: skip
        ax.set_title((titles or {}).get(panel, panel), fontsize=10)
        ax.set_xlabel(xlabel)
        _log_cost_axis(ax)
        if ylims and panel in ylims:
            ax.set_ylim(*ylims[panel])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    order = [m for m in labels if m in handles]
    legend_outside(fig, [handles[m] for m in order], [labels[m] for m in order])
    return save(fig, path, dpi)


def _log_cost_axis(ax) -> None:
    """A log x axis labelled at 1, 2, 3 and 5 per decade in engineering units (200k, 1M), no overlaps."""
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())


def legend_outside(fig, handles: Sequence[object], labels: Sequence[str]) -> None:
    """One legend for the whole figure, outside the panels on the right.

    Example:
        >>> legend_outside(fig, *axes[0][0].get_legend_handles_labels())  # doctest: +SKIP
    """
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def save(fig, path: str, dpi: int = 90) -> str:
    """Lays out, writes (the outside legend included) and closes ``fig``; returns ``path``.

    Example:
        >>> save(fig, "benchmarks/kept_channels.png")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
