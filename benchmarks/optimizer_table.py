"""WGSEF under each optimizer against the thin model trained with the same optimizer and recipe.

For every optimizer the recipe is its own (``adam_recipes.py`` chose the adaptive ones on the
validation split); WGSEF and the thin model trained from scratch get exactly the same inner
optimizer, schedule, epochs and batch. Per model (``models.py``: anchor 15 epochs, ResNet-8- and
DS-CNN-style 10), per kept fraction (50 %, 25 % of every channel scope) and seed, every run ends as
a physically thinner model (``tflite_export.shrink``), converted to int8 and scored on the 1,000
test images: float accuracy on Keras, int8 accuracy on LiteRT. BatchNorm statistics are
recalibrated on the training images before scoring.

Methods (``--methods``):

* ``wgsef``: ``WGSEF(inner, k=keep, groups=make_groups(model))`` with ``ReachK()``, its preset
  picked from the inner optimizer as a user gets it (SGD: ``ridge=False``, the prox-SGD recipe);
* ``wgsef_metric``: the same with ``metric="auto"`` (the prox in the inner optimizer's own
  diagonal metric; adaptive optimizers only);
* ``wgsef_ridge0``: ``ridge=False`` and ``ReachK(preset="sgd")`` (the fixed-rate prox of the SGD
  recipe, Euclidean);
* ``wgsef_fixed``: ``metric="auto"``, ``ridge=False`` and ``ReachK(preset="sgd")`` (the fixed-rate
  prox of the SGD recipe, in the adaptive optimizer's metric);
* ``thin``: the thin model at the same widths, from scratch.

``--recipe adam=0.02`` overrides an optimizer's learning rate (its schedule stays).

Rows go to ``optimizer_results.jsonl`` (resumable)::

    .venv/bin/python benchmarks/optimizer_table.py --optimizers sgd adam adamw --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/optimizer_table.py --report
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np

OUT = os.path.join(HERE, "optimizer_results.jsonl")
BATCH = 64
KEEPS = (0.5, 0.25)
EPOCHS = {"anchor": 15, "resnet8": 10, "dscnn": 10}
#: each optimizer's own recipe: (learning rate, schedule); adaptive ones chosen by adam_recipes.py
RECIPES = {
    "sgd": (0.1, "cosine"),
    "adam": (2e-2, "cosine"),
    "adamw": (1e-2, "cosine"),
    "rmsprop": (1e-3, "cosine"),
    "nadam": (1e-2, "cosine"),
    "lion": (1e-4, "cosine"),
}


def make_optimizer(name: str, total_steps: int):
    """The optimizer ``name`` with its recipe (``adam_recipes.make_optimizer``)."""
    from adam_recipes import make_optimizer as with_recipe

    return with_recipe(name, *RECIPES[name], total_steps)


def key(row: dict) -> str:
    return "|".join(str(row[k]) for k in ("task", "model", "opt", "method", "keep", "seed", "epochs", "recipe"))


def load_rows() -> list[dict]:
    if not os.path.exists(OUT):
        return []
    with open(OUT) as f:
        return [json.loads(line) for line in f if line.strip()]


def score(model, data) -> tuple[float, float, list[int]]:
    """Shrink, int8 export; (float accuracy, int8 LiteRT accuracy, kept widths)."""
    from baselines import scope_widths

    from tflite_export import class_accuracy, shrink, to_tflite_int8
    from tflite_export.litert import run_litert

    (x, _), (xt, yt) = data
    thin = shrink(model, xt[:64])
    pred = np.concatenate([np.asarray(thin(xt[i : i + 500], training=False)) for i in range(0, len(xt), 500)])
    tfl = to_tflite_int8(thin, x[:200])
    _, q, _ = run_litert(tfl, xt)
    return class_accuracy(pred, yt), class_accuracy(q, yt), scope_widths(thin)


def train(model_name: str, opt: str, method: str, keep: float, seed: int, data) -> dict:
    import keras
    from models import BUILDERS, scaled

    import keras_wgsef as kw

    (x, y), _ = data
    epochs = EPOCHS[model_name]
    steps = math.ceil(len(x) / BATCH) * epochs
    builder, widths = BUILDERS[model_name]
    keras.utils.set_random_seed(seed)
    callbacks = []
    if method == "thin":
        model = builder(scaled(widths, keep))
        optimizer = make_optimizer(opt, steps)
    else:
        model = builder(widths)
        extra = {"ridge": False} if opt == "sgd" else {}
        # explicit either way: the table's methods keep their meaning whatever the library's default
        extra["metric"] = "auto" if method in ("wgsef_metric", "wgsef_fixed") else "euclidean"
        fixed = method in ("wgsef_fixed", "wgsef_ridge0")
        if fixed:
            extra["ridge"] = False
        optimizer = kw.WGSEF(make_optimizer(opt, steps), k=keep, groups=kw.make_groups(model), **extra)
        callbacks.append(kw.callbacks.ReachK(verbose=0, preset="sgd" if fixed or opt == "sgd" else "adaptive"))
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.time()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=callbacks)
    kw.recalibrate_batchnorm(model, x)
    float_acc, int8_acc, kept = score(model, data)
    return {
        "float_acc": float_acc,
        "int8_acc": int8_acc,
        "widths": kept,
        "seconds": round(time.time() - t0, 1),
        "nonzero": kw.nonzero_groups(model) if method != "thin" else None,
    }


def run(task: str, models, opts, methods, seeds) -> None:
    import keras_wgsef as kw

    data = kw.datasets.load_mnist5k() if task == "mnist5k" else kw.datasets.load_mnist1d()
    done = {key(r) for r in load_rows()}
    for seed, model_name, opt, keep, method in itertools.product(seeds, models, opts, KEEPS, methods):
        if method in ("wgsef_metric", "wgsef_fixed", "wgsef_ridge0") and opt in ("sgd", "lion"):
            continue  # no second moment: the metric prox is the Euclidean one
        row = {
            "task": task,
            "model": model_name,
            "opt": opt,
            "method": method,
            "keep": keep,
            "seed": seed,
            "epochs": EPOCHS[model_name],
            "recipe": list(RECIPES[opt]),
        }
        if key(row) in done:
            continue
        row.update(train(model_name, opt, method, keep, seed, data))
        with open(OUT, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            time.strftime("%H:%M:%S"),
            f"{task} {model_name:8s} {opt:6s} {method:12s} keep={keep} seed={seed} widths={row['widths']} "
            f"float={100 * row['float_acc']:.2f} int8={100 * row['int8_acc']:.2f} {row['seconds']:.0f}s",
            flush=True,
        )


def table(task: str = "mnist5k") -> str:
    """Markdown: int8 test accuracy %, mean +- standard error over seeds, per model, keep and method."""
    rows = [r for r in load_rows() if r["task"] == task]
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        lr, schedule = r["recipe"]
        cells.setdefault((r["model"], r["keep"], r["opt"], lr, schedule, r["method"]), []).append(100 * r["int8_acc"])

    def fmt(v):
        if not v:
            return "-"
        se = np.std(v, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
        return f"{np.mean(v):.2f} +- {se:.2f} ({len(v)})"

    methods = ("wgsef", "wgsef_metric", "wgsef_ridge0", "wgsef_fixed", "thin")
    lines = ["| model | keep | optimizer | recipe | " + " | ".join(methods) + " |", "|---" * (4 + len(methods)) + "|"]
    for model_name, keep, opt, lr, schedule in sorted({c[:5] for c in cells}):
        vals = [fmt(cells.get((model_name, keep, opt, lr, schedule, m), [])) for m in methods]
        lines.append(f"| {model_name} | {round(100 * keep)} % | {opt} | {lr:g} {schedule} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="mnist5k", choices=["mnist5k", "mnist1d"])
    ap.add_argument("--models", nargs="+", default=["anchor", "resnet8", "dscnn"])
    ap.add_argument("--optimizers", nargs="+", default=["sgd", "adam", "adamw"], choices=sorted(RECIPES))
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["wgsef", "thin"],
        choices=["wgsef", "wgsef_metric", "wgsef_ridge0", "wgsef_fixed", "thin"],
    )
    ap.add_argument(
        "--recipe", nargs="*", default=[], metavar="OPT=LR", help="override a learning rate, e.g. adam=0.02"
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    for item in a.recipe:
        name, lr = item.split("=")
        RECIPES[name] = (float(lr), RECIPES[name][1])
    if not a.report:
        run(a.task, a.models, a.optimizers, a.methods, a.seeds)
    print(table(a.task))


if __name__ == "__main__":
    main()
