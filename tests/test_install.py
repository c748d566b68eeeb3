"""Installing the project keeps the user's TensorFlow (issue 10), and the core needs no TensorFlow.

Each test makes a fresh venv, installs what a user already has (Colab's full ``tensorflow``; or
no TensorFlow at all, with PyTorch), then installs this checkout the way the README says, and
checks what is there afterwards. They download from the package index (about 40 s for
TensorFlow) and take 1-2 minutes each; the ends of the declared TensorFlow range run in the slow
suite. Set ``WGSEF_SKIP_INSTALL_CHECKS=1`` to skip them offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the README's Colab line installs these extras (from a clone of the repository)
COLAB_EXTRAS = "export,data,plots"
#: distributions that install the ``tensorflow`` package folder
TF_DISTRIBUTIONS = {
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-gpu",
    "tensorflow-intel",
    "tensorflow-macos",
    "tensorflow-aarch64",
    "tf-nightly",
    "tf-nightly-cpu",
}

pytestmark = pytest.mark.skipif(
    os.environ.get("WGSEF_SKIP_INSTALL_CHECKS") == "1", reason="WGSEF_SKIP_INSTALL_CHECKS=1 (offline)"
)

PROBE = textwrap.dedent(
    """
    import importlib.metadata as md, json
    names = sorted({(d.metadata["Name"] or "").lower().replace("_", "-") for d in md.distributions()})
    out = {"distributions": names}
    try:
        import tensorflow as tf
        out["tf_version"], out["cuda_build"] = tf.__version__, bool(tf.test.is_built_with_cuda())
    except Exception as e:  # the failure itself is the finding
        out["tf_error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))
    """
)


def _clone(tmp_path: Path) -> Path:
    """A copy of the checkout, as a user's clone (pip builds in the source folder: not in ours)."""
    junk = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", ".hypothesis", "demo", "logs")
    return Path(shutil.copytree(ROOT, tmp_path / "keras-wgsef", ignore=junk))


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def _pip(py: Path, *args: str) -> None:
    proc = subprocess.run([str(py), "-m", "pip", "install", "--quiet", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _probe(py: Path) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([str(py), "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _colab_like_install(tmp_path: Path, tf_version: str) -> None:
    venv = tmp_path / f"tf{tf_version}"
    try:
        py = _venv(venv)
        _pip(py, f"tensorflow=={tf_version}")  # what the user had (Colab: the full tensorflow)
        before = _probe(py)
        assert before.get("tf_version") == tf_version, before
        _pip(py, f"{_clone(tmp_path)}[{COLAB_EXTRAS}]")  # the README's Colab line, from a clone
        after = _probe(py)
        present = TF_DISTRIBUTIONS & set(after["distributions"])
        assert present == {"tensorflow"}, f"exactly the user's tensorflow must be installed, found {present}"
        assert "tf_error" not in after, after["tf_error"]
        assert after["tf_version"] == tf_version and after["cuda_build"] == before["cuda_build"], (before, after)
        code = "import keras_wgsef, tflite_export, tflite_micro; from ai_edge_litert.interpreter import Interpreter"
        subprocess.run([str(py), "-c", code], check=True, capture_output=True)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # 2 GB


def test_colab_install_keeps_the_users_tensorflow(tmp_path):
    """Colab's TensorFlow today (2.20): after the install it is the only one, the same, and imports."""
    _colab_like_install(tmp_path, "2.20.0")


@pytest.mark.slow
@pytest.mark.parametrize("tf_version", ["2.19.1", "2.21.0"])
def test_colab_install_keeps_the_users_tensorflow_at_both_ends_of_the_range(tmp_path, tf_version):
    _colab_like_install(tmp_path, tf_version)


def test_the_core_installs_and_trains_without_tensorflow(tmp_path):
    """keras-wgsef with no extra: Keras and NumPy only; trains under torch; tflite_export names its extra."""
    venv = tmp_path / "core"
    try:
        py = _venv(venv)
        _pip(py, "torch==2.13.0")  # the CPU wheel this machine keeps on disk (the index has CUDA builds)
        _pip(py, str(_clone(tmp_path)))
        names = set(_probe(py)["distributions"])
        assert not TF_DISTRIBUTIONS & names and "ai-edge-litert" not in names and "scikit-learn" not in names
        script = textwrap.dedent(
            """
            import warnings, keras, numpy as np, keras_wgsef as kw
            assert keras.backend.backend() == "torch"
            keras.utils.set_random_seed(0)
            m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="h"), keras.layers.Dense(2)])
            m.compile(optimizer=kw.WGSEF(keras.optimizers.SGD(0.1), k=4, lam=5.0, groups=kw.make_groups(m)),
                      loss="mse")
            x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
            m.fit(x, x[:, :2], epochs=4, batch_size=16, verbose=0,
                  callbacks=[kw.callbacks.ReachK(start_epoch=0, project_epoch=2, verbose=0)])
            assert kw.nonzero_groups(m) == {"h": 4}, kw.nonzero_groups(m)
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                import tflite_export
            assert any("keras-wgsef[export]" in str(x.message) for x in w), [str(x.message) for x in w]
            from tflite_export import shrink  # pure Keras: works without TensorFlow
            assert shrink(m).get_layer("h").units == 4
            try:
                tflite_export.to_tflite_int8
            except ImportError as e:
                assert "keras-wgsef[export]" in str(e), e
            else:
                raise AssertionError("to_tflite_int8 imported without TensorFlow")
            print("ok")
            """
        )
        env = dict(os.environ, KERAS_BACKEND="torch")
        proc = subprocess.run([str(py), "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-4000:]
    finally:
        shutil.rmtree(venv, ignore_errors=True)
