"""The WGSEF optimizer wrapper: one step by hand, fit modes, save/load/resume, bad input."""

import os
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

import keras_wgsef as kw
from keras_wgsef import prox as P
from keras_wgsef import prox_ops


@pytest.fixture(params=["dense", "bisection"])
def root_finding(request, monkeypatch):
    """Runs a test with each of the tensor prox's root findings (dense phi for small problems, bisection)."""
    if request.param == "bisection":
        monkeypatch.setattr(prox_ops, "DENSE_PHI_LIMIT", 0)
    return request.param


def cases(n: int) -> int:
    """``n`` random cases, or a fraction of them (``WGSEF_CASE_FRACTION``): the JAX and torch runs of
    ``make test`` use 0.1, since eager JAX compiles every new shape (all cases run on TensorFlow)."""
    return max(3, round(n * float(os.environ.get("WGSEF_CASE_FRACTION", "1"))))


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(6, 3, name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(h))


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6, 6, 2)).astype("float32"), rng.integers(0, 3, size=n)


def c1_scope(model):
    c1, bn = model.get_layer("c1"), model.get_layer("bn1")
    idx = np.arange(8)
    return kw.GroupScope(
        "c1",
        (
            kw.Member(c1.kernel.path, -1, idx),
            kw.Member(c1.bias.path, 0, idx),
            kw.Member(bn.gamma.path, 0, idx),
            kw.Member(bn.beta.path, 0, idx),
        ),
    )


def test_tensor_prox_matches_numpy_reference(root_finding):
    rng = np.random.default_rng(0)
    for _ in range(cases(200)):
        m = int(rng.integers(1, 40))
        a = np.abs(rng.normal(size=m)) * 10 ** rng.uniform(-8, 4)
        a[rng.random(m) < 0.2] = 0
        d = rng.uniform(0.1, 50, size=m)
        k = int(rng.integers(0, m + 2))
        lam = float(10 ** rng.uniform(-5, 1))
        ref = P.prox_scales(a, d, k, lam)
        got = ops.convert_to_numpy(prox_ops.prox_scales(a, d, k, lam))
        assert got.dtype == np.float64  # on every backend (torch's Keras matmul and minimum return float32)
        np.testing.assert_allclose(got * a, ref * a, rtol=1e-9, atol=1e-12 * max(1.0, a.max()))


def test_batched_prox_is_the_prox_of_each_scope(root_finding):
    """Issue 10: S scopes of different m, k, weights and strengths in one (S, M) call, row by row exact."""
    rng = np.random.default_rng(3)
    for _ in range(cases(40)):
        n = int(rng.integers(1, 9))
        sizes = rng.integers(1, 30, size=n)
        width = int(sizes.max()) + int(rng.integers(0, 3))
        a, d = np.full((n, width), 7.0), np.full((n, width), 3.0)  # junk on the padding
        valid = np.arange(width)[None, :] < sizes[:, None]
        k = np.array([int(rng.integers(0, m + 2)) for m in sizes])
        lam = np.where(rng.random(n) < 0.15, 0.0, 10 ** rng.uniform(-5, 1, size=n))  # 0: the identity
        protect = np.zeros((n, width))
        for r, m in enumerate(sizes):
            a[r, :m] = np.abs(rng.normal(size=m)) * 10 ** rng.uniform(-6, 3)
            a[r, :m][rng.random(m) < 0.2] = 0
            d[r, :m] = rng.uniform(0.1, 50, size=m)
            protect[r, :m] = (rng.random(m) < 0.15) & (r % 2 == 1)
        for guard in (None, protect):
            got = ops.convert_to_numpy(prox_ops.batched_prox_scales(a, d, k, lam, valid, protect=guard))
            assert np.all(got[~valid] == 0)
            for r, m in enumerate(sizes):
                kw_ = {} if guard is None else {"protect": guard[r, :m] > 0}
                ref = P.prox_scales(a[r, :m], d[r, :m], int(k[r]), float(lam[r]), **kw_)
                after, expected = got[r, :m] * a[r, :m], ref * a[r, :m]
                np.testing.assert_allclose(after, expected, rtol=1e-9, atol=1e-12 * max(1.0, a[r, :m].max()))
                assert np.array_equal(after == 0, expected == 0)  # the same support, exactly
                assert np.array_equal(got[r, :m] > 0, expected > 0)  # a factor > 0 is a group left


def test_float32_prox_of_jax_without_x64_keeps_the_float64_support(monkeypatch):
    """JAX with x64 off runs the prox in float32: over 400 random scopes (norms over 4 decades,
    weights 0.5-5, m up to 200; fewer in the backend runs) the support equals float64's every time."""
    rng = np.random.default_rng(0)
    scopes = []
    for _ in range(cases(400)):
        m = int(rng.integers(2, 200))
        a = np.abs(rng.normal(size=m)) * 10 ** rng.uniform(-3, 1)
        scopes.append((a, rng.uniform(0.5, 5, size=m), int(rng.integers(1, m)), float(10 ** rng.uniform(-4, 0))))
    monkeypatch.setattr(prox_ops, "prox_dtype", lambda: "float32")
    for a, d, k, lam in scopes:
        got = ops.convert_to_numpy(prox_ops.prox_scales(a.astype(np.float32), d, k, lam)).astype(np.float64)
        ref = P.prox_scales(a, d, k, lam)
        assert np.array_equal(got > 0, ref > 0)
        np.testing.assert_allclose(got * a, ref * a, rtol=0, atol=1e-6 * a.max())


def test_padded_sq_norms_match_the_numpy_norms_of_every_scope():
    """One segment sum for every scope and member kind: groups along the last axis, another axis,
    a many-to-one index, element-wise groups and 1-D members, small (flattened) and large (reduced
    first), rows padded with exact zeros."""
    from keras_wgsef.groups.norms import scope_norms
    from keras_wgsef.groups.scope import GroupScope, Member

    rng = np.random.default_rng(5)
    for _ in range(cases(20)):
        scopes, values = [], []
        for s in range(int(rng.integers(1, 5))):
            m = int(rng.integers(2, 12))
            members, vals = [], {}
            for j in range(int(rng.integers(1, 5))):
                kind = rng.integers(0, 4)
                path = f"s{s}/w{j}"
                big = prox_ops.SMALL_TENSOR // m + 1 if rng.random() < 0.3 else 1  # past the flattening size
                if kind == 0:  # output channels of a kernel
                    x, mb = rng.normal(size=(3, 2 * big, m)), Member(path, -1, np.arange(m))
                elif kind == 1:  # groups along axis 0, several slices per group
                    x = rng.normal(size=(2 * m, 4, big))
                    mb = Member(path, 0, rng.permutation(np.repeat(np.arange(m), 2)))
                elif kind == 2:  # element-wise (filter-shape groups)
                    x = rng.normal(size=(2, m, 3))
                    mb = Member(path, None, rng.integers(0, m, size=x.shape))
                else:  # a bias
                    x, mb = rng.normal(size=(m,)), Member(path, 0, np.arange(m))
                members.append(mb)
                vals[path] = x.astype("float32")
            scope = GroupScope(f"s{s}", tuple(members))
            scopes.append(scope)
            values.append(vals)
        width = max(sc.num_groups for sc in scopes) + 1
        rows = np.concatenate([np.full(len(sc.members), r) for r, sc in enumerate(scopes)])
        flat = [v[mb.path] for sc, v in zip(scopes, values) for mb in sc.members]
        got = ops.convert_to_numpy(
            prox_ops.padded_sq_norms(flat, [mb for sc in scopes for mb in sc.members], rows, width)
        )
        for r, (sc, v) in enumerate(zip(scopes, values)):
            # float32 sums of up to ~2e4 squares: a few ulps per addition
            np.testing.assert_allclose(got[r, : sc.num_groups], scope_norms(sc, v) ** 2, rtol=2e-5)
            assert np.all(got[r, sc.num_groups :] == 0)


