"""Filter-shape sparsity reaches the device: zero kernel borders become smaller kernels, outputs equal."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import keras_wgsef as kw
from keras_wgsef.graph.costs import count_macs
from tflite_export.kernels import trim_zero_borders, zero_borders
from tflite_export.shrink import output_difference, shrink

L = keras.layers


def with_zero_rows(model, name, index):
    layer = model.get_layer(name)
    weights = layer.get_weights()
    weights[0][index] = 0
    layer.set_weights(weights)
    return weights[0]


CASES = [  # (padding, strides, kernel size, zeroed index of the kernel)
    ("same", 1, 3, np.s_[0]),
    ("same", 2, 3, np.s_[:, 2]),
    ("valid", 1, 3, np.s_[2]),
    ("valid", 2, 3, np.s_[:, :1]),
    ("same", 1, 5, np.s_[:3]),  # net padding -1 before, +2 after: a crop and a pad
    ("same", 1, 3, np.s_[2, :]),
]


@pytest.mark.parametrize(("padding", "strides", "size", "index"), CASES)
def test_zero_border_rows_and_columns_become_a_smaller_kernel_with_equal_outputs(padding, strides, size, index):
    keras.utils.set_random_seed(0)
    x = keras.Input((9, 10, 3))
    h = L.Conv2D(128, size, strides=strides, padding=padding, name="c")(x)  # a border saves > 1 KB
    model = keras.Model(x, L.Dense(2, name="head")(L.Flatten()(h)))
    kernel = with_zero_rows(model, "c", index)
    borders = zero_borders(kernel, 2)
    new, lines = trim_zero_borders(model)
    expected = tuple(size - b - a for b, a in borders)
    assert tuple(new.get_layer("c").kernel.shape[:2]) == expected != (size, size)
    assert new.get_layer("c").get_config()["padding"] == "valid"
    assert lines[0].startswith(f"c: kernel {size}x{size} -> {expected[0]}x{expected[1]}")
    assert output_difference(model, new)[2]
    assert count_macs(new)["total"] < count_macs(model)["total"]


def test_a_symmetric_border_under_same_padding_keeps_same_padding_and_adds_no_layer():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((7, 7, 2)), L.Conv2D(3, 3, strides=2, padding="same", name="c"), L.Flatten()])
    with_zero_rows(model, "c", np.s_[[0, 2]])
    new, lines = trim_zero_borders(model)
    assert lines == ["c: kernel 3x3 -> 1x3, padding same"] and len(new.layers) == len(model.layers)
    assert output_difference(model, new)[2]


def test_a_small_kernel_keeps_its_border_when_the_padding_operator_costs_more():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((7, 7, 2)), L.Conv2D(3, 3, padding="same", name="c"), L.Flatten()])
    with_zero_rows(model, "c", np.s_[0])
    new, lines = trim_zero_borders(model)
    assert new is model and "kept: its zero border saves 18 int8 weights" in lines[0]


@pytest.mark.parametrize("kind", ["Conv1D", "DepthwiseConv1D", "Conv3D", "DepthwiseConv2D"])
def test_one_and_three_dimensional_and_depthwise_kernels_are_trimmed_too(kind):
    keras.utils.set_random_seed(0)
    shape = {"Conv1D": (12, 8), "DepthwiseConv1D": (12, 1200), "Conv3D": (6, 6, 6, 2), "DepthwiseConv2D": (8, 8, 400)}[
        kind
    ]
    layer = (
        getattr(L, kind)(3, padding="same", name="c")
        if "Depthwise" in kind
        else getattr(L, kind)(160, 3, padding="same", name="c")
    )
    model = keras.Sequential([keras.Input(shape), layer, L.Flatten(), L.Dense(2)])
    with_zero_rows(model, "c", np.s_[-1])
    new, lines = trim_zero_borders(model)
    assert new.get_layer("c").get_weights()[0].shape[0] == 2 and lines
    assert output_difference(model, new)[2]


def test_interior_zero_positions_are_reported_and_stay():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 2)), L.Conv2D(3, 3, padding="same", name="c"), L.Flatten()])
    with_zero_rows(model, "c", np.s_[1, 1])
    new, lines = trim_zero_borders(model)
    assert new is model and lines == [
        "c: 1 interior zero kernel positions stay (a dense TFLite kernel cannot skip them)"
    ]


@pytest.mark.tensorflow_only
def test_filter_shape_groups_trained_then_shrunk_give_a_smaller_tflite_with_equal_outputs():
    from tflite_export import to_tflite_int8

    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 1))
    h = L.Conv2D(6, 3, padding="same", activation="relu", name="c")(x)
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(L.Conv2D(4, 3, name="d")(h))))
    data = np.random.default_rng(0).standard_normal((64, 8, 8, 1)).astype("float32")
    labels = np.random.default_rng(1).integers(0, 3, 64)
    # the centre position weighs least, so it is the one the envelope keeps: a symmetric border
    centre = lambda scope, m: np.where(np.arange(scope.num_groups) == 4, 0.05, 1.0)  # noqa: E731
    scopes = [s for s in kw.make_groups(model, "filter_shape", weights=centre) if s.name == "c"]
    assert scopes[0].num_groups == 9
    model.compile(kw.WGSEF(keras.optimizers.SGD(0.05), k=1, lam=5.0, groups=scopes), "sparse_categorical_crossentropy")
    model.fit(data, labels, epochs=4, batch_size=16, verbose=0)
    kernel = model.get_layer("c").get_weights()[0]
    assert np.flatnonzero(np.any(kernel.reshape(9, -1) != 0, axis=1)).tolist() == [4]  # k = 1: the centre
    new, report = shrink(model, data[:8], return_report=True)
    assert tuple(new.get_layer("c").kernel.shape[:2]) == (1, 1) and report.trimmed
    assert output_difference(model, new, data[:8])[2]
    untrimmed = shrink(model, data[:8], trim_kernels=False)
    assert len(to_tflite_int8(new, data)) < len(to_tflite_int8(untrimmed, data))
