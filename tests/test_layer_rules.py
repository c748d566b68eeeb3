"""Every ``keras.layers`` class has a channel rule; each rule is checked by shrinking a model around it.

The check for a rule: a producer ``a`` (8 channels) feeds the layer under test, which feeds a
consumer; random groups of ``a`` are zeroed as WGSEF would (kernel slice, bias and every
per-channel parameter of the group), the model is shrunk, and

* where the rule says the channels pass (passthrough, per-channel carriers, inference identities,
  Embedding, EinsumDense), ``a`` loses exactly the zeroed channels;
* where it says they stay (opaque layers, ``f(0) != 0``), ``a`` keeps all 8 with the reason;

and the thinner model's outputs equal the original's on random inputs in both cases.
"""

import inspect
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from keras_wgsef import make_groups
from keras_wgsef.graph import rules as cr
from keras_wgsef.graph.channels import analyze
from keras_wgsef.graph.model_graph import model_weights
from tflite_export.shrink import output_difference, plan_shrink, shrink

L = keras.layers
ZEROED = [1, 4, 6]  # groups of producer "a" set to zero (3 of 8)


def keras_layer_classes() -> dict[type, str]:
    out: dict[type, str] = {}
    for name, obj in vars(keras.layers).items():
        if inspect.isclass(obj) and issubclass(obj, keras.layers.Layer):
            out.setdefault(obj, name)
    return out


def test_every_keras_layer_class_has_a_rule():
    classes = keras_layer_classes()
    assert len(classes) > 100  # the enumeration itself works
    missing = sorted(name for cls, name in classes.items() if not cr.has_rule(cls))
    assert not missing, f"keras.layers classes without a channel rule (or refusal): {missing}"


_IDENTITY_ARGS = {
    "RandomCrop": (16, 16),
    "RandomZoom": (0.2,),
    "RandomRotation": (0.2,),
    "RandomTranslation": (0.2, 0.2),
    "RandomContrast": (0.5,),
    "RandomBrightness": (0.5,),
    "RandomHue": (0.5,),
    "RandomSaturation": (0.5,),
    "RandomColorDegeneration": (0.5,),
    "RandomSharpness": (0.5,),
    "RandomShear": (0.2, 0.2),
    "RandomPosterization": ((1, 8),),
    "MaxNumBoundingBoxes": (5,),
    "GaussianNoise": (0.3,),
    "GaussianDropout": (0.3,),
    "AlphaDropout": (0.3,),
    "Dropout": (0.3,),
    "SpatialDropout2D": (0.3,),
}


@pytest.mark.parametrize("name", [n for n in cr.INFERENCE_IDENTITY if hasattr(L, n) and not n.endswith(("1D", "3D"))])
def test_inference_identity_layers_are_the_identity_at_inference(name):
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    layer = getattr(L, name)(*_IDENTITY_ARGS.get(name, ()))
    y = keras.ops.convert_to_numpy(layer(x, training=False))
    np.testing.assert_array_equal(y, x)
    assert isinstance(cr.rule_for(layer, name), cr.InferenceIdentity)


# --------------------------------------------------------------------------- around a producer
def around(layer_fn, shape=(12, 12, 3), producer=None, consumer=None, head_pool=None):
    """``x -> a (8 channels) -> layer -> b (4 channels) -> pool -> head (3)``."""
    keras.utils.set_random_seed(0)
    rank = len(shape) - 1
    conv = {1: L.Conv1D, 2: L.Conv2D, 3: L.Conv3D}.get(rank)
    x = keras.Input(shape)
    a = (producer or (lambda t: conv(8, 3, padding="same", name="a")(t)))(x)
    h = layer_fn(a)
    b = (consumer or (lambda t: L.Dense(4, name="b")(t)))(h)
    pool = head_pool or {3: L.GlobalAveragePooling1D, 4: L.GlobalAveragePooling2D, 5: L.GlobalAveragePooling3D}.get(
        len(b.shape), L.Identity
    )
    y = L.Dense(3, name="head")(pool()(b))
    model = keras.Model(x, y)
    rng = np.random.default_rng(1)
    for w in model.weights:  # nonzero biases and per-channel parameters: only the zeroed groups are dead
        if w.path.endswith(("bias", "beta", "scale", "alpha")):
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32") + (1.0 if w.path.endswith("scale") else 0.0))
    return model


