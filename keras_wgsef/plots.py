"""Two small figures for notebooks: layer widths before and after, and nonzero groups over epochs.

Needs matplotlib, the ``plots`` extra (imported on first use; without it each function raises an
ImportError with the install line). Each function draws into ``ax`` (a new figure when omitted)
and returns the figure.

Example:
  >>> import keras_wgsef as kw
  >>> fig = kw.plots.nonzero_groups([{"conv": {"nonzero": 16, "k": 8}}, {"conv": {"nonzero": 9, "k": 8}}])
  >>> fig.axes[0].lines[0].get_ydata().tolist()
  [16, 9]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["layer_widths", "nonzero_groups", "widths"]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        from keras_wgsef._install import install_hint

        raise ImportError(f"keras_wgsef.plots needs matplotlib, the `plots` extra: {install_hint('plots')}") from None
    return plt


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = _pyplot().subplots(figsize=size, layout="constrained")
    return fig, ax


def layer_widths(model: Any) -> dict[str, int]:
    """Output channels of every layer with weights, by layer name (the last axis of its output).

    Example:
      >>> import keras
      >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="h"), keras.layers.ReLU()])
      >>> layer_widths(m)
      {'h': 3}
    """
    return {layer.name: int(layer.output.shape[-1]) for layer in model.layers if layer.weights}


def widths(before: Any, after: Any = None, *, ax: Any = None) -> Any:
    """Bar chart of each layer's width before and after shrinking.

    Args:
      before: an :class:`tflite_export.ExportResult` (its shrink report's widths, for the layers
        with weights or a changed width), or the dense Keras model.
      after: the shrunk Keras model, when ``before`` is a model (matched by layer name).
      ax: a matplotlib Axes to draw into.

    Returns:
      the matplotlib Figure; ``fig.axes[0].containers`` holds the two bar sets (before, after).

    Raises:
      ValueError: a model without ``after``, or an ExportResult exported without shrinking.
    """
    if hasattr(before, "shrink_report"):
        if before.shrink_report is None:
            raise ValueError("this export was made with shrink=False: no widths before and after to plot")
        report = before.shrink_report  # read as data: keras_wgsef does not import tflite_export
        pairs = {
            path: (int(wb), int(wa))
            for path, (wb, wa) in report.plan.widths.items()
            if report.params.get(path, (0, 0))[0] > 0  # layers with weights, as the summary lists them
        }
    else:
        if after is None:
            raise ValueError("widths(model, shrunk_model): pass the shrunk model too, or an ExportResult")
        dense, thin = layer_widths(before), layer_widths(after)
        pairs = {name: (w, thin[name]) for name, w in dense.items() if name in thin}
    names = list(pairs)
    fig, ax = _axes(ax, (max(4.0, 0.6 * len(names) + 2), 3.2))
    pos = list(range(len(names)))
    ax.bar([p - 0.2 for p in pos], [pairs[n][0] for n in names], width=0.4, label="before", color="0.75")
    ax.bar([p + 0.2 for p in pos], [pairs[n][1] for n in names], width=0.4, label="after", color="C0")
    ax.set_xticks(pos, names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylabel("channels")
    ax.set_title("layer widths before and after shrinking")
    ax.legend(frameon=False)
    return fig


def nonzero_groups(history: Any, *, ax: Any = None) -> Any:
    """Nonzero groups of each scope over the epochs, from :class:`keras_wgsef.callbacks.SparsityLogger`.

    Args:
      history: the logger, or its ``history`` (one ``{scope: {"nonzero": ..., "k": ...}}`` per epoch).
      ax: a matplotlib Axes to draw into.

    Returns:
      the matplotlib Figure: one line per scope (epochs from 1), each scope's final ``k`` dashed in
      the same colour.

    Raises:
      ValueError: an empty history (the logger has not seen an epoch end).
    """
    rows: Sequence[Mapping[str, Mapping[str, float]]] = getattr(history, "history", history)
    if not rows:
        raise ValueError("the SparsityLogger history is empty: plot after model.fit(..., callbacks=[logger])")
    fig, ax = _axes(ax, (5.0, 3.2))
    epochs = list(range(1, len(rows) + 1))
    for i, scope in enumerate(rows[-1]):
        line = [r[scope]["nonzero"] if scope in r else float("nan") for r in rows]
        ax.plot(epochs, line, color=f"C{i % 10}", label=scope.split("/")[-1])
        ax.axhline(rows[-1][scope]["k"], color=f"C{i % 10}", linestyle="--", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nonzero groups")
    ax.set_title("nonzero groups per scope (dashed: k)")
    ax.legend(frameon=False, fontsize="small")
    return fig
