"""keras_wgsef.plots: the figures hold the data they claim (bar heights, line values), not pixels."""

from __future__ import annotations

import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
keras = pytest.importorskip("keras")

import keras_wgsef as kw
from keras_wgsef import plots


def _heights(fig) -> tuple[list[float], list[float]]:
    before, after = fig.axes[0].containers
    return [b.get_height() for b in before], [b.get_height() for b in after]


def _models():
    def cnn(a: int, b: int) -> keras.Model:
        inp = keras.Input((6, 6, 1))
        h = keras.layers.Conv2D(a, 3, name="c1")(inp)
        h = keras.layers.ReLU(name="relu")(h)
        h = keras.layers.Conv2D(b, 3, name="c2")(h)
        return keras.Model(inp, keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(h)))

    return cnn(8, 16), cnn(3, 5)


def test_widths_of_two_models_are_the_bar_heights():
    dense, thin = _models()
    fig = plots.widths(dense, thin)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["c1", "c2", "head"]
    assert _heights(fig) == ([8, 16, 2], [3, 5, 2])


@pytest.mark.tensorflow_only
def test_widths_of_an_export_result_are_its_shrink_reports_widths():
    from tflite_export import export

    dense, _ = _models()
    k, b = dense.get_layer("c2").get_weights()
    k[..., 10:] = 0.0
    b[10:] = 0.0
    dense.get_layer("c2").set_weights([k, b])
    x = np.random.default_rng(0).random((16, 6, 6, 1), dtype=np.float32)
    result = export(dense, x, latency=False, arena=False, instructions=False)
    fig = plots.widths(result)
    names = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    widths = result.shrink_report.plan.widths
    assert "c2" in names and _heights(fig) == ([widths[n][0] for n in names], [widths[n][1] for n in names])
    assert _heights(fig)[1][names.index("c2")] == 10


def test_nonzero_groups_follow_the_sparsity_loggers_history():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="h"), keras.layers.Dense(2)])
    m.compile(optimizer=kw.WGSEF(keras.optimizers.SGD(0.1), k=4, lam=5.0, groups=kw.make_groups(m)), loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    logger = kw.callbacks.SparsityLogger(verbose=0)
    m.fit(x, x[:, :2], epochs=3, batch_size=16, verbose=0, callbacks=[logger])
    fig = plots.nonzero_groups(logger)
    (line,) = fig.axes[0].lines[:1]
    scope = next(iter(logger.history[-1]))
    assert line.get_xdata().tolist() == [1, 2, 3]
    assert line.get_ydata().tolist() == [epoch[scope]["nonzero"] for epoch in logger.history]
    assert list(fig.axes[0].lines[1].get_ydata()) == [4, 4]  # k, dashed (axhline)
    with pytest.raises(ValueError, match="history is empty"):
        plots.nonzero_groups([])


def test_without_matplotlib_the_error_names_the_plots_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r'`plots` extra: `pip install "\.\[plots\]"`'):
        plots.nonzero_groups([{"h": {"nonzero": 3, "k": 2}}])