def zero_producer_groups(model, producer="a", groups=ZEROED):
    scope = next(s for s in make_groups(model) if producer in s.name.split("+"))
    weights = model_weights(model)
    for mb in scope.members:
        v = keras.ops.convert_to_numpy(weights[mb.path]).copy()
        idx = [slice(None)] * v.ndim
        idx[mb.axis] = np.flatnonzero(np.isin(mb.index, groups))
        v[tuple(idx)] = 0
        weights[mb.path].assign(v)
    return scope


def zero_producer_channels(model, producer="a", channels=ZEROED):
    """Zeroes the producer's channels in its own weights (last axis), where no group covers them."""
    for w in model_weights(model).values():
        if w.path.startswith(f"{producer}/"):
            v = keras.ops.convert_to_numpy(w).copy()
            v[..., channels] = 0
            w.assign(v)


def random_input(model, seed=2):
    rng = np.random.default_rng(seed)
    out = []
    for t in model.inputs:
        shape = (4, *[int(s) for s in t.shape[1:]])
        if "int" in str(t.dtype):
            out.append(rng.integers(0, 20, shape).astype("int32"))
        else:
            out.append(rng.uniform(0, 2, shape).astype("float32"))
    return out[0] if len(out) == 1 else out


def check_removed(model, producer="a", removed=3):
    x = random_input(model)
    new, report = shrink(model, x, return_report=True)
    before = report.plan.widths[producer][0]
    assert report.plan.widths[producer] == (before, before - removed), report.plan.table()
    diff, tol, same = output_difference(model, new, random_input(model, seed=5))
    assert same, (diff, tol)
    return new, report


PASSING = {
    "Resizing": (lambda t: L.Resizing(6, 6)(t), {}),
    "Rescaling": (lambda t: L.Rescaling(0.5)(t), {}),
    "CenterCrop": (lambda t: L.CenterCrop(8, 8)(t), {}),
    "AutoContrast": (lambda t: L.AutoContrast()(L.ReLU()(t)), {}),
    "AdaptiveAveragePooling2D": (lambda t: L.AdaptiveAveragePooling2D((3, 3))(t), {}),
    "AdaptiveMaxPooling2D": (lambda t: L.AdaptiveMaxPooling2D((3, 3))(t), {}),
    "UpSampling2D": (lambda t: L.UpSampling2D()(t), {}),
    "ZeroPadding2D": (lambda t: L.ZeroPadding2D(1)(t), {}),
    "Cropping2D": (lambda t: L.Cropping2D(1)(t), {}),
    "RandomFlip": (lambda t: L.RandomFlip()(t), {}),
    "RandomRotation": (lambda t: L.RandomRotation(0.2)(t), {}),
    "RandomContrast": (lambda t: L.RandomContrast(0.3)(t), {}),
    "RandomTranslation": (lambda t: L.RandomTranslation(0.1, 0.1)(t), {}),
    "RandomShear": (lambda t: L.RandomShear(0.2, 0.3)(t), {}),  # its config does not load back as written
    "UnitNormalization": (lambda t: L.UnitNormalization()(t), {}),
    "RMSNormalization": (lambda t: L.RMSNormalization()(t), {}),
    "GroupNormalization(groups=-1)": (lambda t: L.GroupNormalization(groups=-1)(t), {}),
    "PReLU": (lambda t: L.PReLU()(t), {}),
    "PReLU(shared)": (lambda t: L.PReLU(shared_axes=[1, 2, 3])(t), {}),
    "Permute((2, 1, 3))": (lambda t: L.Permute((2, 1, 3))(t), {}),
    "Softmax(axis=1) then UnitNormalization": (lambda t: L.UnitNormalization(axis=[1, 2])(t), {}),
    "Pipeline": (lambda t: L.Pipeline([L.RandomFlip(), L.RandomRotation(0.1)])(t), {}),
    "Conv1D+UpSampling1D+ZeroPadding1D+Cropping1D": (
        lambda t: L.Cropping1D(1)(L.ZeroPadding1D(2)(L.UpSampling1D()(t))),
        {"shape": (10, 3)},
    ),
    "DepthwiseConv1D": (lambda t: L.DepthwiseConv1D(3, padding="same")(t), {"shape": (10, 3)}),
    "SeparableConv1D": (
        lambda t: t,
        {"shape": (10, 3), "consumer": lambda t: L.SeparableConv1D(4, 3, padding="same", name="b")(t)},
    ),
    "Conv1DTranspose consumer": (
        lambda t: t,
        {"shape": (10, 3), "consumer": lambda t: L.Conv1DTranspose(4, 3, name="b")(t)},
    ),
    "Conv3D+UpSampling3D+ZeroPadding3D+Cropping3D": (
        lambda t: L.Cropping3D(1)(L.ZeroPadding3D(1)(L.UpSampling3D()(t))),
        {"shape": (4, 4, 4, 2)},
    ),
    "Conv3DTranspose producer": (
        lambda t: t,
        {"shape": (4, 4, 4, 2), "producer": lambda t: L.Conv3DTranspose(8, 2, name="a")(t)},
    ),
    "RepeatVector": (
        lambda t: L.RepeatVector(3)(t),
        {"shape": (6,), "producer": lambda t: L.Dense(8, name="a")(t)},
    ),
    "Masking(0)": (
        lambda t: L.Masking(0.0)(t),
        {"shape": (5, 6), "producer": lambda t: L.Dense(8, name="a")(t), "head_pool": L.Flatten},
    ),
    "EinsumDense producer": (
        lambda t: t,
        {
            "shape": (5, 6),
            "producer": lambda t: L.EinsumDense("abc,cd->abd", output_shape=(5, 8), bias_axes="d", name="a")(t),
        },
    ),
    "EinsumDense consumer": (
        lambda t: t,
        {"shape": (5, 6), "consumer": lambda t: L.EinsumDense("abc,cd->abd", output_shape=(5, 4), name="b")(t)},
    ),
}


