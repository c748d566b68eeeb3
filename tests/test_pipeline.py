"""End to end: train with WGSEF to k groups per layer, shrink to exactly k channels, export int8."""

import keras
import numpy as np
import pytest

import keras_wgsef as kw
import tflite_export as te


@pytest.fixture(scope="module")
def trained():
    (x, y), (xt, yt) = kw.datasets.load_digits8x8()
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", name="conv1")(inp)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU()(h)
    h2 = keras.layers.Conv2D(16, 3, padding="same", name="conv2")(h)
    h2 = keras.layers.BatchNormalization(name="bn2")(h2)
    h = keras.layers.ReLU()(keras.layers.Add()([h, h2]))  # residual: conv1 and conv2 share channels
    h = keras.layers.Conv2D(24, 3, padding="same", name="conv3")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(10, name="head")(h))
    groups = kw.make_groups(model)
    opt = kw.WGSEF(keras.optimizers.Adam(1e-2), k={"conv3": 6, ".*": 4}, groups=groups)
    model.compile(
        optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    model.fit(x, y, epochs=6, batch_size=32, verbose=0, callbacks=[kw.callbacks.ReachK(project_epoch=3, verbose=0)])
    kw.recalibrate_batchnorm(model, x)
    return model, x, y, xt, yt


def test_residual_scope_couples_both_producers(trained):
    model = trained[0]
    opt = model.optimizer
    names = sorted(s.name for s in opt.scopes)
    assert len(names) == 2 and any("conv1" in n and "conv2" in n for n in names)
    assert sorted(kw.nonzero_groups(model).values()) == [4, 6]


def test_shrink_gives_exactly_k_channels_and_same_outputs(trained):
    model, x, y, xt, yt = trained
    before = [w.copy() for w in model.get_weights()]
    small, report = te.shrink(model, xt[:64], return_report=True)
    assert small.get_layer("conv1").filters == 4
    assert small.get_layer("conv2").filters == 4
    assert small.get_layer("conv3").filters == 6
    np.testing.assert_allclose(small.predict(xt, verbose=0), model.predict(xt, verbose=0), atol=1e-4, rtol=1e-4)
    macs_before, macs_after = kw.count_macs(model)["total"], kw.count_macs(small)["total"]
    assert macs_after < 0.4 * macs_before
    for a, b in zip(before, model.get_weights()):  # the trained model is untouched
        np.testing.assert_array_equal(a, b)


def test_int8_export_of_shrunk_model_is_smaller_and_agrees(trained):
    model, x, y, xt, yt = trained
    small = te.shrink(model, xt[:64])
    dense_tfl = te.to_tflite_int8(model, x[:100])
    small_tfl = te.to_tflite_int8(small, x[:100])
    assert len(small_tfl) < len(dense_tfl)
    agreement = te.check_agreement(small, small_tfl, xt[:200])
    assert agreement.argmax_agreement >= 0.95
    r = te.measure(small_tfl, xt[:200], yt[:200], latency=False, instructions=False)
    rd = te.measure(dense_tfl, xt[:200], yt[:200], latency=False, instructions=False)
    assert r.tflm_arena_bytes < rd.tflm_arena_bytes
    assert r.macs < 0.4 * rd.macs
    float_acc = float(np.mean(np.argmax(small.predict(xt[:200], verbose=0), -1) == yt[:200]))
    assert abs(r.accuracy_litert - float_acc) <= 0.03
