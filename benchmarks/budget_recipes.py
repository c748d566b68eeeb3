"""Which of the dense network's advantages help a budgeted WGSEF run: distillation, LR rewinding, cost weights.

At equal *measured* cost the thin model trained from scratch is the bar. A budgeted run has what
the thin model has not: the trained dense network. This script measures, on the validation split
(never the test set), each way of using it, at one MAC budget:

* ``thin``: the uniformly thinner model meeting the budget (``BudgetPlan.uniform`` widths), trained
  from scratch for the whole pipeline's epochs (dense phase included);
* ``thin_kd``: the same, distilled from the dense teacher (``kw.Distiller``);
* ``wgsef``: dense phase (the teacher), then ``WGSEF(budget=...)`` from the dense weights with
  ``ReachK`` (fresh cosine schedule);
* ``wgsef_kd``, ``wgsef_rw``, ``wgsef_kd_rw``: plus distillation, LR rewinding at the freeze, both;
* ``wgsef_size``: as ``wgsef`` but with group-size weights instead of the budget's cost weights.

    .venv/bin/python benchmarks/budget_recipes.py --model anchor --macs 0.25 --seeds 0 1
    .venv/bin/python benchmarks/budget_recipes.py --report      # the table from budget_recipes.jsonl

Each row is appended to ``benchmarks/budget_recipes.jsonl`` (runs already there are skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import keras
import numpy as np
from models import BUILDERS

import keras_wgsef as kw
from keras_wgsef.graph.model_graph import flatten_model, weight_paths

BATCH, LR = 64, 0.1
OUT = os.path.join(HERE, "budget_recipes.jsonl")
METHODS = ("thin", "thin_kd", "wgsef", "wgsef_kd", "wgsef_rw", "wgsef_kd_rw", "wgsef_size")


def sgd(steps: int, epochs: int) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(LR, steps * epochs), momentum=0.9)


def loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=512, verbose=0), -1) == y))


def scope_widths(plan, keep) -> list[int]:
    return [int(keep[plan.segments == s].sum()) for s in np.unique(plan.segments)]


def train_dense(builder, x, y, epochs, seed):
    keras.utils.set_random_seed(seed)
    m = builder()
    m.compile(optimizer=sgd(int(np.ceil(len(x) / BATCH)), epochs), loss=loss())
    m.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    kw.recalibrate_batchnorm(m, x)
    return m


def run(method, name, budget, teacher, x, y, data, dense_epochs, epochs, seed) -> dict:
    builder, _ = BUILDERS[name]
    steps = int(np.ceil(len(x) / BATCH))
    keras.utils.set_random_seed(seed + 1000)
    t0 = time.time()
    plan = kw.BudgetPlan(builder(), kw.make_groups(builder()), budget)
    if method.startswith("thin"):
        widths = scope_widths(plan, plan.uniform)
        student = builder(widths)
        total = dense_epochs + epochs
        model = kw.Distiller(student, teacher, alpha=0.5, temperature=4.0) if method == "thin_kd" else student
        model.compile(optimizer=sgd(steps, total), loss=loss())
        model.fit(x, y, batch_size=BATCH, epochs=total, verbose=0)
        kw.recalibrate_batchnorm(student, x)
        macs = kw.count_macs(student)["total"]
    else:
        student = keras.models.clone_model(teacher)
        student.set_weights(teacher.get_weights())
        shapes = {p: tuple(w.shape) for p, w in weight_paths(flatten_model(student)).items()}
        # explicit group-size weights replace the budget's cost weights (the ablation)
        groups = kw.make_groups(student, weights=(lambda s, m: s.sizes(shapes)) if method == "wgsef_size" else "size")
        opt = kw.WGSEF(sgd(steps, epochs), budget=budget, groups=groups, ridge=False)
        model = kw.Distiller(student, teacher, alpha=0.5, temperature=4.0) if "_kd" in method else student
        model.compile(optimizer=opt, loss=loss())
        ctl = kw.callbacks.ReachK(start_epoch=0.0, rewind="_rw" in method, verbose=0)
        model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[ctl])
        kw.recalibrate_batchnorm(student, x)
        keep = opt.scopes[0].mask > 0
        widths = scope_widths(opt.plan, keep)
        macs = opt.plan.predict(keep, ("macs",))["macs"]
        plan = opt.plan
    (xv, yv), (xt, yt) = data
    return {
        "model": name,
        "method": method,
        "budget": budget.get_config(),
        "seed": seed,
        "widths": widths,
        "macs": int(macs),
        "bound": plan.bounds,
        "val_acc": accuracy(student, xv, yv),
        "test_acc": accuracy(student, xt, yt),
        "seconds": round(time.time() - t0, 1),
    }


def _se(a: np.ndarray) -> float:
    """Standard error of the mean (0 for one value)."""
    return float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0


def report() -> None:
    with open(OUT) as f:
        rows = [json.loads(line) for line in f]
    keys = sorted({(r["model"], json.dumps(r["budget"])) for r in rows})
    for model, budget in keys:
        print(f"\n{model} {budget}")
        print("| method | val % | test % | widths | MACs | n |")
        print("|---|---|---|---|---|---|")
        for m in METHODS:
            rs = [r for r in rows if r["model"] == model and json.dumps(r["budget"]) == budget and r["method"] == m]
            if not rs:
                continue
            v, t = np.array([r["val_acc"] for r in rs]), np.array([r["test_acc"] for r in rs])
            print(
                f"| {m} | {100 * v.mean():.2f} +- {100 * _se(v):.2f} | {100 * t.mean():.2f} +- {100 * _se(t):.2f} "
                f"| {rs[0]['widths']} | {rs[0]['macs']:,} | {len(rs)} |"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="anchor", choices=sorted(BUILDERS))
    p.add_argument("--macs", type=float, default=0.25)
    p.add_argument("--min-width", type=float, default=0.75, help="Budget(min_width=...)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--dense-epochs", type=int, default=15)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--report", action="store_true")
    a = p.parse_args()
    if a.report:
        report()
        return
    (x, y), (xt, yt) = kw.datasets.load_mnist5k()
    xtr, ytr, xv, yv = x[:3200], y[:3200], x[3200:], y[3200:]
    done = set()
    if os.path.exists(OUT):
        with open(OUT) as f:
            done = {(r["model"], json.dumps(r["budget"]), r["method"], r["seed"]) for r in map(json.loads, f)}
    budget = kw.Budget(macs=a.macs, min_width=a.min_width)
    for seed in a.seeds:
        teacher = None
        for method in a.methods:
            if (a.model, json.dumps(budget.get_config()), method, seed) in done:
                continue
            if teacher is None:
                teacher = train_dense(BUILDERS[a.model][0], xtr, ytr, a.dense_epochs, seed)
                print(f"teacher seed {seed}: val {accuracy(teacher, xv, yv):.4f}", flush=True)
            r = run(method, a.model, budget, teacher, xtr, ytr, ((xv, yv), (xt, yt)), a.dense_epochs, a.epochs, seed)
            print(json.dumps(r), flush=True)
            with open(OUT, "a") as f:
                f.write(json.dumps(r) + "\n")
    report()


if __name__ == "__main__":
    main()