@pytest.mark.parametrize("case", list(PASSING))
def test_zeroed_channels_pass_through_the_layer_and_are_removed_exactly(case):
    fn, kw = PASSING[case]
    model = around(fn, **kw)
    zero_producer_groups(model)
    check_removed(model)


def test_embedding_output_dimensions_are_groups_and_are_removed():
    keras.utils.set_random_seed(0)
    x = keras.Input((5,), dtype="int32")
    h = L.Embedding(20, 8, name="a")(x)
    h = L.Conv1D(4, 3, padding="same", name="b")(h)
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(h)))
    scope = zero_producer_groups(model)
    assert scope.paths == ("a/embeddings",)
    new, _ = check_removed(model)
    assert new.get_layer("a").output_dim == 5


def test_normalization_adapted_on_the_features_passes_zero_channels():
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")
    norm = L.Normalization(name="norm")
    h = L.Conv2D(4, 1, name="b")(norm(a(x)))
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(h)))
    zero_producer_groups(model)
    probe = keras.Model(x, a.output)
    norm.adapt(probe.predict(random_input(model), verbose=0))  # the zeroed channels have mean 0
    new, _ = check_removed(model)
    assert tuple(new.get_layer("norm").mean.shape)[-1] == 5


def zero_channels_of(model, name, channels):
    """Zeroes output channels of ``name``'s kernel and bias by hand (no groups needed)."""
    for w in model.get_layer(name).weights:
        v = keras.ops.convert_to_numpy(w).copy()
        v[..., channels] = 0
        w.assign(v)


def test_normalization_with_given_statistics_removes_the_channels_whose_mean_is_zero():
    mean, variance = [0.0, 0.5, 0.0, 0.0, 0.0, -0.3, 0.0, 0.0], [2.0] * 8
    model = around(lambda t: L.Normalization(mean=mean, variance=variance, name="norm")(t))
    zero_channels_of(model, "a", [0, 1, 3])  # channel 1 leaves the layer as (0 - 0.5) / sqrt(2): it stays
    x = random_input(model)
    new, report = shrink(model, x, return_report=True)
    assert report.plan.widths["a"] == (8, 6)
    config = new.get_layer("norm").get_config()
    assert config["mean"] == [0.5, 0.0, 0.0, -0.3, 0.0, 0.0] and config["variance"] == [2.0] * 6
    assert output_difference(model, new, random_input(model, seed=5))[2]