def test_padded_sq_norms_sum_float64_variables_in_float64():
    from keras_wgsef.groups.scope import Member

    x = np.array([[1.0, 1e-9], [1.0, 0.0]])  # 1 + 1e-18 is 1 in float32 and in float64; 1e-18 alone is not
    mbs = (Member("k", -1, np.arange(2)),)
    got = prox_ops.padded_sq_norms([ops.convert_to_tensor(x, "float64")], mbs, np.array([0]), 2)
    assert keras.backend.standardize_dtype(got.dtype) == "float64"
    # Keras' torch segment_sum accumulates in float32 whatever the dtype (scatter_reduce on
    # data.float()): float64 variables get float32-precise norms there
    rtol = 1e-7 if keras.backend.backend() == "torch" else 1e-12
    np.testing.assert_allclose(ops.convert_to_numpy(got), [[2.0, 1e-18]], rtol=rtol)


def test_tensor_prox_wide_norm_range_keeps_k(root_finding):
    """Tiny and large norms with MAC-like weights: a prefix scan cancels here; neither root finding may."""
    rng = np.random.default_rng(0)
    for _ in range(cases(150)):
        m = int(rng.integers(20, 150))
        a = 10 ** rng.uniform(-14, 2, size=m)
        d = rng.choice([1.4e4, 5.6e4, 6.3e4], size=m) * rng.uniform(0.9, 1.1, size=m)
        k = int(rng.integers(1, m))
        lam = float(10 ** rng.uniform(-8, -3))
        got = ops.convert_to_numpy(prox_ops.prox_scales(a, d, k, lam))
        assert np.count_nonzero(got) >= k
        np.testing.assert_allclose(got * a, P.prox_scales(a, d, k, lam) * a, rtol=1e-6, atol=1e-12 * a.max())


def numpy_leaders(a, d, segments):
    lead = np.zeros(a.size, bool)
    for s in np.unique(segments):
        idx = np.flatnonzero((segments == s) & (a > 0))
        if idx.size:
            r = a[idx] / np.sqrt(d[idx])
            lead[idx[np.flatnonzero(r == r.max())[0]]] = True
    return lead


