"""Channel groups from the graph: structure, coupling, options, zero-invariance and bad input."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from anchor_model import anchor_cnn

from keras_wgsef import make_groups
from keras_wgsef.graph import rules as cr
from keras_wgsef.graph.model_graph import model_weights

L = keras.layers


def shapes(model):
    return {p: tuple(w.shape) for p, w in model_weights(model).items()}


def check_partition(model, scopes):
    seen = set()
    for s in scopes:
        s.validate(shapes(model))
        for p in s.paths:
            assert p not in seen, f"{p} in two scopes"
            seen.add(p)
    return seen


def zero_groups(model, scope, groups):
    weights = model_weights(model)
    for mb in scope.members:
        x = weights[mb.path].numpy().copy()
        idx = [slice(None)] * x.ndim
        idx[mb.axis] = np.flatnonzero(np.isin(mb.index, groups))
        x[tuple(idx)] = 0
        weights[mb.path].assign(x)


def test_anchor_scopes_hold_kernel_bias_and_bn():
    m = anchor_cnn()
    scopes = make_groups(m)
    assert [(s.name, s.num_groups) for s in scopes] == [("conv2d", 16), ("conv2d_1", 32), ("conv2d_2", 64)]
    s = scopes[0]
    assert [(mb.path.split("/")[-1], mb.axis) for mb in s.members] == [
        ("kernel", 3),
        ("bias", 0),
        ("gamma", 0),
        ("beta", 0),
    ]
    assert s.sizes(shapes(m)).tolist() == [9 + 1 + 2] * 16
    assert s.weights is None and s.labels[5] == "conv2d:5"
    seen = check_partition(m, scopes)
    assert not any("dense" in p or "moving" in p for p in seen)  # output layer excluded, stats untrained


def test_zeroed_group_makes_the_channel_zero_downstream():
    m = anchor_cnn()
    rng = np.random.default_rng(0)
    for w in m.weights:  # nontrivial BN statistics
        if "batch_normalization" in w.path:
            w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
    scope = make_groups(m)[1]
    zero_groups(m, scope, [3, 17])
    probe = keras.Model(m.inputs[0], m.layers[6].output)  # after the 2nd BN + ReLU
    h = probe(rng.standard_normal((2, 28, 28, 1)).astype("float32")).numpy()
    assert np.all(h[..., [3, 17]] == 0) and np.all(np.abs(h[..., 4]).max() > 0)


def residual_model():
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 3, padding="same", name="a")(x)
    b = L.BatchNormalization(name="bn_b")(L.Conv2D(6, 1, name="b")(x))
    h = L.ReLU(name="r")(L.Add(name="add")([a, b]))
    y = L.Dense(4, name="out")(L.GlobalAveragePooling2D(name="gap")(L.Conv2D(5, 3, name="c")(h)))
    return keras.Model(x, y)


def test_residual_add_shares_group_ids():
    m = residual_model()
    scopes = {s.name: s for s in make_groups(m)}
    name = next(n for n in scopes if "+" in n)
    assert set(scopes) == {name, "c"} and sorted(name.split("+")) == ["a", "b"]
    s = scopes[name]
    assert s.num_groups == 6
    for mb in s.members:
        assert mb.index.tolist() == list(range(6))
    assert sorted(p.split("/")[0] for p in s.paths) == ["a", "a", "b", "b", "bn_b", "bn_b"]
    assert s.sizes(shapes(m)).tolist() == [27 + 1 + 3 + 1 + 2] * 6


def test_concatenate_then_bn_merges_scopes_with_offsets():
    x = keras.Input((6, 6, 2))
    c = L.Concatenate(name="cat")([L.Conv2D(3, 1, name="p")(x), L.Conv2D(5, 1, name="q")(x)])
    h = L.Conv2D(4, 3, name="next")(L.BatchNormalization(name="bn")(c))
    m = keras.Model(x, L.Flatten()(h))
    scopes = {s.name: s for s in make_groups(m, exclude_outputs=False)}
    assert set(scopes) == {"p+q", "next"}
    gamma = next(mb for mb in scopes["p+q"].members if mb.path == "bn/gamma")
    assert gamma.index.tolist() == list(range(8))
    q_kernel = next(mb for mb in scopes["p+q"].members if mb.path == "q/kernel")
    assert q_kernel.index.tolist() == [3, 4, 5, 6, 7]
    assert scopes["p+q"].labels[3] == "q:0"
    check_partition(m, scopes.values())


def test_concatenate_without_shared_params_keeps_separate_scopes():
    x = keras.Input((6, 6, 2))
    c = L.Concatenate()([L.Conv2D(3, 1, name="p")(x), L.Conv2D(5, 1, name="q")(x)])
    m = keras.Model(x, L.Dense(2)(L.Flatten()(L.Conv2D(4, 3, name="next")(c))))
    assert sorted(s.name for s in make_groups(m)) == ["next", "p", "q"]


def squeeze_excite():
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="feat")(x)
    s = L.GlobalAveragePooling2D(name="sq")(h)
    s = L.Dense(2, activation="relu", name="fc1")(s)
    s = L.Reshape((1, 1, 8), name="rs")(L.Dense(8, activation="sigmoid", name="fc2")(s))
    h = L.Multiply(name="gate")([h, s])
    return keras.Model(x, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="c2")(h))))


def test_squeeze_excitation_couples_gate_and_features():
    scopes = {s.name: s for s in make_groups(squeeze_excite())}
    assert set(scopes) == {"feat+fc2", "fc1", "c2"}
    fc2 = next(mb for mb in scopes["feat+fc2"].members if mb.path == "fc2/kernel")
    assert fc2.axis == 1 and fc2.index.tolist() == list(range(8))


def test_options_include_exclude_outputs_block_weights():
    m = anchor_cnn()
    assert [s.name for s in make_groups(m, include="conv2d_[12]")] == ["conv2d_1", "conv2d_2"]
    assert [s.name for s in make_groups(m, exclude=["^conv2d$"])] == ["conv2d_1", "conv2d_2"]
    assert [s.name for s in make_groups(m, exclude_outputs=False)][-1] == "dense"
    b = make_groups(m, "block", block=4)
    assert [s.num_groups for s in b] == [4, 8, 16] and b[0].labels[1] == "conv2d:4-7"
    assert b[0].members[0].index.tolist() == np.repeat(np.arange(4), 4).tolist()
    with pytest.raises(ValueError, match=r"conv2d.*multiple of block=3"):
        make_groups(m, "block", block=3)
    assert np.all(make_groups(m, weights="uniform")[0].weights == 1)
    macs = make_groups(m, weights="macs")
    # d_j = group size x relative cost; cost = producer MACs per output channel + the next
    # conv's MACs per input channel; the mean cost over every group of the model is 1
    cost = np.repeat(
        [28 * 28 * 9 + 14 * 14 * 9 * 32, 14 * 14 * 9 * 16 + 7 * 7 * 9 * 64, 7 * 7 * 9 * 32 + 10], [16, 32, 64]
    ).astype(float)
    shapes = {p: tuple(w.shape) for p, w in model_weights(m).items()}
    sizes = np.concatenate([s.sizes(shapes) for s in macs])
    np.testing.assert_allclose(np.concatenate([s.weights for s in macs]), sizes * cost / cost.mean())
    assert sizes[0] == 9 + 1 + 2  # 3x3x1 filter, bias, BN gamma and beta
    custom = make_groups(m, weights=lambda s, model: np.arange(1, s.num_groups + 1))
    assert custom[1].weights[-1] == 32
    with pytest.raises(ValueError, match="weights must be"):
        make_groups(m, weights="flops")


def test_depthwise_and_separable_carry_input_channels():
    x = keras.Input((8, 8, 3))
    h = L.ReLU()(L.BatchNormalization(name="bn0")(L.Conv2D(4, 3, use_bias=False, name="c0")(x)))
    h = L.BatchNormalization(name="bn1")(L.DepthwiseConv2D(3, padding="same", name="dw")(h))
    h = L.SeparableConv2D(6, 3, depth_multiplier=2, name="sep")(h)
    m = keras.Model(x, L.Dense(2)(L.GlobalMaxPooling2D()(h)))
    scopes = {s.name: s for s in make_groups(m)}
    assert set(scopes) == {"c0", "sep"}
    assert set(scopes["c0"].paths) == {
        "c0/kernel",
        "bn0/gamma",
        "bn0/beta",
        "dw/kernel",
        "dw/bias",
        "bn1/gamma",
        "bn1/beta",
        "sep/depthwise_kernel",
    }
    assert set(scopes["sep"].paths) == {"sep/pointwise_kernel", "sep/bias"}
    check_partition(m, scopes.values())


def test_nested_sequential_and_shared_layer():
    inner = keras.Sequential(
        [keras.Input((8, 8, 4)), L.Conv2D(4, 3, padding="same", name="ic"), L.ReLU()], name="inner"
    )
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", name="c1")(x)
    shared = L.Conv2D(4, 1, name="shared")
    h2 = L.Add()([shared(h), shared(inner(h))])
    m = keras.Model(x, L.Dense(2)(L.Flatten()(h2)))
    scopes = {s.name: s for s in make_groups(m)}
    # the shared conv reads c1 and inner/ic at the same input positions: their channels are tied
    assert set(scopes) == {"c1+inner/ic", "shared"}
    assert scopes["c1+inner/ic"].paths == ("c1/kernel", "c1/bias", "inner/ic/kernel", "inner/ic/bias")
    check_partition(m, scopes.values())


def test_nested_functional_models_as_the_outputs():
    """``output_layers`` numbers a nested Functional model's calls from 1; the graph still finds them."""

    def sub(name):
        t = keras.Input((4,))
        return keras.Model(t, L.Dense(3, name="head")(L.Dense(5, name="a")(t)), name=name)

    i1, i2 = keras.Input((4,)), keras.Input((4,))
    m = keras.Model([i1, i2], [sub("one")(i1), sub("two")(i2)])
    scopes = make_groups(m)
    assert [s.name for s in scopes] == ["one/a", "two/a"]
    check_partition(m, scopes)