@pytest.mark.parametrize("mean, removed", [(0.5, 0), (0.0, 3)])
def test_normalization_with_a_scalar_mean_removes_zero_channels_only_when_it_is_zero(mean, removed):
    model = around(lambda t: L.Normalization(mean=mean, variance=2.0, name="norm")(t))
    zero_channels_of(model, "a", ZEROED)
    new, report = shrink(model, random_input(model), return_report=True)
    assert report.plan.widths["a"] == (8, 8 - removed)
    assert new.get_layer("norm").get_config()["mean"] == mean
    assert output_difference(model, new, random_input(model, seed=5))[2]


def test_rms_normalization_rescales_epsilon_and_scale_to_stay_exact():
    model = around(lambda t: L.RMSNormalization(epsilon=0.5, name="rms")(t))
    scope = zero_producer_groups(model)
    assert "rms/scale" in scope.paths  # the scale is part of the channel's group
    new, _ = check_removed(model)
    assert new.get_layer("rms").epsilon == pytest.approx(0.5 * 8 / 5)


KEPT = {
    "LayerNormalization": (lambda t: L.LayerNormalization()(t), "mean"),
    "GroupNormalization(groups=2)": (lambda t: L.GroupNormalization(groups=2)(t), "group"),
    "Softmax": (lambda t: L.Softmax()(t), "softmax"),
    "Softmax over space (f(0) != 0)": (lambda t: L.Softmax(axis=1)(t), "nonzero"),
    "Permute moving the channel axis": (lambda t: L.Permute((3, 1, 2))(t), "moves the channel axis"),
    "Rescaling with offset": (lambda t: L.Rescaling(2.0, offset=1.0)(t), "nonzero"),
}


@pytest.mark.parametrize("case", list(KEPT))
def test_layers_that_cannot_pass_zero_channels_keep_them_with_the_reason(case):
    fn, why = KEPT[case]
    model = around(fn)
    make_groups(model)  # analysable
    zero_producer_channels(model)
    plan = plan_shrink(model)
    assert plan.widths["a"] == (8, 8)
    assert any(why in reason for _, reason in plan.not_removed), plan.not_removed
    new = shrink(model)  # and the rest still shrinks to an equal model
    assert output_difference(model, new)[2]


def sequence_model(mixer):
    """``c`` (zeroed, removable: read by ``d``) -> ``d`` -> mixer -> head: the mixer keeps ``d``'s channels."""
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 5))
    h = L.Conv1D(8, 3, padding="same", name="c")(x)
    h = L.Conv1D(8, 3, padding="same", name="d")(h)
    h = mixer(h)
    return keras.Model(x, L.Dense(3, name="head")(h))


@pytest.mark.parametrize(
    "mixer",
    [
        lambda h: L.RNN(L.LSTMCell(3))(h),
        lambda h: L.GlobalAveragePooling1D()(L.MultiHeadAttention(2, 4)(h, L.Dense(8)(h))),
        lambda h: L.GlobalAveragePooling1D()(L.MultiHeadAttention(2, 4, use_gate=True)(h, h)),
        lambda h: L.LSTM(4)(h, initial_state=[L.Dense(4)(L.GlobalAveragePooling1D()(h))] * 2),
    ],
    ids=["RNN(cell)", "cross-attention", "gated attention", "LSTM with an initial state"],
)
def test_recurrent_and_attention_layers_keep_their_channels_and_the_rest_shrinks(mixer):
    model = sequence_model(mixer)
    zero_producer_groups(model, "c")
    d = model.get_layer("d")  # d's channels are read by the mixer: they stay, even at zero
    d.set_weights([np.where(np.isin(np.arange(8), [0, 2]), 0.0, w).astype("float32") for w in d.get_weights()])
    plan = plan_shrink(model)
    assert plan.widths["d"] == (8, 8)
    reasons = " ".join(why for _, why in plan.not_removed)
    assert "not analysed yet" in reasons or "inputs (an initial state" in reasons or "different query" in reasons, (
        reasons
    )
    new, _ = check_removed(model, "c")
    assert new.count_params() < model.count_params()


