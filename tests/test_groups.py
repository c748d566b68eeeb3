"""Groups as data: scopes, partitions, built-in kinds, path inference, serialization."""

import keras
import numpy as np
import pytest

import keras_wgsef as kw
from keras_wgsef.graph.model_graph import model_weights
from keras_wgsef.groups import match_variables
from keras_wgsef.groups.default import groups_from_paths
from keras_wgsef.groups.norms import scope_norms


def cnn():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.SeparableConv2D(16, 3, depth_multiplier=2, name="sep")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(12, name="fc")(h)
    return keras.Model(inp, keras.layers.Dense(4, name="head")(h))


def shapes(model):
    return {p: tuple(v.shape) for p, v in model_weights(model).items()}


@pytest.mark.parametrize("kind", ["input_channel", "filter_shape", "unstructured", "layer"])
def test_kinds_partition_their_variables(kind):
    model = cnn()
    scopes = kw.make_groups(model, kind)
    assert "head" not in {s.name for s in scopes}
    for s in scopes:
        s.validate(shapes(model))  # raises unless a partition into m nonempty groups


def test_kind_group_counts_by_hand():
    model = cnn()
    by = {s.name: s for s in kw.make_groups(model, "filter_shape")}
    assert by["c1"].num_groups == 3 * 3 * 3  # one kernel position (h, w, c_in) across filters
    assert by["dw"].num_groups == 9  # depthwise: a position across channels
    ic = {s.name: s for s in kw.make_groups(model, "input_channel")}
    assert ic["c1"].num_groups == 3 and ic["fc"].num_groups == 6 * 6 * 16
    assert ic["sep"].num_groups == 8  # input channel c owns depthwise[..., c, :] and pointwise rows 2c, 2c+1
    sizes = ic["sep"].sizes(shapes(model))
    assert np.all(sizes == 3 * 3 * 2 + 2 * 16)
    un = {s.name: s for s in kw.make_groups(model, "unstructured")}
    assert un["c1"].num_groups == 3 * 3 * 3 * 8


def test_output_channel_groups_couple_bias_and_batchnorm():
    model = cnn()
    s = next(s for s in kw.make_groups(model) if "c1" in s.name)
    paths = set(s.paths)
    assert {"c1/kernel", "c1/bias", "bn1/gamma", "bn1/beta"} <= paths
    # zeroing one group zeroes that channel after BN
    values = {p: v.numpy().copy() for p, v in model_weights(model).items()}
    for mb in s.members:
        x = values[mb.path]
        idx = [slice(None)] * x.ndim
        idx[mb.axis] = np.flatnonzero(mb.index == 3)
        x[tuple(idx)] = 0
    assert scope_norms(s, values)[3] == 0


def test_block_groups_and_mac_weights():
    model = cnn()
    scopes = kw.make_groups(model, "block", block=4, weights="macs")
    c1 = next(s for s in scopes if s.name == "c1" or s.name.startswith("c1"))
    assert c1.num_groups == 2 and c1.weights is not None and np.all(c1.weights > 0)
    with pytest.raises(ValueError, match="multiple"):
        kw.make_groups(model, "block", block=3)


def test_path_groups_default_output_channels():
    model = cnn()
    scopes = groups_from_paths(model.trainable_variables)
    names = [s.name for s in scopes]
    assert names == ["c1", "sep", "fc"]  # head excluded; the depthwise kernel (last axis 1) skipped
    sep = scopes[1]
    assert sep.members[0].path.endswith("pointwise_kernel") and sep.num_groups == 16


def test_scope_config_round_trip_and_merge():
    model = cnn()
    scopes = kw.make_groups(model)
    again = [kw.GroupScope.from_config(s.get_config()) for s in scopes]
    for a, b in zip(scopes, again):
        assert a.get_config() == b.get_config()
    merged = kw.merge_scopes(scopes, shapes=shapes(model))
    assert merged.num_groups == sum(s.num_groups for s in scopes)
    merged.validate(shapes(model))


