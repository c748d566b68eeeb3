"""The benchmark at equal *measured* cost: budgeted WGSEF against thin models and pruning at the same budget.

Two tasks (``--task``):

* ``mnist5k`` (default): the 2-D models (the anchor CNN, ResNet-8-style, DS-CNN-style;
  ``models.py``) on the bundled MNIST digits, budgets 50 %, 25 %, 12.5 % of the dense MACs; 50, 35,
  25 and 20 % of the dense TFLM arena; half the dense flash. Test set: the 1,000 test digits.
* ``mnist1d``: their 1-D versions (``anchor1d``, ``resnet8_1d``, ``dscnn1d``) on MNIST-1D
  (``keras_wgsef.datasets.load_mnist1d``: 4,000 training signals), budgets 12.5, 6.25, 3.125 % of
  the dense MACs and half the dense flash; a harder task, where widths matter more. Test set: the
  10,000-signal extra test set (one signal is 0.01 point); the float accuracy on the published
  1,000 test signals is kept too (``float_acc_published``).

For each model, seed and budget, every method ends as a physically smaller int8 model, exported
and measured the same way (``tflite_export.export``: flatbuffer MACs, ``.tflite`` bytes, TFLM
minimal arena and callgrind instructions, float and int8 accuracy on the test set):

* ``wgsef_budget``: the dense model (the teacher, ``EPOCHS`` or ``--epochs``), then
  ``WGSEF(SGD, budget=...)`` from its weights for ``--epochs`` with ``ReachK`` (the defaults chosen
  by ``budget_recipes.py`` on the validation split); exported with the budget checked as measured;
* ``thin``: the uniformly thinner model meeting the budget (``BudgetPlan.uniform``: one width
  multiplier for every channel scope, as MobileNet's alpha), from scratch for the whole
  pipeline's epochs (dense phase included);
* ``thin_kd``: the same, distilled from the same dense teacher;
* ``wgsef_layer``: per-layer WGSEF at the uniform model's widths (``k`` per scope), from the teacher;
* ``l1``: L1-norm filter pruning of the teacher to the uniform widths, then a fine-tune of
  ``--epochs`` (the strongest pruning baseline of ``RESULTS.md``).

Every method: SGD momentum 0.9, lr 0.1, cosine decay, batch 64; BatchNorm recalibrated on the
training set before evaluation; on ``mnist5k`` the training split is the first 4,000 of the bundled
5,000 MNIST digits, the test set the last 1,000 (the anchor task).

    .venv/bin/python benchmarks/budget_compare.py                       # 3 models x 8 budgets x 5 methods
    .venv/bin/python benchmarks/budget_compare.py --seeds 0 1 2 3 4     # the 5 seeds of BUDGET_RESULTS.md (hours)
    .venv/bin/python benchmarks/budget_compare.py --task mnist1d        # the 1-D models on MNIST-1D
    .venv/bin/python benchmarks/budget_compare.py --report              # BUDGET_RESULTS.md + plots
    .venv/bin/python benchmarks/compare.py --budget --seeds 0 1 2 3 4   # the same, from compare.py
    .venv/bin/python benchmarks/budget_compare.py --task mnist1d --models anchor1d --budgets macs=0.125 \
        --epochs 2 2 --rows /tmp/smoke.jsonl                            # a smoke run of one unit

Rows go to ``benchmarks/budget_results.jsonl`` (``--rows`` elsewhere), keyed by task, model,
budget, method and seed; runs already there are skipped (resumable; rows without a task are
``mnist5k``'s). Each row has ``wall_seconds``: training plus export and measurement of that run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np
from plotting import mean_se, pareto_figure

OUT = os.path.join(HERE, "budget_results.jsonl")
PAGE = os.path.join(HERE, "BUDGET_RESULTS.md")
BATCH, LR = 64, 0.1
BUDGETS = ("macs=0.5", "macs=0.25", "macs=0.125", "arena_bytes=0.5", "flash_bytes=0.5")
BUDGETS += ("arena_bytes=0.35", "arena_bytes=0.25", "arena_bytes=0.2")
METHODS = ("wgsef_budget", "thin", "thin_kd", "wgsef_layer", "l1")
# the levers and controls (run with --methods): the budgeted run distilled from the teacher, and the
# widths it found trained again from scratch, plain and distilled (the Liu et al. 2019 control)
LEVERS = ("wgsef_budget_kd", "found", "found_kd")
# (dense phase, budgeted phase)
EPOCHS = {"anchor": (15, 15), "resnet8": (10, 10), "dscnn": (10, 10)}
EPOCHS |= {"anchor1d": (20, 20), "resnet8_1d": (20, 20), "dscnn1d": (20, 20)}
TASKS = {
    "mnist5k": {"models": ("anchor", "resnet8", "dscnn"), "budgets": BUDGETS},
    "mnist1d": {
        "models": ("anchor1d", "resnet8_1d", "dscnn1d"),
        "budgets": ("macs=0.125", "macs=0.0625", "macs=0.03125", "flash_bytes=0.5"),
    },
}


def _budget(text: str):
    import keras_wgsef as kw

    name, value = text.split("=")
    return kw.Budget(**{name: float(value)})


def _key(r: dict) -> tuple:
    return (r.get("task", "mnist5k"), r["model"], r["budget"], r["method"], r["seed"])


def _rows(path: str | None = None) -> list[dict]:
    path = path or OUT
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _done() -> set:
    return {_key(r) for r in _rows()}


def _data(task: str):
    """``(x, y)`` to train on, ``(x, y)`` to test on, and a second test set (or None)."""
    import keras_wgsef as kw

    if task == "mnist1d":
        (x, y), published, extra = kw.datasets.load_mnist1d()
        return (x, y), extra, published
    (x, y), (xt, yt) = kw.datasets.load_mnist5k()
    return (x, y), (xt, yt), None


def _unit(job: tuple) -> list[dict]:
    """One model and seed: the dense teacher, then every budget x method not done yet."""
    task, model_name, seed, budgets, methods, done, out, epoch_override, cheaper = job
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from baselines import project_topk, rank_kernel_l1
    from models import BUILDERS, BUILDERS_1D

    import keras_wgsef as kw
    import tflite_export as te

    builder, _ = {**BUILDERS, **BUILDERS_1D}[model_name]
    dense_epochs, epochs = (1, 2) if os.environ.get("WGSEF_BUDGET_QUICK") else EPOCHS[model_name]
    if epoch_override:
        dense_epochs, epochs = epoch_override
    (x, y), (xt, yt), second = _data(task)
    steps = int(np.ceil(len(x) / BATCH))

    def sgd(n_epochs: int):
        return keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(LR, steps * n_epochs), momentum=0.9)

    def loss():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    t0 = time.time()
    keras.utils.set_random_seed(seed)
    teacher = builder()
    teacher.compile(optimizer=sgd(dense_epochs), loss=loss())
    teacher.fit(x, y, batch_size=BATCH, epochs=dense_epochs, verbose=0)
    kw.recalibrate_batchnorm(teacher, x)
    teacher_s = time.time() - t0
    # the tensor names' bytes (the same at every width) make every flash prediction exact, so every
    # method sees the same flash bound and the thin widths are chosen on the right figure
    from tflite_export.budget_fit import export_name_bytes

    names = export_name_bytes(
        teacher, x[:64], cheaper_ops=cheaper
    )  # a trained model (untrained zero biases change names)
    rows = []
    found: dict[tuple[str, str], list[int]] = {}  # (budget, method) -> the widths a budgeted run kept
    for r in _rows(out):
        if _key(r)[:2] == (task, model_name) and r["seed"] == seed and "found_widths" in r:
            found[(r["budget"], r["method"])] = r["found_widths"]
    for btext in budgets:
        budget = _budget(btext)
        plan = kw.BudgetPlan(builder(), kw.make_groups(builder()), budget, name_bytes=names, gap_as_avgpool=cheaper)
        widths = [int(plan.uniform[plan.segments == s].sum()) for s in np.unique(plan.segments)]
        for method in methods:
            if (task, model_name, btext, method, seed) in done:
                continue
            keras.utils.set_random_seed(seed + 1000)
            t1 = time.time()
            export_budget = None
            extra_s = teacher_s
            found_widths = None
            if method in ("thin", "thin_kd", "found", "found_kd"):
                if method.startswith("found"):
                    source = found.get((btext, "wgsef_budget_kd")) or found.get((btext, "wgsef_budget"))
                    if source is None:
                        print(f"skip {model_name} {btext} {method}: no budgeted run of seed {seed} yet", flush=True)
                        continue
                    student = builder(source)
                else:
                    student = builder(widths)
                total = dense_epochs + epochs
                trained = kw.Distiller(student, teacher) if method.endswith("_kd") else student
                trained.compile(optimizer=sgd(total), loss=loss())
                trained.fit(x, y, batch_size=BATCH, epochs=total, verbose=0)
                extra_s = teacher_s if method.endswith("_kd") else 0.0  # the teacher is part of that pipeline
            elif method == "l1":
                pruned = keras.models.clone_model(teacher)
                pruned.set_weights(teacher.get_weights())
                project_topk(pruned, kw.make_groups(pruned), widths, rank_kernel_l1)
                student = te.shrink(pruned, x[:64])
                student.compile(optimizer=sgd(epochs), loss=loss())
                student.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
            else:
                student = keras.models.clone_model(teacher)
                student.set_weights(teacher.get_weights())
                groups = kw.make_groups(student)
                if method.startswith("wgsef_budget"):
                    opt = kw.WGSEF(sgd(epochs), budget=budget, groups=groups, ridge=False)
                    # priced as exported: global average pooling as AVERAGE_POOL_2D, or MEAN with --keep-mean
                    opt.plan = kw.BudgetPlan(student, groups, budget, name_bytes=names, gap_as_avgpool=cheaper)
                    opt.bind(student, name_bytes=names)
                else:
                    ks = {f"^{re.escape(s.name)}$": w for s, w in zip(groups, widths)}
                    opt = kw.WGSEF(sgd(epochs), k=ks, groups=groups, ridge=False)
                trained = kw.Distiller(student, teacher) if method.endswith("_kd") else student
                trained.compile(optimizer=opt, loss=loss())
                trained.fit(
                    x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[kw.callbacks.ReachK(0.0, verbose=0)]
                )
                export_budget = opt.plan if method.startswith("wgsef_budget") else None
                if export_budget is not None:
                    kept = kw.nonzero_groups(student, groups)
                    found_widths = [int(kept[s.name]) for s in groups]
                    found[(btext, method)] = found_widths
            train_s = time.time() - t1 + extra_s
            kw.recalibrate_batchnorm(student, x)
            result = te.export(
                student,
                x[:200],
                eval_data=(xt, yt),
                latency=False,
                instructions=True,
                tflm_samples=200,
                budget=export_budget,
                shrink=method != "thin",
                cheaper_ops=cheaper,
            )
            r = result.report
            row = {
                "task": task,
                "model": model_name,
                "budget": btext,
                "method": method,
                "seed": seed,
                "bounds": plan.bounds,
                "dense": plan.dense,
                "widths": [s.num_groups for s in kw.make_groups(result.model)],
                **({"found_widths": found_widths} if found_widths is not None else {}),
                "float_acc": r.float_accuracy,
                "int8_acc": r.accuracy_litert,
                "macs": r.macs,
                "params": r.params,
                "flash_bytes": r.file_bytes,
                "arena_bytes": r.tflm_arena_bytes,
                "instructions": r.tflm_instructions,
                "train_seconds": round(train_s, 1),
                "wall_seconds": round(time.time() - t1, 1),
                "budget_report": r.budget,
                "epochs": (dense_epochs, epochs),
                "gap": "AVERAGE_POOL_2D" if cheaper else "MEAN",
            }
            if second is not None:
                pred = np.argmax(result.model.predict(second[0], verbose=0), axis=-1)
                row["float_acc_published"] = float(np.mean(pred == second[1]))
            print(json.dumps(row), flush=True)
            rows.append(row)
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def _page(task: str) -> str:
    return PAGE if task == "mnist5k" else PAGE.replace(".md", f"_{task.upper()}.md")


def report(task: str = "mnist5k") -> None:
    rows = [r for r in _rows() if r.get("task", "mnist5k") == task]
    models, budgets = TASKS[task]["models"], TASKS[task]["budgets"]
    test = "the 1,000 test digits" if task == "mnist5k" else "the 10,000 extra MNIST-1D test signals"
    lines = [
        f"# Benchmark at equal measured cost (`benchmarks/budget_compare.py --task {task}`)",
        "",
        "Every figure is measured on the exported int8 model (flatbuffer MACs, `.tflite` bytes, TFLM",
        f"minimal arena, callgrind instructions of one `Invoke()`); accuracy on {test}",
        "(float on the Keras model, int8 on LiteRT). Mean +- standard error over the seeds run (n).",
        "`use` is the measured figure over the bound, for the bounded figure. Training time includes",
        "the dense teacher where the method needs it.",
        "",
    ]
    if task == "mnist1d":
        lines += [
            "MNIST-1D (Greydanus 2020, `mnist1d` package): the published test accuracies on its default",
            "4,000 / 1,000 split are 94 % for a CNN, 91 % for a GRU, 68 % for an MLP and 32 % for logistic",
            "regression; the dense 1-D models here score 97-99 % on those 1,000 signals",
            "(`float_acc_published` in the rows).",
            "",
        ]
    hours = sum(r.get("wall_seconds", 0.0) for r in rows) / 3600
    lines += [
        f"These {len(rows)} runs took {hours:.1f} hours of wall time in all (one process, 2 cores shared with",
        "other work; `wall_seconds` in each row: training, export and measurement).",
        "",
        *headline(rows, models, budgets),
        "",
    ]
    for model in models:
        for btext in budgets:
            rs = [r for r in rows if r["model"] == model and r["budget"] == btext]
            if not rs:
                continue
            cost, _ = btext.split("=")
            bound = rs[0]["bounds"][cost]
            lines += [
                f"## {model}, {btext} (bound {bound:,} {cost}; dense {rs[0]['dense'][cost]:,} predicted)",
                "",
                "| method | float acc % | int8 acc % | MACs | bytes | arena | instructions | use | widths "
                "| train s | n |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for m in LABELS:
                mr = [r for r in rs if r["method"] == m]
                if not mr:
                    continue

                def ms(key, mr=mr):
                    a = np.array([r[key] for r in mr], float)
                    se = a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else 0.0
                    return a.mean(), se

                fa, fse = ms("float_acc")
                ia, ise = ms("int8_acc")
                use = np.mean([r[cost] / bound for r in mr])
                mean = {k: np.mean([r[k] for r in mr]) for k in ("macs", "flash_bytes", "arena_bytes", "instructions")}
                lines.append(
                    f"| {LABELS[m]} | {100 * fa:.2f} +- {100 * fse:.2f} | {100 * ia:.2f} +- {100 * ise:.2f} "
                    f"| {mean['macs']:,.0f} | {mean['flash_bytes']:,.0f} | {mean['arena_bytes']:,.0f} "
                    f"| {mean['instructions']:,.0f} | {use:.3f} | {mr[0]['widths']} "
                    f"| {np.mean([r['train_seconds'] for r in mr]):.0f} | {len(mr)} |"
                )
            lines.append("")
    with open(_page(task), "w") as f:
        f.write("\n".join(lines))
    _plots(rows, models, "" if task == "mnist5k" else f"_{task}")
    print("\n".join(lines))


#: how the tables and plots name the methods
LABELS = {
    "wgsef_budget": "WGSEF, budget",
    "wgsef_budget_kd": "WGSEF, budget + distillation",
    "thin": "uniform, scratch",
    "thin_kd": "uniform, distilled",
    "found": "found widths, scratch",
    "found_kd": "found widths, distilled",
    "wgsef_layer": "WGSEF, uniform k",
    "l1": "L1 pruning + fine-tune",
}
OURS = ("wgsef_budget", "wgsef_budget_kd")


def headline(rows: list[dict], models=TASKS["mnist5k"]["models"], budgets=BUDGETS) -> list[str]:
    """int8 test accuracy of budgeted WGSEF against the uniform models and the found-widths control.

    Per model and budget, mean +- standard error over the seeds; the gaps are to the better uniform
    model (scratch or distilled) and to the found widths retrained with distillation.
    """
    out = [
        "## Headline: int8 test accuracy % at equal measured cost (mean +- standard error over n seeds)",
        "",
        "| model | budget | "
        + " | ".join(LABELS[m] for m in (*OURS, "thin", "thin_kd", "found_kd"))
        + " | best ours - best uniform | best ours - found widths | n |",
        "|---" * 10 + "|",
    ]
    for model in models:
        for btext in budgets:
            rs = [r for r in rows if r["model"] == model and r["budget"] == btext]
            acc = {m: [r["int8_acc"] for r in rs if r["method"] == m] for m in LABELS}
            if not (acc["thin"] and acc["thin_kd"] and any(acc[m] for m in OURS)):
                continue
            stats = {m: mean_se(v) for m, v in acc.items() if v}
            cost = btext.split("=")[0]
            cells = []
            for m in (*OURS, "thin", "thin_kd", "found_kd"):
                if m not in stats:
                    cells.append("-")
                    continue
                text = f"{stats[m][0]:.2f} +- {stats[m][1]:.2f}"
                if m in OURS:
                    use = np.mean([r[cost] / r["bounds"][cost] for r in rs if r["method"] == m])
                    text += f" (use {use:.3f})"
                cells.append(text)
            best = max(stats[m][0] for m in OURS if m in stats)
            uniform = max(stats["thin"][0], stats["thin_kd"][0])
            found = f"{round(best - stats['found_kd'][0], 2) + 0.0:+.2f}" if "found_kd" in stats else "-"
            n = min(len(acc[m]) for m in (*OURS, "thin", "thin_kd") if acc[m])
            out.append(
                f"| {model} | {btext} | "
                + " | ".join(cells)
                + f" | {round(best - uniform, 2) + 0.0:+.2f} | {found} | {n} |"
            )
    return out


STYLE = {
    "wgsef_budget": ("tab:red", "o"),
    "wgsef_budget_kd": ("tab:orange", "D"),
    "thin": ("0.25", "s"),
    "thin_kd": ("0.45", "^"),
    "found_kd": ("0.65", "v"),
    "found": ("0.75", "<"),
    "wgsef_layer": ("0.55", "P"),
    "l1": ("0.8", "X"),
}
"""Method -> (colour, marker) of the plots: ours in colour, the peers in grey."""


def _plots(rows: list[dict], models=TASKS["mnist5k"]["models"], suffix: str = "") -> None:
    """Pareto plots: int8 accuracy against each measured cost, mean +- standard error per method and budget."""
    models = [m for m in models if any(r["model"] == m for r in rows)]  # a panel per model run
    if os.environ.get("WGSEF_BUDGET_QUICK") or not rows or not models:
        return
    names = {
        "macs": "MACs (flatbuffer)",
        "arena_bytes": "TFLM arena bytes",
        "instructions": "instructions per inference",
    }
    for cost, xlabel in names.items():
        panels: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
        for model in models:
            series: dict[str, list[tuple[float, float, float]]] = {}
            for m in LABELS:
                for btext in sorted({r["budget"] for r in rows if r["model"] == model}):
                    rs = [r for r in rows if r["model"] == model and r["method"] == m and r["budget"] == btext]
                    if rs:
                        series.setdefault(m, []).append(
                            (float(np.mean([r[cost] for r in rs])), *mean_se(r["int8_acc"] for r in rs))
                        )
            panels[model] = series
        pareto_figure(
            panels,
            labels=LABELS,
            style=STYLE,
            ours=OURS,
            xlabel=xlabel,
            ylabel="int8 test accuracy %",
            path=os.path.join(os.path.dirname(PAGE), f"budget_acc_vs_{cost}{suffix}.png"),
        )


def main() -> None:
    global OUT, PAGE
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="mnist5k")
    p.add_argument("--models", nargs="+", default=None, help="default: the task's three models")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--budgets", nargs="+", default=None, help="default: the task's budgets")
    p.add_argument("--epochs", type=int, nargs=2, default=None, metavar=("DENSE", "BUDGETED"),
                   help="epochs of the dense and the budgeted phase (default: per model, EPOCHS)")  # fmt: skip
    p.add_argument("--keep-mean", action="store_true",
                   help="export global average pooling as MEAN (cheaper_ops=False) and price it so")  # fmt: skip
    p.add_argument("--rows", default=None, help=f"the rows file (default {os.path.relpath(OUT, HERE)})")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--report", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 + 2 epochs, rows to a temporary file")
    a = p.parse_args()
    if a.rows:
        OUT = os.path.abspath(a.rows)
        PAGE = os.path.splitext(OUT)[0] + ".md"
    if a.quick:
        import tempfile

        folder = tempfile.mkdtemp(prefix="budget-quick-")
        OUT, PAGE = os.path.join(folder, "rows.jsonl"), os.path.join(folder, "page.md")
        os.environ["WGSEF_BUDGET_QUICK"] = "1"
    if a.report:
        report(a.task)
        return
    models = a.models or list(TASKS[a.task]["models"])
    budgets = a.budgets or list(TASKS[a.task]["budgets"])
    run(models, a.seeds, budgets, a.methods, a.jobs, task=a.task, epochs=a.epochs, cheaper_ops=not a.keep_mean)
    report(a.task)


def run(
    models: list[str],
    seeds: list[int],
    budgets=BUDGETS,
    methods=METHODS,
    jobs: int = 2,
    *,
    task: str = "mnist5k",
    epochs: tuple[int, int] | None = None,
    cheaper_ops: bool = True,
) -> None:
    """Every (model, seed) unit not in the rows yet, on ``jobs`` worker processes (``compare.py --budget``)."""
    done = _done()
    units = [(task, m, s, list(budgets), list(methods), done, OUT, epochs, cheaper_ops) for s in seeds for m in models]
    t0 = time.time()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(jobs, maxtasksperchild=1) as pool:
        for _ in pool.imap_unordered(_unit, units):
            pass
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