def test_protected_tensor_prox_matches_numpy_reference(root_finding):
    rng = np.random.default_rng(1)
    for _ in range(cases(200)):
        m = int(rng.integers(2, 40))
        a = np.abs(rng.normal(size=m)) * 10 ** rng.uniform(-6, 3)
        a[rng.random(m) < 0.2] = 0
        a[rng.random(m) < 0.1] = a.max()  # ties inside a segment: the first index leads
        d = rng.uniform(0.1, 50, size=m)
        segments = np.sort(rng.integers(0, max(1, m // 4), size=m))
        lead = ops.convert_to_numpy(prox_ops.segment_leaders(a, d, segments))
        assert lead.tolist() == numpy_leaders(a, d, segments).astype(float).tolist()
        k = int(rng.integers(1, m + 2))
        lam = float(10 ** rng.uniform(-5, 1))
        ref = P.prox_scales(a, d, k, lam, protect=lead > 0)
        got = ops.convert_to_numpy(prox_ops.prox_scales(a, d, k, lam, protect=lead))
        np.testing.assert_allclose(got * a, ref * a, rtol=1e-6, atol=1e-12 * max(1.0, a.max()))
        alive = [s for s in np.unique(segments) if np.any(a[segments == s] > 0)]
        assert all(np.any(got[segments == s] > 0) for s in alive)  # no layer is emptied


@pytest.mark.parametrize("jit", [False, True])
def test_global_budget_keeps_every_layer_under_a_crushing_prox(jit):
    """Raw-MAC-like weights rank c1 last everywhere; the per-layer floor still keeps one c1 channel."""
    model = small_model()
    x, y = data()
    groups = kw.make_groups(model)
    groups = [g.replace(weights=np.full(g.num_groups, 1e4 if g.name.endswith("c1") else 1.0)) for g in groups]
    d = np.concatenate([g.weights for g in groups])
    a = P.group_norms(np.arange(1.0, 15.0), [[j] for j in range(14)])  # c1's norms are even the larger
    assert P.prox_scales(a, d, 3, 0.25)[:8].max() == 0  # one such prox step alone empties c1
    opt = kw.WGSEF(keras.optimizers.SGD(0.05), k=3, lam=5.0, groups=groups, envelope="model", ridge=False)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    counts = kw.nonzero_groups(model)
    assert len(counts) == 2 and min(counts.values()) >= 1
    assert counts["c1"] == 1  # the prox keeps only the protected leader of the crushed layer
    with pytest.raises(ValueError, match=r"k = 1 groups over 2 layers.*between 2 and 14"):
        kw.WGSEF(keras.optimizers.SGD(0.1), k=1, groups=kw.make_groups(model), envelope="model").build(
            model.trainable_variables
        )


def test_tensor_prox_worked_vector():
    a = P.group_norms(np.array([1, -2, 0.5, 3, 1, -0.2]), [[0, 1], [2], [3, 4], [5]])
    s = ops.convert_to_numpy(prox_ops.prox_scales(a, np.array([2, 1, 0.5, 1.0]), 2, 0.5))
    np.testing.assert_allclose(s, [0.5, 0, 0.8, 0], atol=1e-12)


@pytest.mark.tensorflow_only
def test_one_step_equals_inner_step_then_numpy_prox():
    """SGD step by hand, then the reference prox on the coupled group (kernel+bias+gamma+beta)."""
    x, y = data()
    model = small_model()
    ref = small_model()
    scope = c1_scope(model)
    lr, lam = 0.05, 2.0
    opt = kw.WGSEF(keras.optimizers.SGD(lr), k=3, lam=lam, groups=[scope])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = loss_fn(y, ref(x, training=True))
    grads = tape.gradient(loss, ref.trainable_variables)
    expected = {v.path: v.numpy() - lr * g.numpy() for v, g in zip(ref.trainable_variables, grads)}
    # reference prox on the flattened coupled group vector
    parts = [expected[p] for p in scope.paths]
    flat = np.concatenate([np.moveaxis(p, -1, 0).reshape(8, -1) for p in parts], axis=1)
    groups = [np.arange(j * flat.shape[1], (j + 1) * flat.shape[1]) for j in range(8)]
    d = np.full(8, flat.shape[1], dtype=float)
    proxed = P.wgsef_prox(flat.reshape(-1), groups, 3, lr * lam, d).reshape(8, -1)
    s = np.linalg.norm(proxed, axis=1) / np.linalg.norm(flat, axis=1)

    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    for p in scope.paths:
        got = next(v for v in model.trainable_variables if v.path == p).numpy()
        np.testing.assert_allclose(got, expected[p] * s, rtol=2e-5, atol=1e-6)
    other = next(v for v in model.trainable_variables if v.path.endswith("c2/kernel"))
    np.testing.assert_allclose(other.numpy(), expected[other.path], rtol=1e-5, atol=1e-7)
    assert opt.scopes[0].nonzero_count() == np.count_nonzero(s)


def test_one_step_over_several_scopes_is_each_scopes_prox():
    """Scopes of 9, 5 and 3 groups share one table: live, strength 0 and frozen rows, one step."""
    from keras_wgsef.groups.norms import scope_norms

    keras.utils.set_random_seed(2)
    inp = keras.Input((4,))
    h = keras.layers.Dense(9, name="a")(inp)
    h = keras.layers.Dense(5, name="b")(h)
    h = keras.layers.Dense(3, name="c")(h)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(h))
    lr = 0.1
    opt = kw.WGSEF(
        keras.optimizers.SGD(lr),
        k={"a": 3, "b": 2, "c": 1},
        lam={"a": 40.0, "b": 0.0, "c": 2.0},
        groups=kw.make_groups(model),
        ridge=True,  # the exact prox
    )
    opt.build(model.trainable_variables)
    a, b, c = opt.scopes
    assert (a.num_groups, b.num_groups, c.num_groups) == (9, 5, 3) and b.strength == 0.0
    c.freeze(np.array([True, False, True]))
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables]
    stepped = {v.path: ops.convert_to_numpy(v) - lr * g for v, g in zip(model.trainable_variables, grads)}
    opt.apply(grads, model.trainable_variables)
    after = {v.path: ops.convert_to_numpy(v) for v in model.trainable_variables}
    for state, lam in ((a, 40.0), (b, 0.0), (c, 0.0)):
        norms = scope_norms(state.scope, stepped)
        factor = P.prox_scales(norms, state.weights, state.k, lr * lam) * state.mask
        np.testing.assert_allclose(scope_norms(state.scope, after), factor * norms, rtol=1e-5, atol=1e-7)
        assert state.nonzero_count() == np.count_nonzero(factor * norms)
        np.testing.assert_allclose(state.attenuation, np.where(norms > 0, factor, 0.0), rtol=1e-5, atol=1e-7)
    assert 3 <= a.nonzero_count() < 9 and b.nonzero_count() == 5 and c.nonzero_count() == 2  # prox keeps >= k


@pytest.mark.parametrize("jit", [False, True])
def test_fit_reaches_k_with_strong_lam(jit):
    x, y = data(128)
    model = small_model()
    opt = kw.WGSEF(keras.optimizers.Adam(1e-2), k=3, lam=50.0, groups=[c1_scope(model)])
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    norms = opt.scopes[0].group_norms()
    # the prox alone keeps at least k (exactly k is the controller's job): 3 here on TensorFlow, as
    # before; torch (its own initialisation and Adam) ends with 4; the recorded count is the true one
    if keras.backend.backend() == "tensorflow":
        assert np.count_nonzero(norms) == 3
    assert 3 <= np.count_nonzero(norms) <= 4
    assert opt.scopes[0].nonzero_count() == np.count_nonzero(norms)


def test_default_groups_from_paths_exclude_head():
    model = small_model()
    opt = kw.WGSEF(keras.optimizers.SGD(0.1), k=0.5)
    model.compile(optimizer=opt, loss="mse")
    opt.build(model.trainable_variables)
    assert [s.name for s in opt.scopes] == ["c1", "c2"]
    assert [s.k for s in opt.scopes] == [4, 3]


def test_model_scope_merges_into_one_envelope():
    model = small_model()
    opt = kw.WGSEF(keras.optimizers.SGD(0.1), k=5, envelope="model")
    opt.build(model.trainable_variables)
    assert len(opt.scopes) == 1 and opt.scopes[0].num_groups == 14 and opt.scopes[0].k == 5


def test_k_mapping_by_pattern():
    model = small_model()
    opt = kw.WGSEF(keras.optimizers.SGD(0.1), k={"c1": 2, ".*": 0.5})
    opt.build(model.trainable_variables)
    assert [s.k for s in opt.scopes] == [2, 3]


def test_mixed_float16_trains_and_sparsifies():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = data(64)
        model = small_model()
        opt = kw.WGSEF(keras.optimizers.Adam(1e-2), k=2, lam=50.0, groups=[c1_scope(model)])
        model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert kw.nonzero_groups(model)[opt.scopes[0].name] == 2
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_save_load_resume_identical(tmp_path):
    x, y = data(64)
    model = small_model()
    opt = kw.WGSEF(keras.optimizers.Adam(1e-2), k=4, lam=5.0, groups=[c1_scope(model)], ridge=False)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    opt.scopes[0].freeze(opt.scopes[0].top_k_support())
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    lopt = loaded.optimizer
    assert isinstance(lopt, kw.WGSEF) and lopt.ridge is False and lopt.scopes[0].name == "c1"
    for a, b in zip(opt.variables, lopt.variables):
        np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert kw.nonzero_groups(loaded)["c1"] == 4  # the frozen mask survived


def test_a_checkpoint_with_per_scope_state_loads_into_the_table():
    """A model saved by an early 0.2.0.dev0 build (four optimizer variables per scope) loads with its state.

    The fixture (tests/data, written by that build) has two scopes of 8 and 5 groups: scope 0
    with strength 0.7 after prox steps (attenuated, 2 groups left), scope 1 frozen on groups {0, 2}.
    """
    import json

    data_dir = Path(__file__).parent / "data"
    expected = json.loads((data_dir / "per_scope_state_ba8e910.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras warns (and loads nothing) on a layout it cannot read
        loaded = keras.models.load_model(data_dir / "per_scope_state_ba8e910.keras")
    opt = loaded.optimizer
    assert [s.name for s in opt.scopes] == expected["scopes"]
    for r, state in enumerate(opt.scopes):
        assert state.strength == pytest.approx(expected["strength"][r])
        np.testing.assert_array_equal(state.mask, expected["mask"][r])
        np.testing.assert_array_equal(state.attenuation, expected["attenuation"][r])
        assert state.nonzero_count() == expected["nonzero"][r]
    assert opt.scopes[1].frozen and not opt.scopes[0].frozen
    assert int(ops.convert_to_numpy(opt.iterations)) == expected["iterations"] and opt.skipped_steps == 0
    momenta = [v for v in opt.inner_optimizer.variables if "momentum" in v.path]
    for v, saved in zip(momenta, expected["momentum"].values(), strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(v), saved)
    rng = np.random.default_rng(1)  # and it trains on: the frozen groups stay at zero
    loaded.fit(rng.normal(size=(16, 6)), rng.normal(size=(16, 2)), epochs=1, batch_size=8, verbose=0)
    assert kw.nonzero_groups(loaded)[opt.scopes[1].name] == 2


def test_a_per_scope_checkpoint_of_other_groups_is_refused_by_name():
    model = small_model()
    opt = kw.WGSEF(keras.optimizers.SGD(0.1), k=2, groups=[c1_scope(model)])
    opt.build(model.trainable_variables)
    store = {str(i): np.asarray(ops.convert_to_numpy(v)) for i, v in enumerate(opt.variables)}
    first = next(i for i, v in enumerate(opt.variables) if v is opt.scopes[0].table.strength)
    store[str(first)] = np.float32(0.5)  # per-scope layout: a scalar strength, then mask, attenuation, nonzero
    store[str(first + 1)] = np.ones(5, "float32")  # saved for 5 groups; c1 has 8
    with pytest.raises(ValueError, match=r"mask of scope 0 has shape \(5,\), but scope 'c1' has 8 groups"):
        opt.load_own_variables(store)


def test_config_round_trip():
    model = small_model()
    opt = kw.WGSEF(keras.optimizers.SGD(0.1, momentum=0.9), k={"c1": 2}, lam=0.3, groups=[c1_scope(model)])
    again = kw.WGSEF.from_config(opt.get_config())
    assert again.get_config() == opt.get_config()
    assert isinstance(again.inner_optimizer, keras.optimizers.SGD) and again.inner_optimizer.momentum == 0.9


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradients_skip_the_step(bad):
    """One bad entry in one gradient skips the whole step: no inner step, no prox, state kept."""
    model = small_model()
    opt = kw.WGSEF(keras.optimizers.SGD(0.1, momentum=0.9), k=2, lam=1.0, groups=[c1_scope(model)])
    opt.build(model.trainable_variables)
    kept = [v for v in [*model.trainable_variables, *opt.variables] if v is not opt._skipped]
    before = [np.array(ops.convert_to_numpy(v)) for v in kept]
    grads = [np.full(v.shape, 0.5, "float32") for v in model.trainable_variables]
    grads[-1].reshape(-1)[0] = bad
    opt.apply(grads, model.trainable_variables)
    assert opt.skipped_steps == 1
    for b, v in zip(before, kept):  # weights, momentum, iterations, prox state
        np.testing.assert_array_equal(b, np.array(ops.convert_to_numpy(v)))
    grads[-1].reshape(-1)[0] = 3e37  # large but finite: a normal step
    opt.apply(grads, model.trainable_variables)
    assert opt.skipped_steps == 1
    assert not np.array_equal(before[0], ops.convert_to_numpy(kept[0]))


def test_check_finite_sees_every_gradient_small_or_large():
    """Small gradients are summed together, large ones alone: a bad entry anywhere is found."""
    opt = kw.WGSEF(keras.optimizers.SGD(0.1))
    shapes = [(3, 3, 2, 8), (8,), (prox_ops.SMALL_TENSOR + 1,), (130, 130), (4, 5)]
    grads = [np.ones(s, "float32") for s in shapes] + [None, np.ones((2, 3), "float64")]
    assert bool(ops.convert_to_numpy(opt.check_finite(grads)))
    for i, g in enumerate(grads):
        for bad in (np.nan, np.inf, 3e38):  # 3e38: two of them sum past the float32 range
            if g is None:
                continue
            poisoned = [None if x is None else x.copy() for x in grads]
            poisoned[i].reshape(-1)[-1] = bad
            if bad == 3e38:
                poisoned[i].reshape(-1)[0] = bad
            assert not bool(ops.convert_to_numpy(opt.check_finite(poisoned))), (i, bad)
    assert not bool(ops.convert_to_numpy(opt.check_finite([np.full((prox_ops.SMALL_TENSOR * 2,), np.nan, "float32")])))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("k,match", [(8, r"\[1, 7\]"), ({"c1": 9}, r"\[1, 7\]")])
def test_bad_k_names_scope_and_range(k, match):
    """A k too large for its scope is only known at build: the message names the scope and the range."""
    model = small_model()
    opt = kw.WGSEF(keras.optimizers.SGD(0.1), k=k, groups=[c1_scope(model)])
    with pytest.raises((ValueError, TypeError), match=match):
        opt.build(model.trainable_variables)


def test_negative_lam_rejected():
    with pytest.raises(ValueError, match="lam must be"):
        kw.WGSEF(keras.optimizers.SGD(0.1), lam=-1.0)


def test_pattern_selecting_nothing_raises():
    model = small_model()
    opt = kw.WGSEF(keras.optimizers.SGD(0.1), include="no_such_layer")
    with pytest.raises(ValueError, match="no variable to regularize"):
        opt.build(model.trainable_variables)


def test_groups_that_do_not_partition_raise():
    model = small_model()
    c1 = model.get_layer("c1")
    bad = kw.GroupScope("c1", (kw.Member(c1.kernel.path, -1, np.array([0, 1, 2, 3, 4, 5, 6, 8])),), num_groups=9)
    opt = kw.WGSEF(keras.optimizers.SGD(0.1), k=2, groups=[bad])
    with pytest.raises(ValueError, match="partition"):
        opt.build(model.trainable_variables)


def test_unknown_variable_in_groups_raises():
    model = small_model()
    bad = kw.GroupScope("x", (kw.Member("nope/kernel", 0, np.arange(3)),))
    with pytest.raises(ValueError, match="nope/kernel"):
        kw.WGSEF(keras.optimizers.SGD(0.1), k=1, groups=[bad]).build(model.trainable_variables)


# ---------------------------------------------------------------- naming that survives save and load
def _sequential():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(6, 3, padding="same", name="c1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, name="head"),
        ]
    )


def _nested():
    keras.utils.set_random_seed(0)
    block = keras.Sequential(
        [keras.Input((6, 6, 2)), keras.layers.Conv2D(6, 3, padding="same", name="c1"), keras.layers.ReLU()],
        name="block",
    )
    x = keras.Input((6, 6, 2))
    h = keras.layers.GlobalAveragePooling2D()(block(x))
    return keras.Model(x, keras.layers.Dense(3, name="head")(h))


@pytest.mark.parametrize("build,scope_name", [(_sequential, "c1"), (_nested, "block/c1"), (small_model, "c1")])
def test_groups_name_layer_paths_and_survive_save_load(build, scope_name, tmp_path):
    """Sequential, nested and Functional models compiled with make_groups save, load and train on.

    Keras renames variables on reload ("sequential/c1/kernel" -> "c1/kernel", "block/c1/kernel" ->
    "c1/kernel"); members name the layer's path in the model and are matched to the variables."""
    x, y = data(64)
    model = build()
    groups = kw.make_groups(model)
    assert scope_name in [s.name for s in groups]
    opt = kw.WGSEF(keras.optimizers.SGD(0.05), k=3, lam=5.0, groups=groups)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [s.name for s in loaded.optimizer.scopes] == [s.name for s in opt.scopes]
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert kw.nonzero_groups(loaded) == kw.nonzero_groups(model)


def test_scope_keyword_is_the_old_name_of_envelope():
    with pytest.warns(DeprecationWarning, match="envelope"):
        opt = kw.WGSEF(keras.optimizers.SGD(0.1), k=5, scope="model")
    assert opt.envelope == "model" and opt.get_config()["envelope"] == "model"
    with pytest.raises(ValueError, match=r"envelope must be 'layer'.*or 'model'"):
        kw.WGSEF(keras.optimizers.SGD(0.1), envelope="global")


def test_scope_state_is_changed_only_through_checked_methods():
    model = small_model()
    opt = kw.WGSEF(keras.optimizers.SGD(0.1), k=3, groups=[c1_scope(model)])
    opt.build(model.trainable_variables)
    state = opt.scope_named("c1")
    state.set_strength(0.25)
    assert state.strength == 0.25 and not state.frozen
    with pytest.raises(ValueError, match="finite number >= 0"):
        state.set_strength(-1.0)
    with pytest.raises(ValueError, match="must have 8 entries"):
        state.freeze(np.ones(3, bool))
    with pytest.raises(KeyError, match="the scopes are \\['c1'\\]"):
        opt.scope_named("c2")


def test_gradient_accumulation_proxes_only_when_the_inner_update_fires():
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(6, name="h"), keras.layers.Dense(1, name="out")])
    inner = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    opt = kw.WGSEF(inner, k=2, lam=5.0, groups=kw.make_groups(m))
    opt.build(m.trainable_variables)
    start = [np.array(v) for v in m.trainable_variables]
    grads = [np.full(v.shape, 0.01, "float32") for v in m.trainable_variables]
    opt.apply(grads, m.trainable_variables)  # micro-step 1: no inner update, so no prox
    assert all(np.array_equal(a, np.array(v)) for a, v in zip(start, m.trainable_variables))
    assert (opt.scopes[0].attenuation == 1).all()
    opt.apply(grads, m.trainable_variables)  # micro-step 2: the update fires, then the prox
    assert (opt.scopes[0].attenuation < 1).any()
    # the same as one step of the same optimizer without accumulation, on the same (averaged) gradient
    ref = keras.models.clone_model(m)
    for v, a in zip(ref.trainable_variables, start):
        v.assign(a)
    ref_opt = kw.WGSEF(keras.optimizers.SGD(0.1), k=2, lam=5.0, groups=kw.make_groups(ref))
    ref_opt.build(ref.trainable_variables)
    ref_opt.apply(grads, ref.trainable_variables)
    for a, b in zip(m.trainable_variables, ref.trainable_variables):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"k": 1.5}, ValueError, r"fraction of groups kept and must lie in \(0, 1\)"),
        ({"k": 0}, ValueError, r"keep at least one group"),
        ({"k": True}, TypeError, r"k must be an int"),
        ({"k": "half"}, TypeError, r"k must be an int"),
        ({"k": {"conv": 2.0}}, ValueError, r"must lie in \(0, 1\)"),
        ({"lam": True}, ValueError, r"lam must be a finite number"),
        ({"lam": float("nan")}, ValueError, r"lam must be a finite number"),
    ],
)
def test_bad_k_and_lam_are_refused_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        kw.WGSEF(keras.optimizers.SGD(0.1), **kwargs)