def test_bad_group_definitions():
    with pytest.raises(ValueError, match="no members"):
        kw.GroupScope("x", ())
    with pytest.raises(ValueError, match="appears twice"):
        kw.GroupScope("x", (kw.Member("a/kernel", 0, np.arange(2)), kw.Member("a/kernel", 1, np.arange(2))))
    s = kw.GroupScope("x", (kw.Member("a/kernel", 0, np.array([0, 2])),), num_groups=3)
    with pytest.raises(ValueError, match="no elements"):
        s.validate({"a/kernel": (2, 5)})
    with pytest.raises(ValueError, match="unknown group kind"):
        kw.make_groups(cnn(), "rows")


class V:
    def __init__(self, path):
        self.path = path


def test_member_paths_match_variables_exactly_or_by_the_closest_suffix_one_to_one():
    variables = [V("sequential/c/kernel"), V("a/kernel"), V("x/a/bias"), V("y/a/bias"), V("b/kernel")]
    got = match_variables(["c/kernel", "blk/a/kernel", "top/b/kernel"], variables)
    assert {p: v.path for p, v in got.items()} == {
        "c/kernel": "sequential/c/kernel",  # a Sequential model's name before the member
        "blk/a/kernel": "a/kernel",  # load_model dropped the nested model's name
        "top/b/kernel": "b/kernel",
    }
    # a variable goes to one member: the exact path first, then the one sharing the most components
    pair = [V("a/kernel"), V("sequential/blk/a/kernel")]
    got = match_variables(["blk/a/kernel", "a/kernel"], pair)
    assert got["a/kernel"] is pair[0] and got["blk/a/kernel"] is pair[1]
    with pytest.raises(ValueError, match=r"'blk/a/kernel' matches none.*went to the members \['a/kernel'\]"):
        match_variables(["blk/a/kernel", "a/kernel"], variables[:2])
    loaded = [V("forward_gru/gru_cell/kernel"), V("gru_cell/kernel"), V("gru/gru_cell/kernel")]
    members = ["bi/forward_gru/gru_cell/kernel", "rnn/stacked_rnn_cells/gru_cell/kernel", "gru/gru_cell/kernel"]
    got = match_variables(members, loaded)
    assert [got[m] for m in members] == loaded
    with pytest.raises(ValueError, match=r"'a/bias' matches several.*full layer path"):
        match_variables(["a/bias"], variables)
    with pytest.raises(ValueError, match=r"'d/kernel' matches none.*make_groups"):
        match_variables(["d/kernel"], variables)
    with pytest.raises(ValueError, match=r"'lstm/kernel' matches none.*'lstm/lstm_cell/kernel'.*make_groups"):
        match_variables(["lstm/kernel"], [V("lstm/lstm_cell/kernel"), V("lstm/lstm_cell/bias")])


def test_a_member_made_from_a_model_holds_its_variable_and_matches_it_whatever_the_paths():
    model = cnn()
    scope = next(s for s in kw.make_groups(model) if "c1" in s.name)
    kernel = model.get_layer("c1").kernel
    assert scope.members[0].path == "c1/kernel" and scope.members[0].variable() is kernel
    decoy = [V("c1/kernel")]  # an exact path, but the member's own variable is there too
    assert match_variables(scope.members[:1], [*decoy, kernel])["c1/kernel"] is kernel
    assert match_variables(scope.members[:1], decoy)["c1/kernel"] is decoy[0]  # not there: by path
    restored = kw.GroupScope.from_config(scope.get_config())
    assert restored.members[0].variable() is None and "ref" not in str(scope.get_config())


