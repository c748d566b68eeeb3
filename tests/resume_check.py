"""Run in a fresh process: one ReachK run (a preset, a cosine schedule, rewinding), maybe killed.

    python tests/resume_check.py PRESET OUT.npz [--backup DIR] [--kill-at STEP]

Trains a small CNN with BatchNorm on the bundled digits for 6 epochs of 10 steps. With
``--backup`` the run checkpoints with ``keras.callbacks.BackupAndRestore(DIR)`` (per epoch, the
default) and resumes from it when DIR holds one. ``--kill-at STEP`` sends this process SIGKILL
before global step STEP (epoch * 10 + batch): nothing of Python runs after it, as with a real
kill. A run that ends writes every weight and optimizer variable to OUT.npz.
"""

import argparse
import os
import signal

import keras
import numpy as np
import tensorflow as tf

import keras_wgsef as kw

STEPS, EPOCHS = 10, 6

p = argparse.ArgumentParser()
p.add_argument("preset", choices=["adaptive", "sgd"])
p.add_argument("out")
p.add_argument("--backup")
p.add_argument("--kill-at", type=int)
a = p.parse_args()

tf.config.experimental.enable_op_determinism()
keras.utils.set_random_seed(0)
(x, y), _ = kw.datasets.load_digits8x8()
x, y = x[: STEPS * 64], y[: STEPS * 64]
model = keras.Sequential(
    [
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(12, 3, padding="same", name="c1"),
        keras.layers.BatchNormalization(name="bn1"),
        keras.layers.ReLU(),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, name="head"),
    ]
)
rate = keras.optimizers.schedules.CosineDecay(0.02 if a.preset == "sgd" else 3e-3, STEPS * EPOCHS)
if a.preset == "sgd":
    opt = kw.WGSEF(keras.optimizers.SGD(rate, momentum=0.9), k=0.5, groups=kw.make_groups(model), ridge=False)
else:
    opt = kw.WGSEF(keras.optimizers.Adam(rate), k=0.5, groups=kw.make_groups(model))
model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


class Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch * STEPS + batch == a.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


callbacks = [kw.callbacks.ReachK(start_epoch=1, preset=a.preset, rewind=True, verbose=0), Kill()]
if a.backup:  # after ReachK on purpose: the controller must read the restored state anyway
    callbacks.append(keras.callbacks.BackupAndRestore(a.backup))
model.fit(x, y, batch_size=64, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)
state = {f"w{i}": np.array(v) for i, v in enumerate(model.weights)}
state.update({f"o{i}": np.array(v) for i, v in enumerate(opt.variables)})
np.savez(a.out, nonzero=np.array(list(kw.nonzero_groups(model).values())), **state)
