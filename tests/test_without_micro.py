"""Without tflite-micro (the ``micro`` extra) the export works and says which figures need it."""

from __future__ import annotations

import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")

import tflite_export
from tflite_export import export
from tflite_export.micro import micro_missing

pytestmark = pytest.mark.tensorflow_only


@pytest.fixture
def no_micro(monkeypatch):
    """``import tflite_micro`` raises ImportError, as where the extra is not installed."""
    monkeypatch.setitem(sys.modules, "tflite_micro", None)


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(keras.layers.Flatten()(h)))


def test_export_without_micro_reports_the_tflm_figures_as_none_with_the_install_line(no_micro, tmp_path):
    x = np.random.default_rng(0).random((24, 6, 6, 1), dtype=np.float32)
    y = np.arange(24) % 3
    result = export(_model(), x, eval_data=(x, y), latency=False, out=tmp_path / "out")
    r = result.report
    assert r.tflm_arena_bytes is None and r.tflm_instructions is None and r.accuracy_tflm is None
    assert r.n_tflm == 0 and r.accuracy_litert is not None and r.file_bytes == len(result.tflite)
    (note,) = [n for n in r.notes if "tflite-micro" in n]
    assert note.startswith("not measured: arena, TFLM accuracy, instructions")
    assert "`micro` extra" in note and 'pip install ".[micro]"' in note
    header = (tmp_path / "out" / "model_data.h").read_text()
    assert "g_model_len" in header and "arena_size" not in header  # no arena figure to write


def test_what_needs_micro_raises_an_import_error_naming_the_extra(no_micro, _doctest_objects):
    tfl = _doctest_objects["tfl"]
    with pytest.raises(ImportError, match=r"`micro` extra .*pip install \"\.\[micro\]\""):
        tflite_export.tflm_min_arena(tfl)
    with pytest.raises(ImportError, match="instructions=True"):
        tflite_export.measure(tfl, latency=False, arena=False, instructions=True)


def test_micro_missing_is_none_where_tflite_micro_imports():
    pytest.importorskip("tflite_micro")
    assert micro_missing() is None
