"""``keras.ops`` calls in Functional graphs (operation nodes): channel rules, refusals, exact shrink.

A Functional model that calls ``keras.ops`` on its tensors (``x + 3.0``, ``keras.ops.relu(x)``,
MobileNetV3's hard sigmoid ``relu6(x + 3) * (1 / 6)``) holds operations that are no layer. Each
element-wise operation is checked like a layer rule (``tests/test_layer_rules.py``): groups of a
producer ``a`` zeroed as WGSEF would, the model shrunk, the removed channels counted and the
outputs compared; an operation whose ``f(0) != 0`` with its constants keeps them.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from test_layer_rules import around, check_removed, random_input, zero_producer_channels, zero_producer_groups

from keras_wgsef import make_groups
from keras_wgsef.batchnorm import recalibrate_batchnorm
from keras_wgsef.graph import rules as cr
from keras_wgsef.graph.channels import analyze
from keras_wgsef.graph.model_graph import OperationCall, flatten_model, model_weights
from tflite_export.shrink import output_difference, plan_shrink, shrink

L = keras.layers
ops = keras.ops

# one tensor operand (and scalar constants): f(0) == 0 passes zero channels, which go
PASSING_OPS = {
    "relu": ops.relu,
    "relu6": ops.relu6,
    "hard_silu": ops.hard_silu,
    "hard_swish": ops.hard_swish,
    "silu": ops.silu,
    "swish": ops.swish,
    "tanh": ops.tanh,
    "gelu": ops.gelu,
    "gelu(approximate=False)": lambda t: ops.gelu(t, approximate=False),
    "leaky_relu": lambda t: ops.leaky_relu(t, negative_slope=0.3),
    "elu": ops.elu,
    "selu": ops.selu,
    "abs": ops.abs,
    "square": ops.square,
    "sqrt(relu)": lambda t: ops.sqrt(ops.relu(t)),
    "negative": ops.negative,
    "clip(0, 6)": lambda t: ops.clip(t, 0.0, 6.0),
    "erf": keras.ops.erf,
    "x * 6": lambda t: t * 6.0,
    "6 * x": lambda t: ops.multiply(6.0, t),
    "x / 6": lambda t: t / 6.0,
    "divide(x, 6)": lambda t: ops.divide(t, 6.0),
    "x ** 2": lambda t: t**2,
    "maximum(x, 0)": lambda t: ops.maximum(t, 0.0),
    "minimum(x, 1)": lambda t: ops.minimum(t, 1.0),
    "x * relu6(x + 3) / 6 (hard swish)": lambda t: t * (ops.relu6(t + 3.0) / 6.0),
    "x * hard_sigmoid(x)": lambda t: ops.multiply(t, ops.hard_sigmoid(t)),
    "x * sigmoid(x)": lambda t: t * ops.sigmoid(t),
}

# f(0) != 0: a zero channel becomes a constant, so it stays (the producer keeps its 8 channels)
KEPT_OPS = {
    "hard_sigmoid": ops.hard_sigmoid,
    "relu6(x + 3) / 6 (hard sigmoid)": lambda t: ops.relu6(t + 3.0) / 6.0,
    "sigmoid": ops.sigmoid,
    "x + 3": lambda t: t + 3.0,
    "x - 3": lambda t: t - 3.0,
    "3 - x": lambda t: ops.subtract(3.0, t),
    "exp": ops.exp,
    "softplus": ops.softplus,
    "maximum(x, 1)": lambda t: ops.maximum(t, 1.0),
}


def test_each_case_is_an_operation_node():
    x = keras.Input((4, 4, 3))
    for name, fn in {**PASSING_OPS, **KEPT_OPS}.items():
        nodes = flatten_model(keras.Model(x, fn(x))).nodes
        assert nodes and all(isinstance(n.layer, OperationCall) for n in nodes), name


@pytest.mark.parametrize("case", list(PASSING_OPS))
def test_zero_channels_pass_an_elementwise_operation_and_are_removed_exactly(case):
    model = around(PASSING_OPS[case])
    zero_producer_groups(model)
    check_removed(model)  # "a" loses exactly the 3 zeroed channels, the outputs stay equal


@pytest.mark.parametrize("case", list(KEPT_OPS))
def test_an_operation_with_a_nonzero_value_at_zero_keeps_the_channels(case):
    model = around(KEPT_OPS[case])
    with pytest.warns(UserWarning, match="left out of the groups"):
        scopes = make_groups(model)
    assert not any("a" in s.name.split("+") for s in scopes)  # no group that zeroing could not remove
    zero_producer_channels(model)
    plan = plan_shrink(model)
    assert plan.widths["a"] == (8, 8)
    assert any("nonzero" in why for _, why in plan.not_removed), plan.not_removed
    assert output_difference(model, shrink(model, random_input(model)), random_input(model, seed=5))[2]


def two_producers(merge):
    """``x -> a, c (8 channels each) -> merge(a, c) -> b (4) -> pool -> head``."""
    keras.utils.set_random_seed(0)
    x = keras.Input((12, 12, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(x)
    c = L.Conv2D(8, 3, padding="same", name="c")(x)
    h = L.Conv2D(4, 1, name="b")(merge(a, c))
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(h)))
    rng = np.random.default_rng(1)
    for w in model.weights:
        if w.path.endswith("bias"):
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    return model


TWO_TENSOR_OPS = {
    "add": ops.add,
    "subtract": ops.subtract,
    "multiply": ops.multiply,
    "maximum": ops.maximum,
    "minimum": ops.minimum,
    "divide(a, exp(c))": lambda a, c: ops.divide(a, ops.exp(c)),
    "a + c (operator)": lambda a, c: a + c,
}


@pytest.mark.parametrize("case", list(TWO_TENSOR_OPS))
def test_two_tensor_operations_tie_their_channels_and_remove_them_together(case):
    model = two_producers(TWO_TENSOR_OPS[case])
    scope = zero_producer_groups(model, "a")
    assert set(scope.name.split("+")) == {"a", "c"}  # channel c of both operands is one group
    new, report = check_removed(model, "a")
    assert report.plan.widths["c"] == (8, 5)
    assert new.get_layer("c").filters == 5


def test_an_einsum_operation_is_refused_by_name_class_and_path_and_works_when_excluded():
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 5))
    a = L.Dense(8, name="a")(x)
    h = ops.einsum("bij,bkj->bik", a, a)  # scores over the channels: no element-wise rule
    model = keras.Model(x, L.Dense(3, name="head")(L.Flatten()(h)))
    name = next(n.layer.name for n in flatten_model(model).nodes if isinstance(n.layer, OperationCall))
    with pytest.raises(cr.UnsupportedLayerError) as e:
        make_groups(model)
    msg = str(e.value)
    assert f"operation {name!r}" in msg and "keras.src.ops.numpy.Einsum" in msg
    assert f"exclude=r'{name}'" in msg and "register_channel_rule(keras.src.ops.numpy.Einsum" in msg
    a_ = analyze(model, exclude=name)
    assert isinstance(a_.rules[name], cr.Opaque)
    x_test = random_input(model)
    assert output_difference(model, shrink(model, x_test, exclude=name), x_test)[2]


def test_a_per_channel_constant_keeps_the_channels_and_the_model_still_shrinks():
    scale = np.arange(1, 9, dtype="float32")  # 8 values, one per channel: it would have to be narrowed
    model = around(lambda t: ops.multiply(t, scale))
    a = analyze(model)
    op = next(p for p, n in a.graph.layers.items() if isinstance(n, OperationCall))
    assert isinstance(a.rules[op], cr.Opaque) and "8 values" in a.rules[op].reason
    zero_producer_groups(model, "b", [0])  # the rest of the model shrinks
    x_test = random_input(model)
    new, report = shrink(model, x_test, return_report=True)
    assert report.plan.widths["a"] == (8, 8) and report.plan.widths["b"] == (4, 3)
    assert output_difference(model, new, random_input(model, seed=5))[2]


def test_a_zero_residual_branch_through_an_add_operation_is_dropped():
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(x)
    branch = L.Conv2D(8, 1, name="branch_out")(L.Conv2D(6, 3, padding="same", name="branch_in")(a))
    h = a + branch  # a keras.ops Add node (ConvNeXt's "inputs + layer(x)")
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(h)))
    for w in model.get_layer("branch_out").weights:
        w.assign(np.zeros(w.shape, "float32"))
    x_test = random_input(model)
    new, report = shrink(model, x_test, return_report=True)
    assert {"branch_in", "branch_out"} <= set(report.dropped)
    assert output_difference(model, new, random_input(model, seed=5))[2]


def test_operations_inside_a_nested_model_are_analysed_and_rebuilt():
    keras.utils.set_random_seed(0)
    t = keras.Input((12, 12, 8))
    inner = keras.Model(t, ops.relu6(t + 3.0) / 6.0 * t, name="hswish")
    model = around(lambda h: inner(h))
    zero_producer_groups(model)
    new, _ = check_removed(model)
    assert new.get_layer("hswish").inputs[0].shape[-1] == 5


# ---------------------------------------------------------------------------- keras.applications
def mobilenet_v3(ctor, **kwargs):
    """The application with nonzero biases and BN parameters, and a sample of its inputs."""
    keras.utils.set_random_seed(0)
    model = ctor(input_shape=(64, 64, 3), weights=None, classes=10, classifier_activation=None, **kwargs)
    rng = np.random.default_rng(3)
    for w in model.weights:
        if w.path.endswith(("bias", "beta")):
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
        elif w.path.endswith("gamma"):
            w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
    pre = kwargs.get("include_preprocessing", True)
    x = rng.uniform(0, 255, (8, 64, 64, 3)).astype("float32") if pre else rng.normal(0, 1, (8, 64, 64, 3))
    return model, x.astype("float32")


def zero_every_scope(model, frac=0.3, seed=4):
    """Zeroes a random part of each scope's groups (at least one channel of each producer stays).

    Returns the number of channels each producer loses.
    """
    rng = np.random.default_rng(seed)
    weights = model_weights(model)
    removed: dict[str, int] = {}
    for s in make_groups(model):
        dead = np.flatnonzero(rng.random(s.num_groups) < frac)[: s.num_groups - 1]
        for mb in s.members:
            v = keras.ops.convert_to_numpy(weights[mb.path]).copy()
            idx = [slice(None)] * v.ndim
            idx[mb.axis] = np.flatnonzero(np.isin(mb.index, dead))
            v[tuple(idx)] = 0
            weights[mb.path].assign(v)
            if mb.path.endswith("/kernel") and mb.axis == v.ndim - 1:  # a producer of the scope's channels
                removed[mb.path.rsplit("/", 1)[0]] = int(np.isin(mb.index, dead).sum())
    return removed


def check_application(model, x):
    n_ops = sum(isinstance(n.layer, OperationCall) for n in flatten_model(model).nodes)
    removed = zero_every_scope(model)
    assert sum(removed.values()) > 100
    recalibrate_batchnorm(model, x)  # BN statistics that keep the signal alive (zeroed channels stay zero)
    y = keras.ops.convert_to_numpy(model(x, training=False))
    assert np.mean(np.std(y, axis=0)) > 1e-2  # the outputs depend on the input
    new, report = shrink(model, x, return_report=True)
    for path, n in removed.items():
        before, after = report.plan.widths[path]
        assert before - after == n, (path, before, after, n)
    assert new.count_params() < 0.8 * model.count_params()
    diff, tol, same = output_difference(model, new, x)
    assert same, (diff, tol)
    return n_ops


def test_mobilenet_v3_small_with_its_hard_sigmoid_operations_shrinks_exactly():
    model, x = mobilenet_v3(keras.applications.MobileNetV3Small, include_preprocessing=True)
    assert check_application(model, x) == 18  # the hard sigmoids of its 9 squeeze-excite blocks


@pytest.mark.slow
@pytest.mark.parametrize(
    "ctor, kwargs, n_ops",
    [
        (keras.applications.MobileNetV3Small, {"include_preprocessing": False}, 18),
        (keras.applications.MobileNetV3Small, {"minimalistic": True}, 0),
        (keras.applications.MobileNetV3Small, {"minimalistic": True, "include_preprocessing": False}, 0),
        (keras.applications.MobileNetV3Large, {}, 16),
        (keras.applications.MobileNetV3Large, {"include_preprocessing": False}, 16),
        (keras.applications.MobileNetV3Large, {"minimalistic": True}, 0),
        (keras.applications.MobileNetV3Large, {"minimalistic": True, "include_preprocessing": False}, 0),
    ],
    ids=[
        "small",
        "small-minimalistic",
        "small-minimalistic-raw",
        "large",
        "large-raw",
        "large-minimalistic",
        "large-minimalistic-raw",
    ],
)
def test_mobilenet_v3_variants_shrink_exactly(ctor, kwargs, n_ops):
    model, x = mobilenet_v3(ctor, **kwargs)
    assert check_application(model, x) == n_ops


def test_one_operation_object_called_with_different_constants_is_refused_with_the_way_out():
    from keras.src.ops.numpy import Add

    x = keras.Input((4,))
    op = Add(name="shared_add")
    model = keras.Model(x, L.Dense(2)(op(op(x, 1.0), 2.0)))
    with pytest.raises(ValueError, match=r"'shared_add'.*called more than once with different constants"):
        make_groups(model)
