"""BatchNorm recalibration: exact statistics, layer order, no trainable change."""

import keras
import numpy as np

import keras_wgsef as kw


def test_recalibration_sets_exact_statistics_in_order():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 5, 2))
    h = keras.layers.Conv2D(4, 3, padding="same")(inp)
    bn1 = keras.layers.BatchNormalization(name="bn1")
    h = bn1(h)
    h = keras.layers.Conv2D(3, 3)(h)
    bn2 = keras.layers.BatchNormalization(name="bn2")
    out = bn2(h)
    model = keras.Model(inp, out)
    for bn in (bn1, bn2):
        bn.gamma.assign(np.linspace(0.5, 2, bn.gamma.shape[0]))
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(300, 5, 5, 2)).astype("float32")
    trainable = [v.numpy().copy() for v in model.trainable_variables]
    kw.recalibrate_batchnorm(model, x, batch_size=37)
    h1 = keras.ops.convert_to_numpy(keras.Model(inp, bn1.input)(x)).reshape(-1, 4)
    np.testing.assert_allclose(bn1.moving_mean.numpy(), h1.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), h1.var(0), rtol=1e-4)
    # bn2's statistics are computed with bn1 already recalibrated (layer order)
    h2 = keras.ops.convert_to_numpy(keras.Model(inp, bn2.input)(x)).reshape(-1, 3)
    np.testing.assert_allclose(bn2.moving_mean.numpy(), h2.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn2.moving_variance.numpy(), h2.var(0), rtol=1e-4)
    for before, v in zip(trainable, model.trainable_variables):
        np.testing.assert_array_equal(before, v.numpy())
    # inference output now equals batch-statistics normalization over the whole set
    y_inf = keras.ops.convert_to_numpy(model(x, training=False)).reshape(-1, 3)
    np.testing.assert_allclose(y_inf.mean(0), bn2.beta.numpy(), atol=1e-3)


def test_nested_model_is_recalibrated():
    keras.utils.set_random_seed(1)
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(name="ibn")], name="inner"
    )
    inp = keras.Input((4,))
    model = keras.Model(inp, inner(keras.layers.Dense(4)(inp)))
    x = np.random.default_rng(1).normal(1.0, 2.0, size=(200, 4)).astype("float32")
    changes = kw.recalibrate_batchnorm(model, x)
    assert any("ibn" in name for name in changes)
    pre = keras.ops.convert_to_numpy(keras.Model(inp, model.layers[1].output)(x))
    h = keras.ops.convert_to_numpy(inner.layers[0](pre))
    np.testing.assert_allclose(inner.get_layer("ibn").moving_mean.numpy(), h.mean(0), rtol=1e-4, atol=1e-5)