@pytest.mark.parametrize(
    "make, members",
    [
        (lambda: keras.layers.LSTM(3, name="rnn"), ["rnn/lstm_cell/kernel", "rnn/lstm_cell/recurrent_kernel"]),
        (lambda: keras.layers.TimeDistributed(keras.layers.Dense(3, name="d"), name="td"), ["td/d/kernel"]),
        (
            lambda: keras.layers.Bidirectional(keras.layers.GRU(3, name="g"), name="bi"),
            ["bi/forward_g/gru_cell/kernel", "bi/backward_g/gru_cell/kernel"],
        ),
        (
            lambda: keras.layers.SpectralNormalization(keras.layers.Dense(3, name="d"), name="sn"),
            ["sn/d/kernel", "sn/d/bias"],
        ),
    ],
    ids=["LSTM", "TimeDistributed", "Bidirectional", "SpectralNormalization"],
)
def test_members_of_cells_and_wrappers_are_the_variable_paths_and_survive_save_and_load(make, members, tmp_path):
    keras.utils.set_random_seed(0)
    x = keras.Input((5, 4))
    layer = make()
    h = layer(x)
    h = keras.layers.Flatten()(h) if len(h.shape) == 3 else h
    model = keras.Model(x, keras.layers.Dense(2, name="head")(h))
    paths = [p for s in kw.make_groups(model) for p in s.paths]
    assert set(members) <= set(paths)
    assert set(model_weights(model)) == {v.path for v in model.weights}  # a top-level Functional model
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    rebuilt = model_weights(loaded)
    assert set(rebuilt) == set(model_weights(model))  # named from the layers, not from variable.path
    unbound = [kw.Member(p, None, np.zeros(1)).path for p in paths]  # as an optimizer config restores them
    got = match_variables(unbound, loaded.trainable_variables)
    assert all(got[p] is rebuilt[p] for p in paths)


def test_block_size_only_with_the_block_kind():
    with pytest.raises(ValueError, match="block=4 applies to kind='block' only"):
        kw.make_groups(cnn(), block=4)


def test_weights_callable_has_one_signature_for_every_kind():
    model = cnn()
    seen = []

    def weights(scope, m):
        seen.append((scope.name, m is model))
        return np.arange(1, scope.num_groups + 1)

    for kind in ("output_channel", "filter_shape"):
        scopes = kw.make_groups(model, kind, weights=weights)
        assert all(np.array_equal(s.weights, np.arange(1, s.num_groups + 1)) for s in scopes)
    assert seen and all(same for _, same in seen)


@pytest.mark.parametrize(
    "after",
    [
        lambda h: keras.layers.Conv2D(4, 3, padding="same", activation="sigmoid", name="c")(h),
        lambda h: keras.layers.Rescaling(2.0, offset=1.0, name="shift")(keras.layers.Conv2D(4, 3, name="c")(h)),
    ],
)
def test_groups_that_zeroing_cannot_remove_are_left_out_with_a_warning(after):
    """Issue 11 item 5: sigmoid(0) = 0.5 (or an offset) makes a zero filter emit a constant: not removable."""
    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="ok")(x)
    h = after(h)
    m = keras.Model(x, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(h)))
    with pytest.warns(UserWarning, match=r"\['c'\] are left out of the groups: zeroing them would not remove them"):
        scopes = kw.make_groups(m)
    assert [s.name for s in scopes] == ["ok"]
    # the rule is shrink's: zero every group that is offered, and shrink removes exactly those channels
    from keras_wgsef.sparsity import zero_groups
    from tflite_export import shrink

    drop = np.zeros(6, bool)
    drop[:3] = True
    zero_groups(m, scopes, drop)
    assert shrink(m).get_layer("ok").filters == 3


def test_a_channel_scope_of_one_group_is_left_out_since_no_k_could_make_it_sparse():
    x = keras.Input((6, 5))
    h = keras.layers.Dense(8, name="a")(keras.layers.Conv1D(1, 3, name="one")(x))
    h = keras.layers.GroupQueryAttention(head_dim=4, num_query_heads=2, num_key_value_heads=1, name="gqa")(h, h)
    model = keras.Model(x, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(h)))
    names = [s.name for s in kw.make_groups(model)]
    assert "one" not in names and "gqa:heads" not in names and "a" in "+".join(names)
    opt = kw.WGSEF(keras.optimizers.SGD(0.1), k=0.5, groups=kw.make_groups(model))
    opt.build(model.trainable_variables)  # every scope offered takes a k in [1, m - 1]
    assert all(1 <= s.k < s.num_groups for s in opt.scopes)
