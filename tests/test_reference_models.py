"""The models microcontroller users start from, end to end: exactly k, an equal thinner model, int8.

A keyword-spotting-style sequence model (Conv1D -> LSTM -> GRU -> Dense) and MobileNetV3Small (its
hard-swish and hard-sigmoid are ``keras.ops`` calls in the Functional graph) train with
``WGSEF`` + ``ReachK`` to exactly k nonzero groups per scope, shrink to a model with the same
outputs and fewer parameters, and convert to int8; the int8 model runs on LiteRT (and the sequence
model on TFLite Micro) and agrees with the float model. The MobileNetV3 cases run under ``-m slow``
(``make test-slow``); ``make test`` checks MobileNetV3Small's exact shrink in ``tests/test_ops_nodes.py``.
"""

import keras
import numpy as np
import pytest

import keras_wgsef as kw
from tflite_export import shrink, to_tflite_int8
from tflite_export.litert import run_litert
from tflite_export.shrink import output_difference

L = keras.layers
pytestmark = pytest.mark.tensorflow_only


def train_to_k(model, x, y, keep=0.5, epochs=3):
    """WGSEF(SGD) + ReachK from the first step, projection before the last epoch; returns the optimizer."""
    opt = kw.WGSEF(keras.optimizers.SGD(0.05, momentum=0.9), k=keep, groups=kw.make_groups(model), ridge=False)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    reach = kw.callbacks.ReachK(start_epoch=0, project_epoch=epochs - 1, verbose=0)
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=[reach])
    return opt


def assert_exactly_k(model, opt):
    nonzero = kw.nonzero_groups(model)
    for state in opt.scopes:
        assert nonzero[state.name] == state.k, (state.name, nonzero[state.name], state.k)


def check_pipeline(model, x, y, keep=0.5, epochs=3):
    """Train to exactly k, shrink with equal outputs and fewer parameters; returns the thinner model."""
    opt = train_to_k(model, x, y, keep, epochs)
    assert_exactly_k(model, opt)
    kw.recalibrate_batchnorm(model, x)
    small = shrink(model, x[:8])
    diff, tol, same = output_difference(model, small, x[8:16])
    assert same, (diff, tol)
    assert small.count_params() < model.count_params()
    return small


def assert_int8_agrees(small, x, min_agreement=0.8):
    tfl = to_tflite_int8(small, x[:32])
    _, q, _ = run_litert(tfl, x)
    ref = np.asarray(small.predict(x, verbose=0))
    assert np.mean(np.argmax(q, -1) == np.argmax(ref, -1)) >= min_agreement
    return tfl


def test_keyword_spotting_conv1d_lstm_gru_trains_to_k_shrinks_and_runs_on_tflm():
    keras.utils.set_random_seed(0)
    x = keras.Input((20, 8))
    h = L.Conv1D(16, 3, padding="same", activation="relu", name="conv")(x)
    h = L.LSTM(12, return_sequences=True, name="lstm")(h)
    h = L.GRU(10, name="gru")(h)
    model = keras.Model(x, L.Dense(4, name="head")(h))
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(64, 20, 8)).astype("float32")
    ys = (xs[:, :, 0].mean(1) > 0).astype("int64") + 2 * (xs[:, :, 1].mean(1) > 0)
    small = check_pipeline(model, xs, ys)
    widths = {layer.name: layer.units for layer in small.layers if isinstance(layer, (L.LSTM, L.GRU))}
    assert widths == {"lstm": 6, "gru": 5}
    assert small.get_layer("conv").filters == 8
    tfl = assert_int8_agrees(small, xs)
    from tflite_export.micro import run_tflm

    raw_lite, _, _ = run_litert(tfl, xs[:8], resolver="ref")
    raw_tflm = run_tflm(tfl, xs[:8])  # the unrolled LSTM and GRU run on TFLite Micro
    assert np.abs(raw_tflm.astype(np.int32) - raw_lite.reshape(8, -1).astype(np.int32)).max() <= 2


@pytest.mark.slow  # 25-40 s each; make test checks MobileNetV3Small's exact shrink (tests/test_ops_nodes.py)
@pytest.mark.parametrize("builder", ["MobileNetV3Small", "MobileNetV3Large"])
def test_mobilenet_v3_trains_to_k_shrinks_exactly_and_converts(builder):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, builder)(
        input_shape=(32, 32, 3),
        weights=None,
        classes=4,
        include_preprocessing=True,
        alpha=0.75,
        classifier_activation=None,
    )
    rng = np.random.default_rng(1)
    xs = rng.uniform(0, 255, (48, 32, 32, 3)).astype("float32")
    ys = rng.integers(0, 4, 48)
    small = check_pipeline(model, xs, ys, keep=0.5, epochs=2)
    assert_int8_agrees(small, xs[:32], min_agreement=0.7)