@pytest.mark.parametrize(
    "make",
    [
        lambda: L.LSTM(6, name="rnn"),
        lambda: L.GRU(6, name="rnn"),
        lambda: L.GRU(6, reset_after=False, name="rnn"),
        lambda: L.SimpleRNN(6, name="rnn"),
        lambda: L.LSTM(6, return_sequences=True, name="rnn"),
    ],
    ids=["LSTM", "GRU", "GRU(reset_after=False)", "SimpleRNN", "LSTM(return_sequences)"],
)
def test_recurrent_units_are_groups_spanning_their_gates_and_are_removed_exactly(make):
    keras.utils.set_random_seed(0)
    x = keras.Input((7, 5))
    h = L.Conv1D(8, 3, padding="same", name="d")(x)
    rnn = make()
    h = rnn(h)
    h = L.Flatten()(h) if rnn.return_sequences else h
    model = keras.Model(x, L.Dense(3, name="head")(h))
    rng = np.random.default_rng(1)
    for w in model.weights:
        if w.path.endswith("bias"):
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    scopes = {s.name: s for s in make_groups(model)}
    gates = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[type(rnn).__name__]
    cell = f"rnn/{rnn.cell.name}"  # members are the variable paths: the cell's weights
    kernel = next(mb for mb in scopes["rnn"].members if mb.path == f"{cell}/kernel")
    assert scopes["rnn"].num_groups == 6 and kernel.index.tolist() == list(range(6)) * gates
    assert set(scopes["rnn"].paths) == {f"{cell}/kernel", f"{cell}/recurrent_kernel", f"{cell}/bias"}
    zero_producer_groups(model, "rnn", [1, 4])
    zero_producer_groups(model, "d", [0, 5, 6])  # the RNN reads zeros there: d loses them
    new, report = check_removed(model, "rnn", removed=2)
    assert report.plan.widths["d"] == (8, 5)
    assert new.get_layer("rnn").units == 4
    assert tuple(new.get_layer("rnn").get_weights()[0].shape) == (5, 4 * gates)


def test_attention_heads_and_output_channels_are_groups_and_are_removed_exactly():
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 5))
    h = L.Dense(8, name="a")(x)
    mha = L.MultiHeadAttention(3, 4, name="mha")
    h = L.Dense(4, name="b")(mha(h, h))
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(h)))
    scopes = {s.name: s for s in make_groups(model)}
    assert scopes["mha:heads"].num_groups == 3 and scopes["mha"].num_groups == 8
    assert set(scopes["mha:heads"].paths) == {
        f"mha/{n}/{w}" for n in ("query", "key", "value") for w in ("kernel", "bias")
    }
    zero_producer_groups(model, "mha:heads", [1])
    zero_producer_groups(model, "mha", [2, 5])
    zero_producer_groups(model, "a", [0, 3])  # read only by the attention's kernels: removed
    new, report = check_removed(model, "mha", removed=2)
    assert new.get_layer("mha").num_heads == 2 and report.plan.widths["a"] == (8, 6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: L.Bidirectional(L.LSTM(6), name="rnn"),
        lambda: L.Bidirectional(L.GRU(6), merge_mode="sum", name="rnn"),
        lambda: L.Bidirectional(L.SimpleRNN(6, return_sequences=True), merge_mode="ave", name="rnn"),
    ],
    ids=["LSTM concat", "GRU sum", "SimpleRNN ave, sequences"],
)
def test_bidirectional_units_are_groups_over_both_directions(make):
    keras.utils.set_random_seed(0)
    x = keras.Input((7, 5))
    h = L.Conv1D(8, 3, padding="same", name="d")(x)
    rnn = make()
    h = rnn(h)
    h = L.Flatten()(h) if len(h.shape) == 3 else h
    model = keras.Model(x, L.Dense(3, name="head")(h))
    scope = next(s for s in make_groups(model) if s.name == "rnn")
    assert scope.num_groups == 6 and len(scope.paths) == 6  # kernel, recurrent kernel, bias per direction
    zero_producer_groups(model, "rnn", [1, 4])
    zero_producer_groups(model, "d", [0, 5, 6])
    concat = rnn.merge_mode == "concat"
    new, report = check_removed(model, "rnn", removed=4 if concat else 2)
    assert new.get_layer("rnn").forward_layer.units == new.get_layer("rnn").backward_layer.units == 4
    assert report.plan.widths["d"] == (8, 5)


