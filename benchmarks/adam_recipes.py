"""Which learning rate and schedule adaptive optimizers need on the benchmark models (validation split).

The quickstart's ``WGSEF(Adam(...), k)`` can only be as good as the Adam recipe under it. This script
trains the *dense* benchmark models (``models.py``: anchor CNN, ResNet-8-style, DS-CNN-style) on the
first 3,200 of the 4,000 training images of the bundled MNIST-5k and scores them on the last 800
(never on the test set), over a grid:

* optimizer: ``Adam``, ``AdamW`` (Keras' default decoupled weight decay 0.004), and SGD with momentum
  0.9 at 0.1 with cosine decay (the reference the benchmarks use);
* learning rate: 1e-3, 3e-3, 1e-2;
* schedule: constant, or cosine decay to 0 over the run (the warm-up-free form users write);
* epochs: 15 (``--epochs`` for more).

BatchNorm statistics are recalibrated on the training images before scoring (see the docs'
BatchNorm pitfall). Rows go to ``adam_recipes.jsonl``; a run already there is skipped, so an
interrupted sweep resumes::

    .venv/bin/python benchmarks/adam_recipes.py --seeds 0 1            # the sweep
    .venv/bin/python benchmarks/adam_recipes.py --report               # the table, from the rows
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

OUT = os.path.join(HERE, "adam_recipes.jsonl")
BATCH = 64
N_FIT = 3200  # of the 4,000 training images; the last 800 are the validation split
GRID_LR = (1e-3, 3e-3, 1e-2, 2e-2)
GRID_OPT = ("adam", "adamw")
GRID_SCHEDULE = ("constant", "cosine")
SGD_REFERENCE = ("sgd", 0.1, "cosine")


def recipes() -> list[tuple[str, float, str]]:
    """Every (optimizer, learning rate, schedule) of the grid, the SGD reference first."""
    return [SGD_REFERENCE, *itertools.product(GRID_OPT, GRID_LR, GRID_SCHEDULE)]


def make_optimizer(name: str, lr: float, schedule: str, total_steps: int):
    """The inner optimizer of a recipe (a fresh object)."""
    import keras

    rate = keras.optimizers.schedules.CosineDecay(lr, total_steps) if schedule == "cosine" else lr
    if name == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9)
    classes = {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "nadam": "Nadam", "lion": "Lion"}
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}: use sgd or one of {sorted(classes)}.")
    return getattr(keras.optimizers, classes[name])(rate)


def key(row: dict) -> str:
    return "|".join(str(row[k]) for k in ("model", "opt", "lr", "schedule", "epochs", "seed"))


def done_keys() -> set[str]:
    if not os.path.exists(OUT):
        return set()
    with open(OUT) as f:
        return {key(json.loads(line)) for line in f if line.strip()}


def train_one(model_name: str, opt: str, lr: float, schedule: str, epochs: int, seed: int, data) -> dict:
    import keras
    from models import BUILDERS

    import keras_wgsef as kw

    (x, y), (xv, yv) = data
    keras.utils.set_random_seed(seed)
    builder, widths = BUILDERS[model_name]
    model = builder(widths)
    steps = math.ceil(len(x) / BATCH) * epochs
    model.compile(
        optimizer=make_optimizer(opt, lr, schedule, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    t0 = time.time()
    hist = model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    kw.recalibrate_batchnorm(model, x)
    logits = np.asarray(model.predict(xv, batch_size=500, verbose=0))
    train_logits = np.asarray(model.predict(x[:800], batch_size=500, verbose=0))
    return {
        "model": model_name,
        "opt": opt,
        "lr": lr,
        "schedule": schedule,
        "epochs": epochs,
        "seed": seed,
        "val_acc": float(np.mean(np.argmax(logits, -1) == yv)),
        "train_acc_800": float(np.mean(np.argmax(train_logits, -1) == y[:800])),
        "final_loss": float(hist.history["loss"][-1]),
        "seconds": round(time.time() - t0, 1),
    }


def run(models: list[str], seeds: list[int], epochs: int) -> None:
    import keras_wgsef as kw

    (x, y), _ = kw.datasets.load_mnist5k()
    data = ((x[:N_FIT], y[:N_FIT]), (x[N_FIT:], y[N_FIT:]))
    done = done_keys()
    for model_name, seed, (opt, lr, schedule) in itertools.product(models, seeds, recipes()):
        row = {"model": model_name, "opt": opt, "lr": lr, "schedule": schedule, "epochs": epochs, "seed": seed}
        if key(row) in done:
            continue
        row = train_one(model_name, opt, lr, schedule, epochs, seed, data)
        with open(OUT, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            time.strftime("%H:%M:%S"),
            f"{model_name:8s} {opt:5s} lr={lr:<6g} {schedule:8s} seed={seed} val={100 * row['val_acc']:.2f} "
            f"train={100 * row['train_acc_800']:.1f} loss={row['final_loss']:.3f} {row['seconds']:.0f}s",
            flush=True,
        )


def table() -> str:
    """Markdown: validation accuracy % (mean over seeds) per model and recipe, best adaptive recipe marked."""
    with open(OUT) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    models = sorted({r["model"] for r in rows})
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        cells.setdefault((r["opt"], r["lr"], r["schedule"], r["epochs"], r["model"]), []).append(r["val_acc"])
    head = "| optimizer | lr | schedule | epochs | " + " | ".join(models) + " | mean |"
    lines = [head, "|" + "---|" * (5 + len(models))]
    for opt, lr, schedule, epochs in sorted({c[:4] for c in cells}, key=lambda c: (c[0] != "sgd", *c)):
        accs = [np.mean(cells.get((opt, lr, schedule, epochs, m), [np.nan])) * 100 for m in models]
        n = min(len(cells.get((opt, lr, schedule, epochs, m), [])) for m in models)
        lines.append(
            f"| {opt} | {lr:g} | {schedule} | {epochs} | "
            + " | ".join(f"{a:.2f}" for a in accs)
            + f" | {np.nanmean(accs):.2f} (n={n}) |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["anchor", "resnet8", "dscnn"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--report", action="store_true", help="print the table from the rows and stop")
    a = ap.parse_args()
    if not a.report:
        run(a.models, a.seeds, a.epochs)
    print(table())


if __name__ == "__main__":
    main()