def test_numpy_lam_is_accepted():
    assert kw.WGSEF(keras.optimizers.SGD(0.1), k=2, lam=np.float32(1e-3)).lam == np.float32(1e-3)


@pytest.mark.parametrize("backend", ["numpy", "openvino"])
def test_a_backend_that_cannot_train_is_refused_with_the_alternatives(backend, monkeypatch):
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="h"), keras.layers.Dense(1)])
    opt = kw.WGSEF(keras.optimizers.SGD(0.1), k=2, groups=kw.make_groups(m))  # constructing (loading) works
    opt.build(m.trainable_variables)
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    with pytest.raises(ValueError, match=rf"Keras runs on '{backend}', which cannot train: set KERAS_BACKEND"):
        opt.apply([np.zeros(v.shape, "float32") for v in m.trainable_variables], m.trainable_variables)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("metric", ["euclidean", "auto"])
def test_the_xla_compiled_prox_gives_the_same_training_as_the_plain_one(metric):
    """``xla_prox=True``: the same prox-and-assign as one XLA cluster; the weights follow the plain path."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 64)
    weights = {}
    for xla in (False, True):
        keras.utils.set_random_seed(0)
        inp = keras.Input((8, 8, 3))
        h = keras.layers.Conv2D(8, 3, name="c")(inp)
        model = keras.Model(inp, keras.layers.Dense(3, name="head")(keras.layers.Flatten()(h)))
        inner = keras.optimizers.SGD(0.05) if metric == "euclidean" else keras.optimizers.Adam(0.01)
        opt = kw.WGSEF(inner, k=3, lam=2.0, groups=kw.make_groups(model), xla_prox=xla, metric=metric)
        model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=3, batch_size=16, verbose=0)
        weights[xla] = [keras.ops.convert_to_numpy(w) for w in model.weights]
        assert opt.get_config()["xla_prox"] is xla
    for a, b in zip(weights[False], weights[True]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    kernel = weights[True][0]
    assert int(np.sum(np.any(kernel.reshape(-1, 8) != 0, axis=0))) < 8  # the prox acted


def _sequence_input(shape):
    x = keras.Input(shape)
    return x, keras.layers.Conv1D(8, 3, padding="same", name="d")(x)


def _recurrent(make):
    def build():
        x, h = _sequence_input((6, 5))
        return keras.Model(x, keras.layers.Dense(3, name="head")(make()(h)))

    return build


def _conv_lstm(rank):
    def build():
        x = keras.Input((3, *([5] * rank), 2))
        layer = getattr(keras.layers, f"ConvLSTM{rank}D")(6, 3, padding="same", name="rnn")
        return keras.Model(x, keras.layers.Dense(3, name="head")(keras.layers.Flatten()(layer(x))))

    return build


def _time_distributed():
    x, h = _sequence_input((6, 5))
    h = keras.layers.TimeDistributed(keras.layers.Dense(8, activation="relu"), name="td")(h)
    return keras.Model(x, keras.layers.Dense(3, name="head")(keras.layers.Flatten()(h)))


def _spectral():
    x = keras.Input((5,))
    h = keras.layers.SpectralNormalization(keras.layers.Dense(8, activation="relu"), name="sn")(x)
    return keras.Model(x, keras.layers.Dense(3, name="head")(keras.layers.Dense(6, name="e")(h)))


CELL_AND_WRAPPER_MODELS = {
    "LSTM": _recurrent(lambda: keras.layers.LSTM(6, name="rnn")),
    "GRU": _recurrent(lambda: keras.layers.GRU(6, name="rnn")),
    "SimpleRNN": _recurrent(lambda: keras.layers.SimpleRNN(6, name="rnn")),
    "ConvLSTM1D": _conv_lstm(1),
    "ConvLSTM2D": _conv_lstm(2),
    "TimeDistributed(Dense)": _time_distributed,
    "Bidirectional(LSTM)": _recurrent(lambda: keras.layers.Bidirectional(keras.layers.LSTM(6), name="bi")),
    "SpectralNormalization(Dense)": _spectral,
}


#: the cases the JAX run of ``make test`` trains (a cell, a wrapper and a wrapper with a variable of its own)
_CHEAP_UNDER_JAX = ("SimpleRNN", "TimeDistributed(Dense)", "SpectralNormalization(Dense)")


@pytest.mark.parametrize(
    "case",
    [
        *CELL_AND_WRAPPER_MODELS,
        pytest.param("ConvLSTM3D", marks=pytest.mark.slow),
    ],
)
def test_cells_and_wrappers_train_to_exactly_k_shrink_and_survive_save_and_load(case, tmp_path):
    """Members name the cell's or the inner layer's variable (``rnn/lstm_cell/kernel``, ``td/dense/kernel``):
    the optimizer finds them, ReachK reaches k in every scope, the shrunk model computes the same, and a
    saved model's optimizer finds the reloaded variables (Keras drops the wrapper's name from their paths)."""
    from tflite_export.shrink import output_difference, shrink

    if keras.backend.backend() == "jax" and case not in _CHEAP_UNDER_JAX:
        pytest.skip(
            "eager JAX compiles each recurrent step anew (~20-60 s a case): the TensorFlow and torch runs cover it"
        )
    keras.utils.set_random_seed(0)
    model = _conv_lstm(3)() if case == "ConvLSTM3D" else CELL_AND_WRAPPER_MODELS[case]()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, *model.input.shape[1:])).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    groups = kw.make_groups(model)
    opt = kw.WGSEF(keras.optimizers.SGD(0.05), k=0.5, groups=groups)
    model.compile(optimizer=opt, loss="mse")
    reach = kw.callbacks.ReachK(start_epoch=0, project_epoch=2, verbose=0)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[reach])
    k = {s.name: s.k for s in opt.scopes}
    assert kw.nonzero_groups(model) == k and len(k) >= 1
    assert all(v is model_var for s in opt.scopes for v, model_var in zip(s.variables, _own(s)))

    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    trainable = {id(v) for v in loaded.trainable_variables}
    assert all(id(v) in trainable for s in loaded.optimizer.scopes for v in s.variables)
    for a, b in zip(opt.scopes, loaded.optimizer.scopes):  # the same variables, found by path after loading
        for u, v in zip(a.variables, b.variables):
            np.testing.assert_array_equal(ops.convert_to_numpy(u), ops.convert_to_numpy(v))
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert kw.nonzero_groups(loaded) == k  # the frozen masks act on the reloaded variables: the support stays

    small = shrink(loaded, x[:8])
    assert output_difference(loaded, small, x[8:16])[2]
    assert small.count_params() < loaded.count_params()


def _own(state):
    """The variables the scope's members were made from (``make_groups`` ties each member to its variable)."""
    return [mb.variable() for mb in state.members]