@pytest.mark.parametrize("rank", [1, 2])
def test_conv_lstm_filters_are_groups_and_are_removed_exactly(rank):
    keras.utils.set_random_seed(0)
    x = keras.Input((4, *([6] * rank), 3))
    conv = {1: L.ConvLSTM1D, 2: L.ConvLSTM2D}[rank](6, 3, padding="same", name="rnn")
    h = L.Flatten()(conv(x))
    model = keras.Model(x, L.Dense(3, name="head")(h))
    rng = np.random.default_rng(1)
    conv.cell.bias.assign(rng.normal(0, 0.3, conv.cell.bias.shape).astype("float32"))
    scope = next(s for s in make_groups(model) if s.name == "rnn")
    assert scope.num_groups == 6
    zero_producer_groups(model, "rnn", [0, 3])
    new, _ = check_removed(model, "rnn", removed=2)
    assert new.get_layer("rnn").filters == 4


@pytest.mark.parametrize("self_attention", [True, False], ids=["self", "query and value"])
def test_dot_attention_ties_query_and_key_channels_and_passes_the_value_channels(self_attention):
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 5))
    q = L.Conv1D(8, 3, padding="same", name="q")(x)
    v = q if self_attention else L.Conv1D(8, 3, padding="same", name="v")(x)
    h = L.Attention(name="att")([q, v])
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(L.Conv1D(4, 1, name="b")(h))))
    scopes = {s.name: s for s in make_groups(model)}
    assert "q" in scopes if self_attention else "q+v" in scopes  # tied by the scores
    zero_producer_groups(model, "q", [1, 4])
    new, report = check_removed(model, "q", removed=2)
    if not self_attention:
        assert report.plan.widths["v"] == (8, 6)


def test_attention_key_and_value_dimensions_zero_in_every_head_are_removed_exactly():
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 5))
    h = L.Dense(8, name="a")(x)
    mha = L.MultiHeadAttention(2, 4, name="mha")
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(mha(h, h))))
    weights = dict(zip([w.path for w in mha.weights], mha.get_weights()))
    for w in weights.values():
        if w.ndim:
            w += np.random.default_rng(1).normal(0, 0.3, w.shape).astype("float32")  # nonzero biases
    weights["mha/query/kernel"][..., 1] = 0  # key dimension 1: no query part in any head
    weights["mha/query/bias"][..., 1] = 0
    weights["mha/attention_output/kernel"][:, 2, :] = 0  # value dimension 2: never read
    mha.set_weights(list(weights.values()))
    x_test = random_input(model)
    new = shrink(model, x_test)
    small = new.get_layer("mha")
    assert (small.get_config()["key_dim"], small.get_config()["value_dim"], small.num_heads) == (3, 3, 2)
    assert output_difference(model, new, random_input(model, seed=5))[2]


def test_additive_attention_removes_a_channel_only_where_query_and_key_are_both_zero():
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 5))
    q = L.Conv1D(8, 3, padding="same", name="q")(x)
    k = L.Conv1D(8, 3, padding="same", name="k")(x)
    h = L.AdditiveAttention(name="att")([q, k, k])
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(L.Conv1D(4, 1, name="b")(h))))
    scope = next(s for s in make_groups(model) if s.name == "q+k")
    assert "att/scale" in scope.paths
    zero_producer_groups(model, "q", [1, 4])
    new, _ = check_removed(model, "q", removed=2)
    assert new.get_layer("att").scale.shape == (6,)


