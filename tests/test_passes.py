"""The pass pipeline: one runner checks every change, names the failing pass, hands an unchanged view on."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from anchor_model import anchor_cnn

from tflite_export.passes import (
    BATCH_OF_ONE,
    DEFAULT,
    SHRINK,
    Context,
    GraphView,
    Pass,
    PassError,
    PassResult,
    ShrinkError,
    names,
    run_passes,
)
from tflite_export.passes.rebuild import rebuild

L = keras.layers


def small_cnn():
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 1))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c")(x)
    return keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling2D(name="gap")(h)))


class Nothing(Pass):
    """Changes nothing; records the view each plan was given."""

    name = "nothing"

    def __init__(self, name="nothing", views=None):
        self.name, self.views = name, views if views is not None else []

    def plan(self, view, ctx):
        self.views.append(view)
        return None

    def apply(self, model, plan, ctx):
        return PassResult(model, False, [])


class ScaleHead(Pass):
    """Doubles the head's kernel in a rebuilt copy: a pass that corrupts the outputs."""

    name = "scale_head"

    def plan(self, view, ctx):
        return "head"

    def apply(self, model, plan, ctx):
        def weights(path, old):
            if path != plan:
                return None
            k, b = old.get_weights()
            return [2.0 * k, b]

        return PassResult(rebuild(model, lambda config: None, weights), True, ["head doubled"])


def test_the_pass_lists_are_the_documented_order():
    assert names(SHRINK) == ("drop_zero_branches", "remove_dead_channels", "trim_kernel_borders")
    assert names(DEFAULT) == (*names(SHRINK), "global_pool_as_average_pool", "unroll_recurrent")
    assert names(BATCH_OF_ONE) == ("batch_of_one",)


def test_a_pass_that_corrupts_the_outputs_is_named_with_the_passes_before_it():
    model = small_cnn()
    x = np.random.default_rng(0).standard_normal((8, 8, 8, 1)).astype("float32")
    with pytest.raises(PassError, match=r"pass 'scale_head' \(after drop_zero_branches, remove_dead_channels\)") as e:
        run_passes(model, (*SHRINK[:2], ScaleHead()), Context(sample=x))
    assert e.value.pass_name == "scale_head" and e.value.before == ("drop_zero_branches", "remove_dead_channels")
    assert isinstance(e.value, ShrinkError) and "differs from the original" in str(e.value)


def test_a_pass_that_changes_nothing_hands_the_cached_view_on():
    model = small_cnn()
    views = []
    run = run_passes(model, (Nothing("a", views), SHRINK[0], Nothing("b", views)), Context())
    assert run.model is model and run.changed == []
    assert views[0] is views[1] and views[0].analysis is views[1].analysis  # analysed once, by drop_zero_branches
    # after a change the next pass gets a view of the new model
    views.clear()
    x = np.ones((2, 8, 8, 1), "float32")
    run = run_passes(model, (Nothing("a", views), SHRINK[0], DEFAULT[3], Nothing("b", views)), Context(sample=x))
    assert run.changed == ["global_pool_as_average_pool"] and views[1].model is run.model is not model


def test_the_batch_of_one_retry_is_checked():
    model = small_cnn()
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 1)).astype("float32")
    run = run_passes(model, BATCH_OF_ONE, Context(sample=x))
    assert run.changed == ["batch_of_one"] and run.model.inputs[0].shape[0] == 1
    assert run.tolerance > 0 and run.max_abs_diff <= run.tolerance  # compared sample by sample


def test_a_plain_cnn_through_the_default_passes_is_rebuilt_at_most_twice(monkeypatch):
    model = anchor_cnn()
    keras.utils.set_random_seed(2)
    model.build((None, 28, 28, 1))
    k, b = model.get_layer("conv2d_1").get_weights()
    k[..., 8:], b[8:] = 0.0, 0.0
    model.get_layer("conv2d_1").set_weights([k, b])
    calls = []
    deserialize = keras.saving.deserialize_keras_object
    counted = lambda *a, **kw: calls.append(1) or deserialize(*a, **kw)  # noqa: E731
    monkeypatch.setattr(keras.saving, "deserialize_keras_object", counted)
    x = np.random.default_rng(3).standard_normal((8, 28, 28, 1)).astype("float32")
    run = run_passes(model, DEFAULT, Context(sample=x))
    assert run.changed == ["remove_dead_channels", "global_pool_as_average_pool"] and len(calls) == 2
    assert run.model.get_layer("conv2d_1").filters == 8 and run.max_abs_diff <= run.tolerance


def test_the_budget_records_the_passes_it_prices_and_lowers_the_pooling_where_the_pass_rewrites_it():
    import keras_wgsef as kw
    from keras_wgsef.budget.lowering import lowering_template
    from keras_wgsef.budget.plan import BudgetPlan

    def pooled(masked):
        x = keras.Input((6, 3))
        h = L.Conv1D(4, 1, name="conv")(L.Masking(0.0, name="mask")(x) if masked else x)
        return keras.Model(x, L.Dense(2, name="head")(L.GlobalAveragePooling1D(name="gap")(h)))

    for masked, kind in ((False, "AVERAGE_POOL_2D"), (True, "MEAN")):
        model = pooled(masked)
        plans, kept = DEFAULT[3].plan(GraphView(model), Context())
        assert (list(plans), len(kept)) == (([], 1) if masked else (["gap"], 0))
        assert kind in lowering_template(model).lower(gap_as_avgpool=True).op_kinds
    model = pooled(False)
    scopes = kw.make_groups(model)
    assert BudgetPlan(model, scopes, kw.Budget(macs=0.5)).passes == (
        "remove_dead_channels",
        "global_pool_as_average_pool",
    )
    assert BudgetPlan(model, scopes, kw.Budget(macs=0.5), gap_as_avgpool=False).passes == ("remove_dead_channels",)
    with pytest.raises(ValueError, match="trim_kernel_borders"):
        BudgetPlan(model, scopes, kw.Budget(macs=0.5), passes=("remove_dead_channels", "trim_kernel_borders"))
