"""The anchor CNN of the benchmarks with Keras-default layer names, for the graph, cost and shrink tests."""

import keras

L = keras.layers


def anchor_cnn():
    """The anchor CNN of the design notes, with fixed layer names."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(16, 3, padding="same", name="conv2d"),
            L.BatchNormalization(name="batch_normalization"),
            L.ReLU(name="re_lu"),
            L.MaxPooling2D(name="max_pooling2d"),
            L.Conv2D(32, 3, padding="same", name="conv2d_1"),
            L.BatchNormalization(name="batch_normalization_1"),
            L.ReLU(name="re_lu_1"),
            L.MaxPooling2D(name="max_pooling2d_1"),
            L.Conv2D(64, 3, padding="same", name="conv2d_2"),
            L.BatchNormalization(name="batch_normalization_2"),
            L.ReLU(name="re_lu_2"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(10, name="dense"),
        ]
    )