def test_dot_ties_its_inputs_channels_and_keeps_its_output():
    keras.utils.set_random_seed(0)
    x = keras.Input((5,))
    a = L.Dense(8, name="a")(x)
    b = L.Dense(8, name="b")(x)
    model = keras.Model(x, L.Dense(2, name="head")(L.Concatenate()([L.Dot(axes=-1, normalize=True)([a, b]), x])))
    zero_producer_groups(model, "a", [0, 7])
    new, report = check_removed(model, "a", removed=2)
    assert report.plan.widths["b"] == (8, 6)


def test_group_query_attention_ties_its_output_to_its_query_channels_and_drops_silent_heads():
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 5))
    h = L.Dense(8, name="a")(x)
    h = L.GroupQueryAttention(head_dim=4, num_query_heads=4, num_key_value_heads=2, name="gqa")(h, h)
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(L.Dense(4, name="b")(h))))
    scope = next(s for s in make_groups(model) if "a" in s.name.split("+"))
    assert {"gqa/attention_output/kernel", "gqa/attention_output/bias"} <= set(scope.paths)
    heads = next(s for s in make_groups(model) if s.name == "gqa:heads")
    assert heads.num_groups == 2  # key/value heads, each with its 2 query heads
    zero_producer_groups(model, "a", [2, 3])
    zero_producer_groups(model, "gqa:heads", [1])
    new, report = check_removed(model, "a", removed=2)
    assert report.plan.widths["gqa"] == (8, 6)
    config = new.get_layer("gqa").get_config()
    assert (config["num_key_value_heads"], config["num_query_heads"]) == (1, 2)


def test_spectral_normalization_keeps_its_normalization_for_the_narrower_kernel():
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 6, 3))
    h = L.SpectralNormalization(L.Conv2D(8, 3, name="conv"), name="a")(x)
    model = keras.Model(x, L.Dense(3, name="head")(L.Flatten()(L.Conv2D(4, 1, name="b")(h))))
    scope = next(s for s in make_groups(model) if s.name == "a")
    assert set(scope.paths) == {"a/conv/kernel", "a/conv/bias"}  # vector_u is not trained
    zero_producer_groups(model, "a")
    new, _ = check_removed(model, "a")
    assert new.get_layer("a").vector_u.shape == (1, 5)


def test_time_distributed_dense_is_a_producer():
    model = around(
        lambda t: t,
        shape=(5, 6),
        producer=lambda t: L.TimeDistributed(L.Dense(8, activation="relu"), name="a")(t),
    )
    zero_producer_groups(model)
    new, _ = check_removed(model)
    assert new.get_layer("a").layer.units == 5


@pytest.mark.parametrize(
    "make",
    [
        lambda: L.Lambda(lambda t: t * 2.0, name="refused"),
        lambda: L.Hashing(num_bins=3, name="refused"),
        lambda: L.StringLookup(vocabulary=["a", "b"], name="refused"),
        lambda: L.IntegerLookup(vocabulary=[1, 2], name="refused"),
        lambda: L.TextVectorization(name="refused"),
    ],
    ids=["Lambda", "Hashing", "StringLookup", "IntegerLookup", "TextVectorization"],
)
def test_layers_without_channel_meaning_are_refused_with_the_reason_and_the_way_out(make):
    layer = make()
    with pytest.raises(cr.UnsupportedLayerError) as e:
        cr.rule_for(layer, "block/refused")
    msg = str(e.value)
    assert type(layer).__name__ in msg and "'block/refused'" in msg
    assert "refused:" in msg and "register_channel_rule" in msg and "exclude=r'block/refused'" in msg


def text_model():
    """``strings -> TextVectorization -> Embedding a (8) -> Conv1D b (4) -> pool -> head``."""
    keras.utils.set_random_seed(0)
    tv = L.TextVectorization(max_tokens=20, output_sequence_length=5, name="tv")
    tv.adapt(["the cat sat", "a dog ran far away", "the dog sat"])
    x = keras.Input((1,), dtype="string")
    h = L.Conv1D(4, 3, padding="same", name="b")(L.Embedding(20, 8, name="a")(tv(x)))
    return keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(h)))