# ------------------------------------------------- the prox in the inner optimizer's metric
def _metric_model(seed=3):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((5,))
    h = keras.layers.Dense(9, name="a")(inp)
    h = keras.layers.Dense(6, name="b")(h)
    return keras.Model(inp, keras.layers.Dense(2, name="head")(h))


def _twin(model):
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return twin


def _column_scaled_grads(model, seed=0):
    """Gradients whose scale differs by output channel, so that the groups' second moments differ."""
    rng = np.random.default_rng(seed)
    out = []
    for v in model.trainable_variables:
        scale = np.exp(rng.normal(scale=1.5, size=v.shape[-1]))
        out.append((rng.normal(size=v.shape) * scale).astype("float32"))
    return out


def _group_means(scope, arrays):
    """The mean of each group's entries, by hand (the members' group axis or element index)."""
    total, count = np.zeros(scope.num_groups), np.zeros(scope.num_groups)
    for mb in scope.members:
        x = np.asarray(arrays[mb.path], np.float64)
        if mb.axis is None:
            np.add.at(total, mb.index.reshape(-1), x.reshape(-1))
            np.add.at(count, mb.index.reshape(-1), 1.0)
        else:
            rows = np.moveaxis(x, mb.axis, 0).reshape(x.shape[mb.axis], -1)
            np.add.at(total, mb.index, rows.sum(axis=1))
            np.add.at(count, mb.index, rows.shape[1])
    return total / count


