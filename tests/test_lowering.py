"""The Keras-side lowering (what the budget prices) against the converted flatbuffer (what ships)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from bench_models import BUILDERS, BUILDERS_1D

from keras_wgsef.budget.hardware import constant_tensors
from keras_wgsef.budget.lowering import lowering_template
from tflite_export.convert import to_tflite_int8
from tflite_export.flatbuffer import lowered_model
from tflite_export.rewrite import cheaper_ops

L = keras.layers


def _nonzero_biases(model, seed=0):
    """Random weights everywhere (the converter drops all-zero biases; trained ones never are)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "bias" in w.path or "beta" in w.path:
            w.assign(rng.normal(0, 0.1, tuple(w.shape)).astype("float32"))
    return model


def _mixed():
    x = keras.Input((12, 12, 3))
    a = L.Conv2D(6, 3, padding="same", activation="relu", name="a")(x)
    b = L.SeparableConv2D(5, 3, padding="same", depth_multiplier=2, name="sep")(x)
    b = L.BatchNormalization(name="sep_bn")(b)
    c = L.Concatenate(name="cat")([a, L.ReLU(name="sep_relu")(b)])
    c = L.ZeroPadding2D(1, name="pad")(c)
    c = L.Conv2D(8, 3, strides=2, activation="sigmoid", name="sig")(c)
    c = L.MaxPooling2D(name="pool")(c)
    d = L.Add(name="add")([c, L.Conv2D(8, 1, name="skip")(L.MaxPooling2D(4, name="p4")(x))])
    d = L.BatchNormalization(name="bn_after_add")(d)
    h = L.Dropout(0.2, name="drop")(L.Flatten(name="flat")(d))
    return keras.Model(x, L.Dense(4, name="head")(L.Dense(16, activation="relu", name="fc")(h)))


def _gap_as_avgpool_1d(model):
    """What ``cheaper_ops`` makes of a 1-D model's ``GlobalAveragePooling1D`` (its docstring):
    ``AveragePooling1D(T)`` named ``gap_avgpool`` + ``Reshape((C,))`` named ``gap``, on the same layers."""
    gap = model.get_layer("gap")
    steps, channels = gap.input.shape[1:]
    h = L.AveragePooling1D(steps, name="gap_avgpool")(gap.input)
    h = L.Reshape((channels,), name="gap")(h)
    return keras.Model(model.inputs, model.get_layer("head")(h))


ALL = {**BUILDERS, **BUILDERS_1D}
CASES = [(name, frac) for name in ALL for frac in (1.0, 0.5)] + [("mixed", 1.0)]


@pytest.mark.parametrize(("name", "fraction"), CASES)
@pytest.mark.parametrize("gap_as_avgpool", [False, True])
def test_lowering_equals_the_converted_flatbuffer(name, fraction, gap_as_avgpool):
    if name == "mixed":
        if gap_as_avgpool:
            pytest.skip("no global pooling to lower")
        model = _mixed()
    else:
        builder, widths = ALL[name]
        model = builder(tuple(max(1, round(fraction * w)) for w in widths))
    _nonzero_biases(model)
    shape = (32, *model.inputs[0].shape[1:])
    x = np.random.default_rng(0).uniform(0, 1, shape).astype("float32")
    exported = model
    if gap_as_avgpool:
        exported = _gap_as_avgpool_1d(model) if name in BUILDERS_1D else cheaper_ops(model, x[:4])[0]
    fb = lowered_model(to_tflite_int8(exported, x, check=False))
    kl = lowering_template(model).lower(gap_as_avgpool=gap_as_avgpool)

    def described(lm):
        return [
            (op.kind, tuple(sorted(op.features(lm).items())), op.weight_elems, op.bias_elems, op.quant_channels,
             tuple(lm.tensors[t].nbytes for t in op.outputs))
            for op in lm.ops
        ]  # fmt: skip

    if name == "mixed":  # parallel branches: the converter's order of independent branches is its own
        assert sorted(described(kl)) == sorted(described(fb))
    else:  # chains and residual stages: the same operators in the same order (what the arena planner sees)
        assert described(kl) == described(fb)
    # equal axes and shapes are one constant tensor (1-D: every EXPAND_DIMS of a Conv1D reads one -3)
    assert constant_tensors(kl) == constant_tensors(fb)


def test_removed_channel_classes_narrow_every_tensor_that_carries_them():
    builder, _ = BUILDERS["resnet8"]
    t = lowering_template(builder())
    stem0 = t.class_of("stem", 0)  # tied by the residual Add to s1_conv2's channel 0
    full, cut = t.lower(), t.lower({stem0: False})
    narrowed = [op.kind for a, op in zip(full.ops, cut.ops) if op.features(cut) != a.features(full)]
    # the stem, s1_conv1 (reads it), s1_conv2 (writes it), the Add, s2_conv1 and s2_short (read it)
    assert narrowed == ["CONV_2D", "CONV_2D", "CONV_2D", "ADD", "CONV_2D", "CONV_2D"]


def test_one_d_layers_run_as_2d_operators_between_expand_dims_and_reshape():
    builder, _ = BUILDERS_1D["resnet8_1d"]
    lm = lowering_template(builder((4, 4, 8, 8, 16, 16))).lower(gap_as_avgpool=False)
    kinds = lm.op_kinds
    # stem: EXPAND_DIMS, CONV_2D, RESHAPE; stack 1's Add reads the stem's squeeze (used twice): a 1-D ADD
    assert kinds[:10] == ["EXPAND_DIMS", "CONV_2D", "RESHAPE"] * 3 + ["ADD"]
    assert lm.tensors[lm.ops[9].outputs[0]].shape == (40, 4)
    # stack 2: one EXPAND_DIMS feeds both the strided conv and the shortcut; the Add of two single-use
    # squeezes runs on the 2-D outputs and is squeezed after
    assert kinds[10:18] == ["EXPAND_DIMS", "CONV_2D", "RESHAPE", "EXPAND_DIMS", "CONV_2D", "CONV_2D", "ADD", "RESHAPE"]
    assert lm.ops[15].inputs == lm.ops[11].inputs and lm.tensors[lm.ops[16].outputs[0]].shape == (1, 20, 8)