@pytest.mark.tensorflow_only  # string tensors: the torch and JAX backends cannot call the model at all
def test_an_excluded_text_vectorization_shrinks_with_its_vocabulary_and_asks_for_strings():
    model = text_model()
    with pytest.raises(cr.UnsupportedLayerError, match="TextVectorization"):
        make_groups(model)
    zero_channels_of(model, "a", ZEROED)
    text = np.array([["the cat ran"], ["a dog sat far"], ["unknown words"]])
    new, report = shrink(model, text, exclude="tv", return_report=True)
    assert report.plan.widths["a"] == (8, 5)
    assert new.get_layer("tv").get_vocabulary() == model.get_layer("tv").get_vocabulary()
    assert output_difference(model, new, np.array([["sat the dog"], ["far away"]]))[2]
    with pytest.raises(ValueError, match=r"takes strings.*pass a sample"):
        shrink(model, exclude="tv")  # no random strings to check the outputs on
    with pytest.raises(ValueError, match="takes strings, but its sample has dtype float32"):
        shrink(model, random_input(model), exclude="tv")


def test_wrappers_of_foreign_code_are_refused_in_the_registry():
    for name in ("TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer", "Lambda", "StringLookup"):
        cls = getattr(L, name, None)
        if cls is not None:
            entry = cr._REGISTRY[cls]
            assert isinstance(entry, cr.Refuse) and entry.reason, name


def test_a_spectrogram_front_end_keeps_its_bins_and_the_rest_shrinks():
    keras.utils.set_random_seed(0)
    x = keras.Input((2048,))
    h = L.MelSpectrogram(fft_length=256, sequence_stride=128, num_mel_bins=16, name="mel")(x)
    h = L.Conv1D(8, 3, padding="same", name="a")(L.Permute((2, 1))(h))
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(L.Conv1D(4, 1, name="b")(h))))
    zero_producer_groups(model)
    plan = plan_shrink(model)
    assert plan.widths["mel"][0] == plan.widths["mel"][1]  # its bins are made by fixed filters: kept
    new, _ = check_removed(model)
    assert new.get_layer("a").filters == 5


def test_a_refused_layer_is_opaque_when_excluded():
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 6, 2))
    h = L.Conv2D(8, 3, name="a")(x)
    h = L.Lambda(lambda t: t * 2.0, name="double")(h)
    model = keras.Model(x, L.Dense(3, name="head")(L.Flatten()(L.Conv2D(4, 1, name="b")(h))))
    with pytest.raises(cr.UnsupportedLayerError, match="Lambda"):
        analyze(model)
    a = analyze(model, exclude="double")
    assert isinstance(a.rules["double"], cr.Opaque)


def test_every_rule_names_its_parameters_with_their_channel_axis():
    """The analysis records, for each weight indexed by channel, its axis and ids (no layer-class checks)."""
    model = around(lambda t: L.RMSNormalization(name="rms")(L.BatchNormalization(name="bn")(t)))
    a = analyze(model)
    assert {p: ax for p, (ax, _) in a.param_ids.items() if p.startswith(("a/", "bn/", "rms/"))} == {
        "a/kernel": 3,
        "a/bias": 0,
        "bn/gamma": 0,
        "bn/beta": 0,
        "bn/moving_mean": 0,
        "bn/moving_variance": 0,
        "rms/scale": 0,
    }
    roots = {p: tuple(a.roots(ids)) for p, (_, ids) in a.param_ids.items()}
    assert roots["a/kernel"] == roots["bn/gamma"] == roots["rms/scale"]


def test_efficientnet_with_its_normalization_rescaling_and_squeeze_excite_shrinks_exactly():
    """``keras.applications.EfficientNetB0`` starts with ``Rescaling`` and ``Normalization`` (it failed there)."""
    from test_shrink import assert_same_outputs, out_width, randomize, sample, zero_random

    m = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
    randomize(m, seed=3, shift=0.02, variance=(0.2, 0.5))
    bounds = zero_random(m, 0.3, seed=4)
    x = sample((32, 32, 3), seed=7)
    assert np.mean(np.std(keras.ops.convert_to_numpy(m(x, training=False)), axis=0)) > 1e-3
    new, report = shrink(m, return_report=True)
    for name, (low, high) in bounds.items():
        assert low <= out_width(new, name) <= high, name
    assert new.count_params() < 0.85 * m.count_params()
    assert_same_outputs(m, new, x)
