"""Budgets: bounds and their errors, the plan's predictions against exact counts, the support it selects."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from bench_models import BUILDERS, BUILDERS_1D

import keras_wgsef as kw
from keras_wgsef.budget.plan import BudgetPlan

L = keras.layers


# ------------------------------------------------------------------ Budget
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "sets no bound"),
        ({"macs": 0}, "must be > 0"),
        ({"arena_bytes": -5}, "must be > 0"),
        ({"macs": 1.5}, "neither a fraction"),
        ({"flash_bytes": float("nan")}, "finite number"),
        ({"macs": True}, "finite number"),
    ],
)
def test_budget_rejects_bad_bounds(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kw.Budget(**kwargs)


def test_budget_resolves_fractions_and_keeps_absolute_figures():
    b = kw.Budget(macs=0.25, flash_bytes=20_000, instructions=2.0e6)
    dense = {"macs": 1000, "flash_bytes": 40_000, "instructions": 5e6}
    assert b.resolve(dense) == {"macs": 250, "flash_bytes": 20_000, "instructions": 2_000_000}
    assert kw.Budget.from_config(b.get_config()) == b


# --------------------------------------------------------------- the plan
def _two_convs():
    x = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="c2")(h)
    return keras.Model(x, L.Dense(2, name="head")(L.GlobalAveragePooling2D(name="gap")(h)))


def test_plan_refuses_a_budget_the_dense_model_meets_and_one_below_the_floor():
    m = _two_convs()
    groups = kw.make_groups(m)
    dense_macs = kw.count_macs(m)["total"]
    with pytest.raises(kw.BudgetError, match=r"already meets.*nothing to remove"):
        BudgetPlan(m, groups, kw.Budget(macs=dense_macs))
    floor = 64 * 9 * 1 * 1 + 64 * 9 * 1 * 1 + 2  # one channel in c1 and c2, the head reads one
    with pytest.raises(kw.BudgetError, match=f"smallest feasible macs is {floor:,}"):
        BudgetPlan(m, groups, kw.Budget(macs=floor - 1))
    assert BudgetPlan(m, groups, kw.Budget(macs=floor)).floor["macs"] == floor


def test_plan_needs_channel_groups_of_this_model():
    m = _two_convs()
    with pytest.raises(kw.BudgetError, match="not a channel group"):
        BudgetPlan(m, kw.make_groups(m, "filter_shape"), kw.Budget(macs=0.5))


@pytest.mark.parametrize("name", ["anchor", "resnet8", "dscnn"])
def test_predicted_macs_and_params_equal_the_thin_model(name):
    builder, widths = BUILDERS[name]
    dense = builder()
    plan = BudgetPlan(dense, kw.make_groups(dense), kw.Budget(macs=0.5))
    rng = np.random.default_rng(1)
    for _ in range(3):
        thin = tuple(int(rng.integers(1, w + 1)) for w in widths)
        keep = np.concatenate([np.arange(w) < t for w, t in zip(widths, thin)])
        got = plan.predict(keep, ("macs", "params"))
        small = builder(thin)
        assert got["macs"] == kw.count_macs(small)["total"]
        # the int8 model's parameters: kernels and biases (BatchNorm folds into them; every conv has a bias)
        expected = sum(
            int(np.prod(w.shape)) for lay in small.layers for w in lay.weights if "kernel" in w.path or "bias" in w.path
        )
        assert got["params"] == expected


@pytest.mark.parametrize("name", ["anchor", "resnet8", "dscnn"])
@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.125])
def test_select_meets_the_bound_uses_it_and_keeps_min_widths(name, fraction):
    builder, _ = BUILDERS[name]
    m = builder()
    plan = BudgetPlan(m, kw.make_groups(m), kw.Budget(macs=fraction))
    rank = np.random.default_rng(0).uniform(0.5, 1.0, plan.num_groups)
    keep = plan.select(rank)
    macs = plan.predict(keep, ("macs",))["macs"]
    assert macs <= plan.bounds["macs"]
    assert macs >= 0.95 * plan.bounds["macs"]
    for sid, least in plan.min_keep.items():
        assert keep[plan.segments == sid].sum() >= least >= 1


def test_select_removes_low_rank_groups_first_and_only_candidates_survive():
    m = _two_convs()
    plan = BudgetPlan(m, kw.make_groups(m), kw.Budget(macs=0.5), min_width=0.0)
    rank = np.ones(16)
    rank[[0, 1, 8, 9]] = 0.01  # the first two channels of each layer are useless
    keep = plan.select(rank)
    assert not keep[[0, 1, 8, 9]].any()
    candidates = np.ones(16, bool)
    candidates[[2, 3, 10]] = False  # e.g. zeroed by the prox
    keep = plan.select(np.ones(16), candidates)
    assert not keep[[2, 3, 10]].any()
    assert plan.fits(plan.predict(keep))


# ------------------------------------------------------- optimizer errors
def test_wgsef_budget_errors_before_training():
    m = _two_convs()
    with pytest.raises(ValueError, match=r"both k=0\.5 and budget"):
        kw.WGSEF(keras.optimizers.Adam(), k=0.5, budget=kw.Budget(macs=0.5), groups=kw.make_groups(m))
    with pytest.raises(ValueError, match="needs channel groups"):
        kw.WGSEF(keras.optimizers.Adam(), budget=kw.Budget(macs=0.5))
    with pytest.raises(ValueError, match="one global envelope"):
        kw.WGSEF(keras.optimizers.Adam(), budget=kw.Budget(macs=0.5), groups=kw.make_groups(m), envelope="layer")
    opt = kw.WGSEF(keras.optimizers.SGD(0.1), budget=kw.Budget(macs=0.5), groups=kw.make_groups(m))
    m.compile(optimizer=opt, loss="mse")
    x, y = np.zeros((4, 8, 8, 1)), np.zeros((4, 2))
    with pytest.raises(ValueError, match="not bound to a model"):
        m.fit(x, y, epochs=1, verbose=0)
    opt2 = kw.WGSEF(keras.optimizers.SGD(0.1), budget=kw.Budget(macs=10**9), groups=kw.make_groups(m))
    m.compile(optimizer=opt2, loss="mse")
    with pytest.raises(kw.BudgetError, match="already meets"):
        m.fit(x, y, epochs=2, verbose=0, callbacks=[kw.callbacks.ReachK(verbose=0)])


def test_wgsef_budget_config_round_trip():
    m = _two_convs()
    opt = kw.WGSEF(keras.optimizers.Adam(), budget=kw.Budget(macs=0.5, arena_bytes=4096), groups=kw.make_groups(m))
    again = kw.WGSEF.from_config(opt.get_config())
    assert again.budget == opt.budget and again.envelope == "model" and again.k is None


def test_block_groups_give_widths_in_fast_multiples_at_the_predicted_cost():
    """Channel blocks of 4 (CMSIS-NN's fast widths): the budget prices and keeps whole blocks."""
    builder, _ = BUILDERS["dscnn"]
    m = builder()
    plan = BudgetPlan(m, kw.make_groups(m, "block", block=4), kw.Budget(macs=0.25))
    keep = plan.select(np.random.default_rng(0).uniform(0.5, 1.0, plan.num_groups))
    widths = tuple(4 * int(keep[plan.segments == s].sum()) for s in np.unique(plan.segments))
    macs = plan.predict(keep, ("macs",))["macs"]
    assert macs == kw.count_macs(builder(widths))["total"] <= plan.bounds["macs"]
    assert macs >= 0.95 * plan.bounds["macs"]


def test_select_terminates_when_only_locked_groups_could_go():
    """A trade locks the candidate's layer; if no other layer may shrink, the reduction stops rather than spin."""
    m = _two_convs()
    plan = BudgetPlan(m, kw.make_groups(m), kw.Budget(macs=0.5))
    plan.min_keep = {0: 8, 1: 1}  # c1 may not shrink at all
    keep = np.ones(16, bool)
    rank = np.where(np.arange(16) >= 8, np.inf, 1.0)  # c2 locked, as in a trade
    out = plan._reduce(keep, keep.copy(), rank)
    assert out.sum() == 16 and not plan.fits(plan.predict(out))


def test_memory_timeline_of_a_plan_follows_the_kept_groups():
    from keras_wgsef.budget import memory_timeline

    builder, _ = BUILDERS_1D["anchor1d"]
    model = builder((8, 16, 16, 32))
    plan = BudgetPlan(model, kw.make_groups(model), kw.Budget(macs=0.25))
    full = memory_timeline(plan)
    assert full.peak == memory_timeline(model).peak and full.arena == plan.dense["arena_bytes"]
    keep = plan.uniform
    thin = memory_timeline(plan, keep)
    assert thin.arena == plan.predict(keep)["arena_bytes"] and thin.peak < full.peak
    # the peak: a 1-D layer's 2-D output and its squeeze, both live (TFLM's RESHAPE copies)
    (two_d, squeezed), op = [b.shape for b in thin.peak_op.live], plan.lowered(keep).ops[thin.peak_op.index]
    assert op.kind == "RESHAPE" and two_d == (1, *squeezed) and len(squeezed) == 2
    with pytest.raises(TypeError, match="BudgetPlan"):
        memory_timeline(model, keep)
    with pytest.raises(TypeError, match="Keras model, a BudgetPlan or a LoweredModel"):
        memory_timeline("model.tflite")