def test_keras_applications_partition():
    r = keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10)
    scopes = make_groups(r)
    assert len(scopes) == 1 + 16 * 2 + 4  # conv1, two inner convs per block, one residual scope per stage
    stage2 = next(s for s in scopes if s.name.startswith("conv2_block1_0_conv+"))
    assert stage2.num_groups == 256 and len(stage2.members) == 4 * 4  # 4 producers: kernel, bias, gamma, beta
    check_partition(r, scopes)
    mb = keras.applications.MobileNet(input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=10)
    scopes = make_groups(mb)
    assert [s.name for s in scopes][:3] == ["conv1", "conv_pw_1", "conv_pw_2"] and len(scopes) == 14
    check_partition(mb, scopes)


class Doubler(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


def test_unknown_and_lambda_layers_name_class_and_path():
    x = keras.Input((4, 4, 2))
    h = L.Conv2D(3, 1, name="c")(x)
    m = keras.Model(x, L.Dense(2)(L.Flatten()(Doubler(name="dbl")(h))))
    with pytest.raises(cr.UnsupportedLayerError, match=r"'dbl' of class Doubler.*register_channel_rule.*exclude"):
        make_groups(m)
    with pytest.raises(ValueError, match="found nothing to group"):  # opaque: the conv's channels are kept
        make_groups(m, exclude="dbl")
    m2 = keras.Model(x, L.Dense(2)(L.Flatten()(L.Lambda(lambda t: t * 2, name="lam")(h))))
    with pytest.raises(cr.UnsupportedLayerError, match="'lam' of class Lambda"):
        make_groups(m2)


def test_registered_rule_is_used():
    class Halver(keras.layers.Layer):
        def call(self, x):
            return 0.5 * x

    cr.register_channel_rule(Halver, cr.Passthrough())
    x = keras.Input((4, 4, 2))
    m = keras.Model(x, L.Dense(2)(L.Flatten()(Halver()(L.Conv2D(3, 1, name="c")(x)))))
    assert [s.name for s in make_groups(m)] == ["c"]
    with pytest.raises(TypeError):
        cr.register_channel_rule("Halver", cr.Passthrough())


def test_softmax_activation_pins_channels():
    x = keras.Input((4, 4, 2))
    h = L.Activation("softmax", name="sm")(L.Conv2D(3, 1, name="c")(x))
    m = keras.Model(x, L.Dense(2)(L.Flatten()(L.Conv2D(3, 1, name="d")(h))))
    assert [s.name for s in make_groups(m)] == ["d"]


def test_pins_carry_their_kind_and_a_rule_returns_ids_per_output():
    from keras_wgsef.graph.channels import analyze
    from keras_wgsef.groups.channel_groups import channel_scopes

    x = keras.Input((4, 4, 2))
    h = L.Activation("softmax", name="sm")(L.Conv2D(3, 1, name="c")(x))
    m = keras.Model(x, L.Dense(2, name="head")(L.Flatten()(L.Conv2D(3, 1, name="d")(h))))
    a = analyze(m)
    kinds = {p.kind for p in a.pins.values()}
    assert kinds == {cr.PinKind.INPUT, cr.PinKind.OUTPUT, cr.PinKind.OPAQUE}
    opaque = {i for i, p in a.pins.items() if p.kind is cr.PinKind.OPAQUE}
    assert set(a.roots(a.out_ids["c"]).tolist()) <= {a.find(i) for i in opaque}  # read by the softmax
    a.unpin(cr.PinKind.OUTPUT)
    assert cr.PinKind.OUTPUT not in {p.kind for p in a.pins.values()} and len(a.pins) == 2 + 3 + 3
    _, grouped = channel_scopes(a.graph, heads={"head"})
    head = {i: p for i, p in grouped.pins.items() if p.kind is cr.PinKind.HEAD}
    assert sorted(head) == a.out_ids["head"].tolist() and "head" in next(iter(head.values())).message

    class TwoOutputs(cr.Passthrough):
        def propagate(self, b, node, ins):
            return [ins[0], ins[0]]

    class Twice(keras.layers.Layer):
        def call(self, x):
            return x

    cr.register_channel_rule(Twice, TwoOutputs())
    y = keras.Input((3,))
    with pytest.raises(ValueError, match="gave ids for 2 outputs; the call has 1"):
        analyze(keras.Model(y, L.Dense(2)(Twice(name="tw")(y))))
