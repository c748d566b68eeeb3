"""Measurement: flatbuffer counts, LiteRT vs TFLM agreement, arena and instruction counts."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tflite_micro")

# the TFLM helpers live in tflite_export.micro (valgrind lookup patched there)
micro_mod = importlib.import_module("tflite_export.micro")
from digits_cnn import digits_cnn, digits_xy

from tflite_export.convert import to_tflite_int8
from tflite_export.flatbuffer import summarize
from tflite_export.litert import run_litert
from tflite_export.measure import Report, compare, measure
from tflite_export.micro import (
    UnsupportedOpError,
    count_instructions_many,
    run_tflm,
    tflm_arena_fits,
    tflm_min_arena,
)


@pytest.fixture(scope="module")
def digits():
    return digits_xy()


@pytest.fixture(scope="module")
def trained(digits):
    x, y = digits
    model = digits_cnn((16, 32))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1400], y[:1400], epochs=10, batch_size=32, verbose=0)
    return model, to_tflite_int8(model, x[:1400:5])


@pytest.fixture(scope="module")
def half(digits):
    x, _ = digits
    return to_tflite_int8(digits_cnn((8, 16)), x[:200:2])


def test_flatbuffer_macs_and_params_by_hand():
    keras.utils.set_random_seed(1)
    init = keras.initializers.RandomNormal(stddev=0.1)  # non-zero biases are kept by the converter
    inp = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(4, 3, bias_initializer=init)(inp)  # valid: 8x8x4
    h = keras.layers.DepthwiseConv2D(3, padding="same", bias_initializer=init)(h)  # 8x8x4
    h = keras.layers.Flatten()(h)  # 256
    out = keras.layers.Dense(5, bias_initializer=init)(h)
    x = np.random.default_rng(0).random((20, 10, 10, 3), dtype=np.float32)
    s = summarize(to_tflite_int8(keras.Model(inp, out), x, check=False))
    conv, dw, fc = 8 * 8 * 4 * (3 * 3 * 3), 8 * 8 * 4 * (3 * 3), 256 * 5
    by_op = {op.name: op.macs for op in s.ops}
    assert by_op["CONV_2D"] == conv == 6912
    assert by_op["DEPTHWISE_CONV_2D"] == dw == 2304
    assert by_op["FULLY_CONNECTED"] == fc == 1280
    assert s.macs == conv + dw + fc
    assert s.params == (4 * 27 + 4) + (36 + 4) + (256 * 5 + 5)  # = the Keras count, 1437
    assert s.op_names[0] == "CONV_2D" and s.input_shapes == ((1, 10, 10, 3),)


def test_measure_accuracy_and_tflm_agreement(trained, digits):
    model, tfl = trained
    x, y = digits
    r = measure(tfl, x[1400:], y[1400:], name="dense", runs=20, warmup=2, instructions=False, tflm_samples=200)
    float_acc = float(np.mean(np.asarray(model(x[1400:])).argmax(1) == y[1400:]))
    assert r.file_bytes == len(tfl) and r.macs == summarize(tfl).macs > 0
    assert r.n_eval == 397 and r.n_tflm == 200
    assert abs(r.accuracy_litert - float_acc) <= 0.03
    assert abs(r.accuracy_tflm - r.accuracy_litert) <= 0.03
    assert r.tflm_vs_litert_max_lsb <= 2 and r.tflm_vs_litert_argmax_agreement >= 0.98
    assert 0 < r.litert_xnnpack_median_us <= r.litert_xnnpack_p90_us
    assert r.tflm_instructions is None and "instruction count not requested" in r.notes


def test_tflm_output_matches_litert_reference_kernels(trained, digits):
    _, tfl = trained
    x, _ = digits
    micro = run_tflm(tfl, x[1400:1450])
    ref, _, _ = run_litert(tfl, x[1400:1450], resolver="ref")
    assert micro.dtype == np.int8 and micro.shape == (50, 10)
    assert np.abs(micro.astype(int) - ref.astype(int)).max() <= 2
    assert np.mean(micro.argmax(1) == ref.argmax(1)) >= 0.98


def test_float_io_model_on_tflm(trained, digits):
    model, tfl = trained
    x, y = digits
    float_io = to_tflite_int8(model, x[:1400:5], int8_io=False)
    kw = {"latency": False, "instructions": False, "tflm_samples": 100}
    r = measure(float_io, x[1400:1500], y[1400:1500], **kw)
    r8 = measure(tfl, x[1400:1500], y[1400:1500], **kw)
    assert r.input_type == "FLOAT32" and r8.input_type == "INT8"
    assert r.tflm_vs_litert_max_lsb <= 2  # counted in steps of the int8 output before DEQUANTIZE
    assert abs(r.accuracy_tflm - r8.accuracy_tflm) <= 0.02


def test_min_arena_is_minimal(trained, digits):
    _, tfl = trained
    arena, reported = tflm_min_arena(tfl)
    assert reported is not None and abs(arena - reported) <= 512
    assert tflm_arena_fits(tfl, arena) and not tflm_arena_fits(tfl, arena - 1)
    x, _ = digits
    assert run_tflm(tfl, x[:3], arena_size=arena).shape == (3, 10)  # invoke works in it


def _zero_input() -> np.ndarray:
    return np.full((1, 8, 8, 1), -128, np.int8)  # 0.0 in the input scale of [0, 1] images


def test_half_width_model_needs_less_arena_and_instructions(trained, half):
    _, full = trained
    arena_full, _ = tflm_min_arena(full)
    arena_half, _ = tflm_min_arena(half)
    assert arena_half < arena_full
    assert summarize(half).macs < summarize(full).macs
    if micro_mod.shutil.which("valgrind") is None:
        pytest.skip("valgrind not installed")
    # one valgrind process (its start-up dominates): half, full, and full again
    counts = count_instructions_many(
        [(half, _zero_input(), None), (full, _zero_input(), arena_full), (full, _zero_input(), None)]
    )
    assert 0 < counts[0] < counts[1]
    assert counts[1] == counts[2]  # deterministic, and independent of the arena size


@pytest.mark.slow
def test_measure_counts_instructions_deterministically(trained):
    _, full = trained
    if micro_mod.shutil.which("valgrind") is None:
        pytest.skip("valgrind not installed")
    r = measure(full, latency=False, instructions=True)  # x=None: zeros, quantized
    assert r.tflm_instructions == count_instructions_many([(full, _zero_input(), None)])[0] > 0


def test_instructions_auto_without_valgrind(trained, monkeypatch):
    _, tfl = trained
    monkeypatch.setattr(micro_mod.shutil, "which", lambda name: None)
    r = measure(tfl, latency=False, arena=False, instructions="auto")
    assert r.tflm_instructions is None
    assert any("valgrind" in n and "not found" in n for n in r.notes)
    with pytest.raises(FileNotFoundError, match="install valgrind"):
        measure(tfl, latency=False, arena=False, instructions=True)


def test_unsupported_operator_is_named(digits):
    inp = keras.Input((8,))
    model = keras.Model(inp, keras.layers.Dense(4, activation="gelu")(inp))
    x = np.random.default_rng(0).random((20, 8), dtype=np.float32)
    tfl = to_tflite_int8(model, x, check=False)
    assert "GELU" in summarize(tfl).op_names
    with pytest.raises(UnsupportedOpError, match="operator GELU is not supported by TFLite Micro"):
        measure(tfl, latency=False, instructions=False)


def test_report_round_trip_table_and_compare(tmp_path, trained, half):
    _, full = trained
    a = measure(full, name="dense", runs=5, warmup=1, instructions=False)
    b = measure(half, name="sparse", runs=5, warmup=1, instructions=False)
    a.save(tmp_path / "a.json")
    assert Report.load(tmp_path / "a.json") == a
    table = str(a)
    assert "| .tflite bytes | " + f"{len(full):,} |" in table
    assert f"| TFLM arena bytes (minimal) | {a.tflm_arena_bytes:,} |" in table
    assert "host" in table and "not MCU" in table
    side = compare(a, b)
    ratio = f"{b.macs / a.macs:.3f}"
    assert f"| MACs / inference | {a.macs:,} | {b.macs:,} | {ratio} |" in side
    assert float(ratio) < 0.5  # half the channels: about a quarter of the MACs


def test_accuracy_is_not_reported_for_an_output_that_is_not_a_class_vector(tmp_path):
    """Issue 11 item 10: a segmentation-style output gets a note, not an argmax 'accuracy'."""
    import keras

    from tflite_export import to_tflite_int8
    from tflite_export.measure import accuracy_applies, class_accuracy, measure

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    seg = keras.Model(inp, keras.layers.Conv2D(2, 3, padding="same")(inp))  # per-pixel logits
    x = np.random.default_rng(0).random((20, 8, 8, 1), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 2, (20, 8, 8))
    r = measure(to_tflite_int8(seg, x), x, y, latency=False, arena=False, instructions=False, float_model=seg)
    assert r.accuracy_litert is None and r.accuracy_tflm is None and r.float_accuracy is None
    assert any("accuracy not reported: the output (1, 8, 8, 2) is not a (batch, classes) vector" in n for n in r.notes)
    with pytest.raises(ValueError, match="no classification accuracy here"):
        class_accuracy(np.zeros((3, 4)), np.array([0.5, 1.2, 3.3]))
    assert accuracy_applies((1, 4), np.array([0, 5])) == "the labels range over [0, 5], outside the 4 classes"


def test_tflm_samples_zero_means_no_tflm_accuracy(trained, digits, tmp_path):
    from tflite_export.export import export

    model, tfl = trained
    x, y = digits
    kw = {"latency": False, "instructions": False, "tflm_samples": 0}
    r = measure(tfl, x[1400:1450], y[1400:1450], arena=False, **kw)
    assert r.accuracy_tflm is None and r.n_tflm == 0 and r.tflm_vs_litert_max_lsb is None
    assert r.n_eval == 50 and r.accuracy_litert is not None
    assert "TFLM accuracy not measured (tflm_samples=0)" in r.notes
    assert "| int8 accuracy % (TFLM) | n/a |" in r.to_markdown()
    assert r._repr_markdown_() == r.to_markdown()  # a notebook renders the table
    result = export(model, x[:200], eval_data=(x[1400:1450], y[1400:1450]), shrink=False, out=tmp_path / "o", **kw)
    assert result.report.accuracy_tflm is None and result.report.tflm_arena_bytes > 0
    assert Report.load(tmp_path / "o" / "report.json").accuracy_tflm is None
    with pytest.raises(ValueError, match="tflm_samples must be >= 0"):
        measure(tfl, x[1400:1450], y[1400:1450], arena=False, latency=False, instructions=False, tflm_samples=-1)
