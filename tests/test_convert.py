"""int8 conversion: agreement with the float model on LiteRT, calibration sources and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from digits_cnn import digits_cnn, digits_xy

from tflite_export.convert import CalibrationError, calibration_samples, to_tflite_int8
from tflite_export.flatbuffer import summarize
from tflite_export.litert import check_agreement, run_litert
from tflite_export.quantization import dequantize, quantize


@pytest.fixture(scope="module")
def trained():
    x, y = digits_xy()
    model = digits_cnn((16, 32))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1400], y[:1400], epochs=10, batch_size=32, verbose=0)
    return model, x, y


@pytest.fixture(scope="module")
def tfl_int8(trained):
    model, x, _ = trained
    return to_tflite_int8(model, x[:1400:5])


def test_int8_model_agrees_with_float_model(trained, tfl_int8):
    model, x, y = trained
    s = summarize(tfl_int8)
    assert s.input_types == ("INT8",) and s.output_types == ("INT8",)
    a = check_agreement(model, tfl_int8, x[1400:])
    assert a.n == len(x) - 1400
    assert a.argmax_agreement >= 0.97
    assert a.mean_abs_diff / a.output_scale <= 2.0  # about one output step on average
    assert a.max_diff_steps <= 16
    raw, real, _ = run_litert(tfl_int8, x[1400:])
    assert raw.dtype == np.int8
    float_acc = np.mean(np.asarray(model(x[1400:])).argmax(1) == y[1400:])
    int8_acc = np.mean(real.argmax(1) == y[1400:])
    assert float_acc > 0.8  # the model learnt something, so the comparison means something
    assert abs(float_acc - int8_acc) <= 0.03


def test_reference_kernels_agree_with_xnnpack(tfl_int8, trained):
    _, x, _ = trained
    auto, _, _ = run_litert(tfl_int8, x[1400:1500], resolver="auto")
    ref, _, _ = run_litert(tfl_int8, x[1400:1500], resolver="ref")
    assert np.abs(auto.astype(int) - ref.astype(int)).max() <= 2


def test_float_io_option(trained):
    model, x, _ = trained
    tfl = to_tflite_int8(model, x[:1400:5], int8_io=False)
    s = summarize(tfl)
    assert s.input_types == ("FLOAT32",) and s.output_types == ("FLOAT32",)
    assert "QUANTIZE" in s.op_names and "DEQUANTIZE" in s.op_names
    assert s.op_counts["CONV_2D"] == 2  # the arithmetic stays int8
    a = check_agreement(model, tfl, x[1400:])
    assert a.output_scale > 0  # read from the int8 tensor before DEQUANTIZE
    assert a.argmax_agreement >= 0.97 and a.max_diff_steps <= 16


def test_model_is_not_mutated(trained):
    model, x, _ = trained
    before = [w.copy() for w in model.get_weights()]
    out_before = np.asarray(model(x[:32], training=False))
    to_tflite_int8(model, x[:50], check=False)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    np.testing.assert_array_equal(out_before, np.asarray(model(x[:32], training=False)))


def test_calibration_sources_give_the_same_model():
    x, _ = digits_xy()
    model = digits_cnn((4, 8))
    calib = x[:40]
    from_array = to_tflite_int8(model, calib, check=False)
    ds = tf.data.Dataset.from_tensor_slices((calib, np.zeros(40))).batch(8)
    from_dataset = to_tflite_int8(model, ds, check=False)
    from_generator = to_tflite_int8(model, lambda: ([calib[i : i + 1]] for i in range(40)), check=False)
    assert from_array == from_dataset == from_generator
    # a different calibration set gives different quantization parameters
    assert to_tflite_int8(model, x[40:80] * 2.0, check=False) != from_array


def test_calibration_samples_shapes_and_limit():
    x, _ = digits_xy()
    model = digits_cnn((4, 8))
    assert calibration_samples(model, x[:100], 30).shape == (30, 8, 8, 1)
    assert calibration_samples(model, x[0]).shape == (1, 8, 8, 1)  # one unbatched sample
    unbatched = tf.data.Dataset.from_tensor_slices(x[:10])
    assert calibration_samples(model, unbatched).shape == (10, 8, 8, 1)
    assert calibration_samples(model, x[:10].astype(np.float64)).dtype == np.float32


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((5, 8, 7, 1), np.float32), "shape (5, 8, 7, 1) but the model expects (N, 8, 8, 1)"),
        (np.zeros((5, 8, 8), np.float32), "shape"),
        (np.zeros((5, 8, 8, 1), np.uint8), "dtype uint8"),
        (np.zeros((0, 8, 8, 1), np.float32), "empty"),
        (np.full((3, 8, 8, 1), np.nan, np.float32), "NaN"),
        (iter([]), "empty"),
        (42, "not supported"),
        (None, "no calibration data"),
    ],
)
def test_bad_calibration_raises_a_clear_error(data, message):
    model = digits_cnn((4, 8))
    with pytest.raises(CalibrationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_tflite_int8(model, data)


@settings(max_examples=50, deadline=None)
@given(
    scale=st.floats(1e-3, 1.0),
    zero_point=st.integers(-128, 127),
    values=st.lists(st.floats(-100, 100), min_size=1, max_size=20),
)
def test_quantize_dequantize_round_trip(scale, zero_point, values):
    details = {"dtype": np.int8, "quantization": (scale, zero_point)}
    x = np.array(values, np.float32)
    q = quantize(x, details)
    assert q.dtype == np.int8
    back = dequantize(q, details)
    lo, hi = scale * (-128 - zero_point), scale * (127 - zero_point)
    inside = (x >= lo) & (x <= hi)
    assert np.all(np.abs(back[inside] - x[inside]) <= scale / 2 + 1e-4 * max(1.0, abs(hi), abs(lo)))
    assert np.all(q[x < lo] == -128) and np.all(q[x > hi] == 127)  # saturates outside the range


def test_quantize_reads_tflm_style_details():
    details = {"dtype": np.int8, "quantization_parameters": {"scales": np.array([0.5]), "zero_points": np.array([-10])}}
    np.testing.assert_array_equal(quantize(np.array([0.0, 1.0, 500.0]), details), [-10, -8, 127])
    np.testing.assert_allclose(dequantize(np.array([-10, -8], np.int8), details), [0.0, 1.0])


def test_conversion_passes_python_warnings_on_but_not_the_converters_noise(trained):
    """The console capture re-issues Python warnings; the one the converter says on every int8-I/O run is dropped."""
    import warnings

    _, x, _ = trained

    class Noisy(keras.layers.Layer):
        def call(self, t):
            warnings.warn("a warning the user should see", UserWarning, stacklevel=1)
            return t

    inp = keras.Input((8, 8, 1))
    noisy = keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(Noisy()(inp))))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        to_tflite_int8(noisy, x[:50], check=False)
    messages = [str(w.message) for w in seen]
    assert "a warning the user should see" in messages
    assert not any("Statistics for quantized inputs" in m for m in messages)
