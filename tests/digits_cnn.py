"""Shared test helpers: scikit-learn's 8x8 digits and a small CNN to convert and measure."""

import keras
import numpy as np


def digits_xy() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[..., None] / 16.0).astype(np.float32), d.target.astype(np.int64)


def digits_cnn(widths: tuple[int, int], seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1))
    h = inp
    for j, c in enumerate(widths):
        h = keras.layers.Conv2D(c, 3, padding="same")(h)
        h = keras.layers.BatchNormalization(momentum=0.5)(h)
        h = keras.layers.ReLU()(h)
        if j == 0:
            h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(10)(h))