#: per optimizer: how to make it, and its inverse per-coordinate step scale from its slots (Keras 3's rules)
METRIC_CASES = {
    "adam": (
        lambda: keras.optimizers.Adam(0.05),
        lambda o, i, t: np.sqrt(ops.convert_to_numpy(o._velocities[i])) + o.epsilon,
    ),
    "adam_amsgrad": (
        lambda: keras.optimizers.Adam(0.05, amsgrad=True),
        lambda o, i, t: np.sqrt(ops.convert_to_numpy(o._velocity_hats[i])) + o.epsilon,
    ),
    "adamw": (
        lambda: keras.optimizers.AdamW(0.05, weight_decay=0.1),
        lambda o, i, t: np.sqrt(ops.convert_to_numpy(o._velocities[i])) + o.epsilon,
    ),
    "nadam": (
        lambda: keras.optimizers.Nadam(0.05, epsilon=0.1),  # a large epsilon: its bias correction shows
        lambda o, i, t: np.sqrt(ops.convert_to_numpy(o._velocities[i]) / (1 - o.beta_2**t)) + o.epsilon,
    ),
    "adamax": (
        lambda: keras.optimizers.Adamax(0.05),
        lambda o, i, t: ops.convert_to_numpy(o._u[i]) + o.epsilon,
    ),
    "rmsprop": (
        lambda: keras.optimizers.RMSprop(0.05),
        lambda o, i, t: np.sqrt(ops.convert_to_numpy(o._velocities[i]) + o.epsilon),
    ),
    "rmsprop_centered": (
        lambda: keras.optimizers.RMSprop(0.05, centered=True, momentum=0.5),
        lambda o, i, t: np.sqrt(
            ops.convert_to_numpy(o._velocities[i]) - ops.convert_to_numpy(o._average_gradients[i]) ** 2 + o.epsilon
        ),
    ),
    "adagrad": (
        lambda: keras.optimizers.Adagrad(0.05),
        lambda o, i, t: np.sqrt(ops.convert_to_numpy(o._accumulators[i]) + o.epsilon),
    ),
}


