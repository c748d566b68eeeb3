"""Zero residual branches are removed, branch and all: ``Add(x, 0) = x``, outputs equal, MACs gone."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import keras_wgsef as kw
from keras_wgsef.graph.costs import count_macs
from keras_wgsef.graph.model_graph import flatten_model
from keras_wgsef.groups.make import removable_layers
from tflite_export.branches import drop_zero_branches
from tflite_export.shrink import output_difference, shrink

L = keras.layers


def block(h, name, bn=True):
    y = L.Conv2D(8, 3, padding="same", name=f"{name}_c1")(h)
    y = L.ReLU(name=f"{name}_r")(y)
    y = L.Conv2D(8, 3, padding="same", name=f"{name}_c2")(y)
    if bn:
        y = L.BatchNormalization(name=f"{name}_bn")(y)
    return L.ReLU(name=f"{name}_out")(L.Add(name=f"{name}_add")([h, y]))


def resnet(bn=True, blocks=2):
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(8, 3, padding="same", name="stem")(x)
    for i in range(blocks):
        h = block(h, f"b{i}", bn)
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(h)))
    rng = np.random.default_rng(1)
    for w in model.weights:
        if w.path.endswith(("bias", "beta", "moving_mean")):
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    return model


def zero_layer(model, *names):
    for name in names:
        layer = model.get_layer(name)
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])


def test_a_zero_branch_goes_with_its_add_and_the_rest_is_equal():
    model = resnet()
    zero_layer(model, "b0_c2")
    bn = model.get_layer("b0_bn")  # gamma = beta = 0: the branch output is exactly zero
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma * 0, beta * 0, mean, var])
    before = [w.copy() for w in model.get_weights()]
    new, report = shrink(model, return_report=True)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # the input is untouched
    assert report.dropped == ["b0_add", "b0_bn", "b0_c1", "b0_c2", "b0_r"]
    paths = set(flatten_model(new).layers)
    assert not paths & set(report.dropped) and {"b1_add", "b1_c1"} <= paths
    macs = count_macs(model)
    assert count_macs(new)["total"] == macs["total"] - macs["b0_c1"] - macs["b0_c2"]
    assert output_difference(model, new)[2]


def test_chained_zero_branches_and_a_zero_first_block_rewire_to_the_stem():
    model = resnet(bn=False, blocks=3)
    zero_layer(model, "b0_c2", "b1_c2")
    new, dropped = drop_zero_branches(model)
    assert {"b0_add", "b1_add", "b0_c1", "b1_c1"} <= set(dropped) and "b2_add" not in dropped
    assert output_difference(model, new)[2]
    assert count_macs(new)["total"] < count_macs(model)["total"]


def test_a_branch_that_is_not_exactly_zero_stays():
    model = resnet()
    zero_layer(model, "b0_c2")  # the BN after it still adds beta - gamma * mean / sd
    new, dropped = drop_zero_branches(model)
    assert dropped == [] and new is model


@pytest.mark.parametrize(
    ("merge", "zero_first", "drops"),
    [("Subtract", False, True), ("Subtract", True, False), ("Average", False, False), ("Maximum", False, False)],
)
def test_only_merges_that_ignore_a_zero_input_lose_it(merge, zero_first, drops):
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 3, padding="same", name="a")(x)
    z = L.Conv2D(4, 3, padding="same", name="z")(x)
    m = getattr(L, merge)(name="m")([z, a] if zero_first else [a, z])
    model = keras.Model(x, L.Dense(2, name="head")(L.Flatten()(m)))
    zero_layer(model, "z")
    new, dropped = drop_zero_branches(model)
    assert (dropped == ["m", "z"]) is drops
    assert output_difference(model, new)[2]


def test_layer_groups_say_which_layers_are_removable_and_training_removes_a_branch():
    model = resnet(bn=False)
    with pytest.warns(UserWarning, match=r"cannot be removed when zero.*'stem'"):
        scopes = kw.make_groups(model, "layer")
    removable, fixed = removable_layers(flatten_model(model), scopes)
    assert removable == ["b0_c2", "b1_c2"] and "stem" in fixed and "b0_c1" in fixed
    # a global envelope over the removable layers keeps exactly one of them
    keep = [s for s in scopes if s.name in removable]
    x = np.random.default_rng(0).standard_normal((64, 8, 8, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 3, 64)
    model.compile(
        kw.WGSEF(keras.optimizers.SGD(0.05), k=1, lam=20.0, groups=keep, envelope="model"),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=6, batch_size=16, verbose=0)
    zero = [n for n in removable if not np.any(model.get_layer(n).get_weights()[0])]
    assert len(zero) == 1
    new, report = shrink(model, x[:8], return_report=True)
    block_name = zero[0].split("_")[0]
    assert f"{block_name}_add" in report.dropped and f"{block_name}_c1" in report.dropped
    assert output_difference(model, new, x[:8])[2]
    if keras.backend.backend() == "tensorflow":  # the sparsity reaches the .tflite
        from tflite_export import to_tflite_int8

        assert len(to_tflite_int8(new, x)) < len(to_tflite_int8(model, x))
