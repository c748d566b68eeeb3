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


def _fit(model, x, y, epochs=4):
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    kw.recalibrate_batchnorm(model, x)
    return model


def _check_export(model, x, y, xt, yt, max_gap=0.03):
    """export() end to end: LiteRT and TFLM accuracy close to the float model's, TFLM close to LiteRT."""
    result = te.export(model, x[:200], eval_data=(xt, yt), latency=False, instructions=False, tflm_samples=100)
    r = result.report
    float_acc = float(np.mean(np.argmax(model.predict(xt, verbose=0), -1) == yt))
    assert r.float_accuracy == pytest.approx(float_acc, abs=0.01)  # the shrunk/rewritten model computes the same
    assert float_acc > 0.5  # trained: accuracy far above chance, so the comparison means something
    assert abs(r.accuracy_litert - float_acc) <= max_gap and r.n_tflm == 100
    assert r.tflm_vs_litert_max_lsb <= 2 and r.tflm_vs_litert_argmax_agreement >= 0.99
    assert r.int8_vs_float_argmax_agreement >= 0.9
    return result


def test_a_1d_conv_model_exports_end_to_end():
    """A 1-D model: [Conv1D(16, 3, same)/BatchNorm/ReLU] x4 -> GlobalAveragePooling1D -> Dense(10)."""
    (x, y), (xt, yt) = kw.datasets.load_digits8x8()
    x, xt = x.reshape(-1, 64, 1), xt.reshape(-1, 64, 1)
    keras.utils.set_random_seed(0)
    inp = h = keras.Input((64, 1))
    for _ in range(4):
        h = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv1D(16, 3, padding="same")(h)))
    model = _fit(keras.Model(inp, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling1D()(h))), x, y)
    result = _check_export(model, x, y, xt, yt)
    assert len(result.report.rewrites) == 1 and "-> AveragePooling1D(64)" in result.report.rewrites[0]
    assert "MEAN" not in result.report.ops and "AVERAGE_POOL_2D" in result.report.ops


def _digits_3d(shape):
    (x, y), (xt, yt) = kw.datasets.load_digits8x8()
    return x.reshape(-1, *shape), y, xt.reshape(-1, *shape), yt


def test_a_3d_model_exports_end_to_end():
    """(depth, height, width, channels) inputs, GlobalAveragePooling3D (TFLite MEAN over three axes)."""
    x, y, xt, yt = _digits_3d((2, 4, 1, 8))  # each voxel one row of 8 pixels
    keras.utils.set_random_seed(0)
    inp = keras.Input((2, 4, 1, 8))
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Dense(32)(inp)))
    model = _fit(keras.Model(inp, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling3D()(h))), x, y, epochs=8)
    result = _check_export(model, x, y, xt, yt)
    assert "MEAN" in result.report.ops and result.report.rewrites == []


def test_a_conv3d_model_converts_and_its_missing_tflm_kernel_is_named():
    """Conv3D converts to int8 CONV_3D (checked on LiteRT); TFLite Micro has no kernel for it, and export says so."""
    from tflite_export.flatbuffer import summarize
    from tflite_export.micro import UnsupportedOpError

    x, y, xt, yt = _digits_3d((2, 4, 8, 1))
    keras.utils.set_random_seed(0)
    inp = keras.Input((2, 4, 8, 1))
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv3D(8, 3, padding="same")(inp)))
    model = _fit(keras.Model(inp, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling3D()(h))), x, y)
    tfl = te.to_tflite_int8(model, x[:200])
    assert "CONV_3D" in summarize(tfl).op_names
    assert te.check_agreement(model, tfl, xt).argmax_agreement >= 0.9
    with pytest.raises(UnsupportedOpError, match="CONV_3D is not supported by TFLite Micro"):
        te.export(model, x[:200], eval_data=(xt, yt), latency=False, instructions=False)