@pytest.mark.parametrize("case", sorted(METRIC_CASES))
def test_metric_prox_is_the_numpy_metric_prox_after_the_inner_step(case):
    """Inner step (a twin optimizer), then ``metric_prox_scales`` with h from its slots by hand, per scope."""
    from keras_wgsef.groups.norms import scope_norms

    make, inverse_step = METRIC_CASES[case]
    model = _metric_model()
    twin_model = _twin(model)
    lam = {"a": 1.0, "b": 3.0}
    opt = kw.WGSEF(make(), k={"a": 3, "b": 2}, lam=lam, groups=kw.make_groups(model), metric="auto", ridge=True)
    opt.build(model.trainable_variables)
    twin = make()
    twin.build(twin_model.trainable_variables)
    grads = _column_scaled_grads(model)
    for step in range(2):  # the second step: slots that have seen two gradients
        twin.apply([ops.convert_to_tensor(g if step else 0.3 * g) for g in grads], twin_model.trainable_variables)
        stepped = {v.path: ops.convert_to_numpy(v) for v in twin_model.trainable_variables}
        opt.apply(grads if step else [0.3 * g for g in grads], model.trainable_variables)
        after = {v.path: ops.convert_to_numpy(v) for v in model.trainable_variables}
        lr, t = float(ops.convert_to_numpy(twin.learning_rate)), int(ops.convert_to_numpy(twin.iterations))
        inv = {v.path: inverse_step(twin, twin._get_variable_index(v), t) for v in twin_model.trainable_variables}
        differs = False
        for state in opt.scopes:
            h = _group_means(state.scope, inv)
            h = h / h.mean()  # normalised over the scope's groups
            norms = scope_norms(state.scope, stepped)
            step_lam = lr * lam[state.name]
            s = P.metric_prox_scales(norms, state.weights, h / lr, state.k, lam[state.name])
            np.testing.assert_allclose(s, P.metric_prox_scales(norms, state.weights, h, state.k, step_lam), rtol=1e-9)
            for mb in state.members:
                expected = stepped[mb.path] * ops.convert_to_numpy(
                    prox_ops.expand_scales(s, stepped[mb.path].shape, mb.axis, mb.index)
                )
                np.testing.assert_allclose(after[mb.path], expected, rtol=1e-4, atol=1e-6)
            assert state.nonzero_count() == np.count_nonzero(s)
            differs |= not np.allclose(s, P.prox_scales(norms, state.weights, state.k, step_lam), atol=1e-3)
            for v in twin_model.trainable_variables:  # start the next step from the same weights
                if v.path in after:
                    v.assign(after[v.path])
        assert differs  # the metric changed the prox (else this test could not tell them apart)


@pytest.mark.parametrize("make", [lambda: keras.optimizers.SGD(0.1, momentum=0.9), lambda: keras.optimizers.Lion(1e-2)])
def test_metric_auto_without_a_second_moment_is_the_euclidean_prox(make):
    grads = _column_scaled_grads(_metric_model())
    result = {}
    for metric in ("auto", "euclidean"):
        model = _metric_model()
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no warning: the Euclidean prox is their metric prox
            opt = kw.WGSEF(make(), k=2, lam=2.0, groups=kw.make_groups(model), metric=metric)
            for _ in range(3):
                opt.apply(grads, model.trainable_variables)
        result[metric] = [ops.convert_to_numpy(v) for v in model.trainable_variables]
    assert opt._inverse_step is None
    for a, b in zip(result["auto"], result["euclidean"]):
        np.testing.assert_array_equal(a, b)


class _TweakedAdam(keras.optimizers.Adam):
    """An Adam whose update rule the metric cannot know (it overrides ``update_step``)."""

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient, variable, learning_rate)


def test_metric_auto_warns_once_for_an_unknown_optimizer_and_stays_euclidean():
    grads = _column_scaled_grads(_metric_model())
    result = {}
    for metric in ("auto", "euclidean"):
        model = _metric_model()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt = kw.WGSEF(_TweakedAdam(0.05), k=2, lam=2.0, groups=kw.make_groups(model), metric=metric)
            for _ in range(2):
                opt.apply(grads, model.trainable_variables)
        ours = [str(w.message) for w in caught if "WGSEF" in str(w.message)]
        if metric == "auto":
            assert len(ours) == 1 and "_TweakedAdam" in ours[0] and "stays Euclidean" in ours[0]
        else:
            assert ours == []
        result[metric] = [ops.convert_to_numpy(v) for v in model.trainable_variables]
    for a, b in zip(result["auto"], result["euclidean"]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"metric must be one of \('auto', 'euclidean'\), got 'adam'"):
        kw.WGSEF(keras.optimizers.Adam(), metric="adam")


def test_metric_survives_config_and_save_load(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 5)).astype("float32")
    y = np.random.default_rng(1).normal(size=(32, 2)).astype("float32")
    model = _metric_model()
    opt = kw.WGSEF(keras.optimizers.Adam(1e-2), k=3, lam=2.0, groups=kw.make_groups(model), metric="auto")
    assert kw.WGSEF.from_config(opt.get_config()).metric == "auto"
    assert opt.get_config()["metric"] == "auto"
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.metric == "auto" and loaded.optimizer._inverse_step is not None
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-5, atol=1e-6)


