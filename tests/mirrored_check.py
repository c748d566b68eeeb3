"""Run in a fresh process: model.fit with WGSEF under MirroredStrategy over two logical CPUs."""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import numpy as np

import keras_wgsef as kw

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
(x, y), _ = kw.datasets.load_digits8x8()
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", name="c1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, name="head"),
        ]
    )
    opt = kw.WGSEF(keras.optimizers.Adam(1e-2), k=3, groups=kw.make_groups(model))
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
# the controller assigns optimizer and model variables from a callback (cross-replica context)
model.fit(
    x[:512], y[:512], epochs=3, batch_size=64, verbose=0, callbacks=[kw.callbacks.ReachK(project_epoch=2, verbose=0)]
)
kernel = model.get_layer("c1").kernel.value
replicas = [np.asarray(v) for v in strategy.experimental_local_results(kernel)]
json.dump(
    {
        "replicas": len(replicas),
        "replica_diff": float(max(np.max(np.abs(r - replicas[0])) for r in replicas)),
        "nonzero": kw.nonzero_groups(model),
    },
    sys.stdout,
)
