"""MAC and parameter counts checked against hand-computed values."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import pytest
from anchor_model import anchor_cnn

from keras_wgsef.graph.costs import count_macs, count_params

L = keras.layers


def test_anchor_cnn_matches_design_notes():
    m = anchor_cnn()
    macs, params = count_macs(m), count_params(m)
    assert params["total"] == 24_394 == m.count_params()
    assert macs["total"] == 1_919_872
    assert macs["conv2d"] == 28 * 28 * 9 * 16
    assert macs["conv2d_1"] == 14 * 14 * 9 * 16 * 32
    assert macs["conv2d_2"] == 7 * 7 * 9 * 32 * 64
    assert macs["dense"] == 640
    assert macs["batch_normalization"] == 0 and macs["max_pooling2d"] == 0
    assert params["batch_normalization_2"] == 4 * 64


def test_depthwise_separable_transpose_and_strides():
    x = keras.Input((10, 10, 4))
    h = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)  # 5x5 out
    h = L.SeparableConv2D(6, 3, depth_multiplier=2, name="sep")(h)  # 3x3 out
    h = L.Conv2DTranspose(5, 2, strides=2, name="tr")(h)  # 3x3 in -> 6x6
    h = L.Conv1D(3, 2, name="c1")(L.Reshape((36, 5), name="rs")(h))  # 35 out positions
    y = L.Dense(2, name="d")(h)  # dense on (35, 3)
    m = keras.Model(x, y)
    macs = count_macs(m)
    assert macs["dw"] == 25 * 9 * 4
    assert macs["sep"] == 9 * (9 * 4 * 2 + 8 * 6)
    assert macs["tr"] == 9 * (2 * 2 * 5 * 6)
    assert macs["c1"] == 35 * 2 * 5 * 3
    assert macs["d"] == 35 * 3 * 2
    assert macs["total"] == sum(v for k, v in macs.items() if k != "total")
    assert count_params(m)["total"] == m.count_params()


def test_shared_layer_counts_macs_per_call_and_params_once():
    a, b = keras.Input((4,)), keras.Input((4,))
    d = L.Dense(3, name="shared")
    m = keras.Model([a, b], L.Add()([d(a), d(b)]))
    assert count_macs(m)["shared"] == 2 * 12
    assert count_params(m)["shared"] == 15 == count_params(m)["total"]


def test_nested_model_is_flattened():
    inner = keras.Sequential([keras.Input((8, 8, 2)), L.Conv2D(4, 3, padding="same", name="ic")], name="inner")
    x = keras.Input((8, 8, 2))
    m = keras.Model(x, L.GlobalAveragePooling2D()(inner(x)))
    assert count_macs(m)["inner/ic"] == 64 * 9 * 2 * 4
    assert count_params(m)["total"] == 9 * 2 * 4 + 4 == m.count_params()


def test_mobilenet_params_match_keras():
    m = keras.applications.MobileNet(input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=10)
    assert count_params(m)["total"] == m.count_params()
    # first layer: 3x3 stride 2 conv (valid after padding) to 8 channels on a 16x16 output
    assert count_macs(m)["conv1"] == 16 * 16 * 9 * 3 * 8


def test_subclassed_model_is_refused():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    m = Sub()
    m(keras.ops.zeros((1, 3)))
    with pytest.raises(TypeError, match="subclassed"):
        count_macs(m)