def _frozen_steps(opt, model, steps, seed=1):
    """Freezes every scope at its top k, then ``steps`` steps of nonzero gradients; returns the masks."""
    for state in opt.scopes:
        state.freeze(state.top_k_support())
    for i in range(steps):
        opt.apply(_column_scaled_grads(model, seed + i), model.trainable_variables)
    return {state.name: state.mask.astype(bool) for state in opt.scopes}


def _group_nonzero(state, arrays):
    from keras_wgsef.groups.norms import scope_norms

    return scope_norms(state.scope, arrays) > 0


@pytest.mark.parametrize("metric", ["auto", "euclidean"])
def test_adamw_decay_keeps_frozen_groups_exactly_zero(metric):
    model = _metric_model()
    opt = kw.WGSEF(
        keras.optimizers.AdamW(0.05, weight_decay=0.5), k=3, lam=1.0, groups=kw.make_groups(model), metric=metric
    )
    opt.apply(_column_scaled_grads(model), model.trainable_variables)
    masks = _frozen_steps(opt, model, 4)
    values = {v.path: ops.convert_to_numpy(v) for v in model.trainable_variables}
    for state in opt.scopes:
        np.testing.assert_array_equal(_group_nonzero(state, values), masks[state.name])
        assert state.nonzero_count() == state.k == masks[state.name].sum()


@pytest.mark.parametrize("metric", ["auto", "euclidean"])
def test_ema_copies_follow_the_envelope_and_finalize_to_exactly_k_groups(metric):
    """The moving averages are scaled with the weights: same support each step; swapped in at the end, k groups."""
    model = _metric_model()
    inner = keras.optimizers.AdamW(0.05, weight_decay=0.1, use_ema=True, ema_momentum=0.9)
    opt = kw.WGSEF(inner, k=3, lam=3.0, groups=kw.make_groups(model), metric=metric)
    for i in range(3):
        opt.apply(_column_scaled_grads(model, i), model.trainable_variables)
    for state in opt.scopes:  # before the freeze: the averages have the weights' support
        averages = {mb.path: ops.convert_to_numpy(a) for mb, a in zip(state.members, state.ema)}
        live = {mb.path: ops.convert_to_numpy(v) for mb, v in zip(state.members, state.variables)}
        np.testing.assert_array_equal(_group_nonzero(state, averages), _group_nonzero(state, live))
        assert _group_nonzero(state, live).sum() < state.num_groups  # the prox zeroed some
    masks = _frozen_steps(opt, model, 3)
    opt.finalize_variable_values(model.trainable_variables)  # what fit does at its end
    values = {v.path: ops.convert_to_numpy(v) for v in model.trainable_variables}
    for state in opt.scopes:
        np.testing.assert_array_equal(_group_nonzero(state, values), masks[state.name])
        assert masks[state.name].sum() == state.k == 3
    assert kw.nonzero_groups(model, [s.scope for s in opt.scopes]) == {"a": 3, "b": 3}


@pytest.mark.parametrize("metric", ["auto", "euclidean"])
def test_gradient_accumulation_under_the_metric_prox(metric):
    """The prox runs when the inner update fires (in between it is the identity), with the metric of that update."""
    model = _metric_model()
    ref = _twin(model)
    opt = kw.WGSEF(
        keras.optimizers.Adam(0.05, gradient_accumulation_steps=2),
        k=3,
        lam=6.0,
        groups=kw.make_groups(model),
        metric=metric,
    )
    ref_opt = kw.WGSEF(keras.optimizers.Adam(0.05), k=3, lam=6.0, groups=kw.make_groups(ref), metric=metric)
    grads = _column_scaled_grads(model)
    start = [ops.convert_to_numpy(v) for v in model.trainable_variables]
    opt.apply(grads, model.trainable_variables)  # micro-step 1: nothing moves
    for a, v in zip(start, model.trainable_variables):
        np.testing.assert_array_equal(a, ops.convert_to_numpy(v))
    assert all((s.attenuation == 1).all() for s in opt.scopes)
    opt.apply(grads, model.trainable_variables)  # micro-step 2: the update fires, then the prox
    ref_opt.apply(grads, ref.trainable_variables)
    for a, b in zip(model.trainable_variables, ref.trainable_variables):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-5, atol=1e-7)
    assert any(s.nonzero_count() < s.num_groups for s in opt.scopes)
    masks = _frozen_steps(opt, model, 3)  # odd: the last micro-step only accumulates
    values = {v.path: ops.convert_to_numpy(v) for v in model.trainable_variables}
    for state in opt.scopes:
        np.testing.assert_array_equal(_group_nonzero(state, values), masks[state.name])


def test_an_inner_optimizer_keeps_its_attribute_variables():
    """Nadam's running product is a variable in an attribute: it is among the saved (and JAX-stepped) variables."""
    model = _metric_model()
    opt = kw.WGSEF(keras.optimizers.Nadam(0.05), k=3, groups=kw.make_groups(model))
    opt.build(model.trainable_variables)
    assert any(v is opt.inner_optimizer._u_product for v in opt.variables)
    opt.apply(_column_scaled_grads(model), model.trainable_variables)
    assert float(ops.convert_to_numpy(opt.inner_optimizer._u_product)) < 1.0


def test_batched_prox_takes_tensor_weights_in_full_precision(root_finding):
    """The metric's weights ``d_j / h_j`` are tensors: the same factors as constant weights."""
    rng = np.random.default_rng(4)
    a = np.abs(rng.normal(size=(3, 7))) * np.exp(rng.normal(scale=2, size=(3, 7)))
    d = np.exp(rng.normal(size=(3, 7)))
    valid = np.arange(7)[None, :] < np.array([7, 5, 3])[:, None]
    a = np.where(valid, a, 0.0)
    dt = prox_ops.prox_dtype()
    lam = ops.convert_to_tensor(np.array([0.3, 1.0, 0.05]), dt)
    args = (np.array([2, 3, 1]), lam, valid)
    const = prox_ops.batched_prox_scales(ops.convert_to_tensor(a, dt), d, *args, zero_padded=True)
    tensor = prox_ops.batched_prox_scales(ops.convert_to_tensor(a, dt), ops.convert_to_tensor(d, dt), *args)
    assert keras.backend.standardize_dtype(tensor.dtype) == dt
    tol = 1e-12 if dt == "float64" else 1e-5
    np.testing.assert_allclose(ops.convert_to_numpy(tensor), ops.convert_to_numpy(const), rtol=tol, atol=tol)
    for r, m in enumerate([7, 5, 3]):
        ref = P.prox_scales(a[r, :m], d[r, :m], int(args[0][r]), float(ops.convert_to_numpy(lam)[r]))
        np.testing.assert_allclose(ops.convert_to_numpy(tensor)[r, :m], ref, rtol=max(tol, 1e-9), atol=max(tol, 1e-9))
