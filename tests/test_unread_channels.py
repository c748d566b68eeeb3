"""Input-channel sparsity reaches the device: a channel that every reader ignores is removed, producer and all.

A reader (a kernel layer) whose input slice for channel ``c`` is zero in every filter never uses
``c``; when every reader of ``c`` ignores it (or sees it zero), ``shrink`` removes the reader's
input slice and the producer's output channel, with outputs equal.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import keras_wgsef as kw
from keras_wgsef.graph.model_graph import model_weights
from tflite_export.shrink import output_difference, plan_shrink, shrink

L = keras.layers
UNREAD = [0, 3, 5]


def chain(separable=False, second_reader=False, flatten=False):
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    a = L.BatchNormalization(name="bn")(L.Conv2D(8, 3, padding="same", name="a")(x))
    h = L.ReLU()(a)
    if separable:
        b = L.SeparableConv2D(6, 3, padding="same", depth_multiplier=2, name="b")(h)
    else:
        b = L.Conv2D(6, 3, padding="same", name="b")(h)
    outs = [b]
    if second_reader:
        outs.append(L.Conv2D(2, 1, name="c")(h))
    h = L.Concatenate()(outs) if len(outs) > 1 else b
    h = L.Flatten()(h) if flatten else L.GlobalAveragePooling2D()(h)
    model = keras.Model(x, L.Dense(3, name="head")(h))
    rng = np.random.default_rng(1)
    for w in model.weights:
        if w.path.endswith(("bias", "beta", "moving_mean")):
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    return model


def zero_input_slices(model, reader, channels):
    w = model_weights(model)
    name = f"{reader}/pointwise_kernel" if f"{reader}/pointwise_kernel" in w else f"{reader}/kernel"
    v = keras.ops.convert_to_numpy(w[name]).copy()
    if name.endswith("pointwise_kernel"):  # input channel c is pointwise rows c*dm .. c*dm+dm-1
        dm = v.shape[-2] // 8
        v[..., [c * dm + j for c in channels for j in range(dm)], :] = 0
    else:
        v[..., channels, :] = 0
    w[name].assign(v)


@pytest.mark.parametrize("separable", [False, True], ids=["conv", "separable"])
def test_a_channel_no_reader_uses_is_removed_with_its_producer(separable):
    model = chain(separable=separable)
    zero_input_slices(model, "b", UNREAD)
    x = np.random.default_rng(2).standard_normal((4, 8, 8, 3)).astype("float32")
    probe = keras.Model(model.inputs, model.get_layer("a").output)
    assert np.all(np.abs(keras.ops.convert_to_numpy(probe(x))[..., UNREAD]).max(axis=(0, 1, 2)) > 0)  # nonzero
    new, report = shrink(model, x, return_report=True)
    assert report.plan.widths["a"] == (8, 5) and report.plan.widths["bn"] == (8, 5)
    assert output_difference(model, new, x)[2]
    weights = new.get_layer("b").get_weights()
    assert weights[0].shape[-2] == 5  # conv kernel or depthwise kernel
    if separable:
        assert weights[1].shape[-2] == 10  # pointwise rows: 5 channels x depth_multiplier 2


def test_a_channel_another_reader_uses_is_kept_with_the_reason():
    model = chain(second_reader=True)
    zero_input_slices(model, "b", UNREAD)
    plan = plan_shrink(model)
    assert plan.widths["a"] == (8, 8)
    new = shrink(model)
    assert output_difference(model, new)[2]
    zero_input_slices(model, "c", UNREAD)  # now neither reader uses them
    assert plan_shrink(model).widths["a"] == (8, 5)


def test_flatten_then_dense_ignoring_every_position_of_a_channel_removes_it():
    keras.utils.set_random_seed(0)
    x = keras.Input((4, 4, 2))
    h = L.Conv2D(6, 3, padding="same", name="a")(x)
    model = keras.Model(x, L.Dense(3, name="head")(L.Dense(5, name="d")(L.Flatten()(h))))
    k = model.get_layer("d").kernel
    v = keras.ops.convert_to_numpy(k).copy()
    v[[s * 6 + 2 for s in range(16)], :] = 0  # channel 2 at every position
    v[[3 * 6 + 4], :] = 0  # channel 4 at one position only: still read
    k.assign(v)
    new, report = shrink(model, return_report=True)
    assert report.plan.widths["a"] == (6, 5)
    assert output_difference(model, new)[2]


def test_input_channel_groups_trained_to_zero_shrink_the_producer():
    """``make_groups(kind="input_channel")`` + WGSEF: the sparsity reaches the exported widths."""
    keras.utils.set_random_seed(0)
    model = chain()
    scopes = [s for s in kw.make_groups(model, "input_channel") if s.name == "b"]
    assert scopes and scopes[0].num_groups == 8
    x = np.random.default_rng(0).standard_normal((64, 8, 8, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 3, 64)
    opt = kw.WGSEF(keras.optimizers.SGD(0.05), k=3, lam=5.0, groups=scopes)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=6, batch_size=16, verbose=0)
    kernel = keras.ops.convert_to_numpy(model.get_layer("b").kernel)
    unread = np.flatnonzero(np.all(kernel == 0, axis=(0, 1, 3)))
    assert len(unread) == 5  # exactly k = 3 input channels stay
    new = shrink(model, x[:8])
    assert new.get_layer("a").filters == 3
    assert output_difference(model, new, x[:8])[2]
    if keras.backend.backend() == "tensorflow":  # the sparsity reaches the .tflite
        from tflite_export import to_tflite_int8

        assert len(to_tflite_int8(new, x)) < len(to_tflite_int8(model, x))
