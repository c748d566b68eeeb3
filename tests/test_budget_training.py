"""Training to a budget end to end: the controller's support, the export's measurement and repair, KD, rewinding."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from bench_models import anchor

import keras_wgsef as kw
import tflite_export as te
from keras_wgsef.budget.plan import BudgetPlan
from keras_wgsef.distill import Distiller
from keras_wgsef.optimizer import find_wgsef
from keras_wgsef.schedules import Rewound
from keras_wgsef.sparsity import group_norms

L = keras.layers


def _digits():
    (x, y), (xt, yt) = kw.datasets.load_digits8x8()
    return x, y, xt, yt


def _cnn():
    x = keras.Input((8, 8, 1))
    h = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(L.Conv2D(16, 3, padding="same", name="c1")(x)))
    h = L.MaxPooling2D(name="pool")(h)
    h = L.ReLU(name="r2")(L.BatchNormalization(name="bn2")(L.Conv2D(32, 3, padding="same", name="c2")(h)))
    return keras.Model(x, L.Dense(10, name="head")(L.GlobalAveragePooling2D(name="gap")(h)))


def _train(budget, epochs=6, seed=0, **reach):
    x, y, xt, yt = _digits()
    keras.utils.set_random_seed(seed)
    model = _cnn()
    steps = int(np.ceil(len(x) / 32))
    inner = keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.05, steps * epochs), momentum=0.9)
    opt = kw.WGSEF(inner, budget=budget, groups=kw.make_groups(model), ridge=False)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[kw.callbacks.ReachK(verbose=0, **reach)])
    kw.recalibrate_batchnorm(model, x)
    return model, opt


@pytest.fixture(scope="module")
def macs_run():
    return _train(kw.Budget(macs=0.3))


def test_reach_budget_freezes_a_support_that_meets_the_macs_bound_and_uses_it(macs_run):
    model, opt = macs_run
    plan, state = opt.plan, opt.scopes[0]
    keep = state.mask > 0
    assert state.frozen and state.k == keep.sum()
    predicted = plan.predict(keep, ("macs",))["macs"]
    assert 0.95 * plan.bounds["macs"] <= predicted <= plan.bounds["macs"]
    # exactly the groups of the support are nonzero, and the shrunk model has the predicted MACs
    assert ((group_norms(model, plan.scopes) > 0) == keep).all()
    small = te.shrink(model)
    assert kw.count_macs(small)["total"] == predicted


def test_export_measures_the_budget_and_says_nothing_was_removed(macs_run):
    model, opt = macs_run
    x, y, xt, yt = _digits()
    result = te.export(model, x[:100], eval_data=(xt[:100], yt[:100]), latency=False, instructions=False)
    b = result.report.budget
    assert b is not None and b["bounds"] == opt.plan.bounds
    assert b["measured"]["macs"] == result.report.macs <= opt.plan.bounds["macs"]
    assert b["removed_after_measurement"] == []
    assert "nothing removed" in result.report.to_markdown()


class _Optimistic(BudgetPlan):
    """A plan whose arena prediction is 25 % low: the export must catch it and remove groups."""

    def predict(self, keep, costs=("macs", "params", "flash_bytes", "arena_bytes", "instructions")):
        out = super().predict(keep, costs)
        if "arena_bytes" in out:
            out["arena_bytes"] = int(0.75 * out["arena_bytes"])
        return out


def test_a_mispredicted_bound_is_repaired_after_measurement():
    from tflite_export.budget_fit import meet_budget

    keras.utils.set_random_seed(0)
    model = anchor()  # activations dominate its arena; untrained weights: the support and costs are checked
    x = np.random.default_rng(0).uniform(0, 1, (64, 28, 28, 1)).astype("float32")
    plan = _Optimistic(model, kw.make_groups(model), kw.Budget(arena_bytes=0.9))
    before = [w.copy() for w in model.get_weights()]
    fit = meet_budget(model, plan, x[:64])
    assert fit.measured["arena_bytes"] <= plan.bounds["arena_bytes"]
    assert fit.removed, "the optimistic prediction should have needed a repair"
    assert any("prediction error" in n for n in fit.notes)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # the user's model untouched


def test_rewind_replays_the_schedule_after_the_freeze():
    model, opt = _train(kw.Budget(macs=0.3), epochs=4, rewind=True)
    schedule = opt.inner_optimizer.get_config()["learning_rate"]
    assert schedule["class_name"] == "Rewound"
    offset = schedule["config"]["offset"]
    total = schedule["config"]["total_steps"]
    assert 0 < offset < total  # rewound at the freeze, inside the run
    base = keras.optimizers.schedules.CosineDecay(0.05, total)
    r = Rewound(base, total, offset)
    assert float(r(offset)) == pytest.approx(0.05)
    assert float(r(total)) == pytest.approx(float(base(total)), abs=1e-7)


def test_distiller_loss_is_the_weighted_task_loss_plus_t2_kl():
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((4,)), L.Dense(3, name="t")])
    student = keras.Sequential([keras.Input((4,)), L.Dense(3, name="s")])
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    y = np.array([0, 1, 2, 1, 0])
    d = Distiller(student, teacher, alpha=0.3, temperature=2.0)
    d.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    s, t = student.predict(x, verbose=0).astype(np.float64), teacher.predict(x, verbose=0).astype(np.float64)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    task = -np.mean(log_softmax(s)[np.arange(5), y])
    pt = np.exp(log_softmax(t / 2))
    kl = np.mean(np.sum(pt * (log_softmax(t / 2) - log_softmax(s / 2)), -1))
    got = float(d.compute_loss(x=x, y=y, y_pred=student(x)))
    assert got == pytest.approx(0.7 * task + 0.3 * 4 * kl, rel=1e-5)
    assert teacher.trainable and len(d.trainable_variables) == 2  # the argument is not frozen; its copy is


def test_budget_example_meets_its_command_line_bounds(tmp_path):
    """examples/budget.py with a MAC and an arena bound, a few epochs: the measured figures meet both."""
    import pathlib
    import re
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "examples" / "budget.py"), "--macs", "0.3", "--arena-bytes", "0.6"]
    cmd += ["--dense-epochs", "1", "--epochs", "3", "--out", str(tmp_path / "out")]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "budget met as measured: True" in proc.stdout
    rows = dict(re.findall(r"^\| (macs|arena_bytes) \| ([\d,]+) \|", proc.stdout, re.MULTILINE))
    assert set(rows) == {"macs", "arena_bytes"}
    assert (tmp_path / "out" / "model_int8.tflite").exists()


def test_a_saved_budgeted_model_is_checked_against_its_budget_on_export(macs_run, tmp_path):
    model, opt = macs_run
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert find_wgsef(loaded.optimizer).budget == opt.budget
    x, _, _, _ = _digits()
    result = te.export(loaded, x[:100], latency=False, arena=False, instructions=False)
    assert result.report.budget["bounds"] == opt.plan.bounds
    assert result.report.budget["measured"]["macs"] <= opt.plan.bounds["macs"]


def test_a_budget_trained_1d_model_exports_with_cheaper_ops_and_meets_its_budget():
    """Conv1D/BatchNorm/ReLU blocks -> GlobalAveragePooling1D, trained to 30 % of the MACs, exported by default."""
    x, y, xt, yt = _digits()
    x, xt = x.reshape(-1, 64, 1), xt.reshape(-1, 64, 1)
    keras.utils.set_random_seed(0)
    inp = h = keras.Input((64, 1))
    for i, width in enumerate((16, 16, 32)):
        h = L.ReLU(name=f"r{i}")(
            L.BatchNormalization(name=f"bn{i}")(L.Conv1D(width, 3, padding="same", name=f"c{i}")(h))
        )
        if i < 2:
            h = L.MaxPooling1D(name=f"p{i}")(h)
    model = keras.Model(inp, L.Dense(10, name="head")(L.GlobalAveragePooling1D(name="gap")(h)))
    epochs, steps = 4, int(np.ceil(len(x) / 32))
    inner = keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.05, steps * epochs), momentum=0.9)
    opt = kw.WGSEF(inner, budget=kw.Budget(macs=0.3), groups=kw.make_groups(model), ridge=False)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[kw.callbacks.ReachK(verbose=0)])
    kw.recalibrate_batchnorm(model, x)
    assert opt.plan.gap_as_avgpool  # the plan's lowering is the default export's (cheaper_ops=True)
    result = te.export(model, x[:100], eval_data=(xt[:200], yt[:200]), latency=False, instructions=False)
    report = result.report
    assert len(report.rewrites) == 1 and report.rewrites[0].startswith("gap: GlobalAveragePooling1D over 16x")
    assert "MEAN" not in report.ops and "AVERAGE_POOL_2D" in report.ops
    b = report.budget
    assert b is not None and b["bounds"] == opt.plan.bounds and b["removed_after_measurement"] == []
    assert b["measured"]["macs"] == report.macs == b["predicted"]["macs"] <= opt.plan.bounds["macs"]
    # a short run (float accuracy 64.5 %): int8 within a few points of it, TFLM within 2 LSB of LiteRT
    assert report.float_accuracy > 0.5 and abs(report.accuracy_litert - report.float_accuracy) <= 0.05
    assert report.tflm_vs_litert_max_lsb <= 2
