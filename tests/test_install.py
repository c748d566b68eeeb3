"""The built wheel installs beside the user's TensorFlow, and the core needs no TensorFlow.

The wheel is built once per run (``python -m build --wheel`` on a copy of the checkout, as
``make dist`` does). Each test makes a fresh venv, installs what a user already has (Colab's full
``tensorflow``; or no TensorFlow at all, with PyTorch), then installs the wheel (or, in the slow
suite, the clone with the install line every message quotes) and checks what is there afterwards
and that it runs. They download from the package index (about 40 s for TensorFlow) and take 1-2
minutes each; the ends of the declared TensorFlow range run in the slow suite. Set
``WGSEF_SKIP_INSTALL_CHECKS=1`` to skip them offline.
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

from keras_wgsef._install import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
#: a wheel beside a preinstalled TensorFlow, on any platform: conversion, LiteRT and the data (no TFLite Micro)
WHEEL_EXTRAS = "export,data"
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
    junk = shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".mypy_cache", ".ruff_cache",
        "_build", "demo", "logs",
    )  # fmt: skip
    return Path(shutil.copytree(ROOT, tmp_path / "keras-wgsef", ignore=junk))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of this checkout, as ``make dist`` builds it."""
    src = _clone(tmp_path_factory.mktemp("src"))
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (built,) = dist.glob("keras_wgsef-*.whl")
    return built


#: after the install: shrink and convert a small CNN, then export it without TFLite Micro
SHRINK_AND_CONVERT = textwrap.dedent(
    """
    import keras, numpy as np
    import tflite_export
    from tflite_export import export, shrink, to_tflite_int8
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
    m = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))
    k, b = m.get_layer("conv").get_weights()
    k[..., 5:] = 0.0
    b[5:] = 0.0
    m.get_layer("conv").set_weights([k, b])
    x = np.random.default_rng(0).random((16, 6, 6, 1), dtype=np.float32)
    thin = shrink(m, x)
    assert thin.get_layer("conv").filters == 5, thin.get_layer("conv").filters
    assert to_tflite_int8(thin, x)[4:8] == b"TFL3"
    r = export(m, x, eval_data=(x, np.arange(16) % 3), latency=False).report
    assert r.accuracy_litert is not None and r.tflm_arena_bytes is None, r
    assert any('pip install ".[micro]"' in n for n in r.notes), r.notes
    print("ok")
    """
)


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


def _install_beside_tensorflow(tmp_path: Path, tf_version: str, target: str, extras: str) -> Path:
    """A venv with the user's ``tensorflow==tf_version``, then ``target[extras]``: the TensorFlow is kept."""
    py = _venv(tmp_path / f"tf{tf_version}")
    _pip(py, f"tensorflow=={tf_version}")  # what the user had (Colab: the full tensorflow)
    before = _probe(py)
    assert before.get("tf_version") == tf_version, before
    _pip(py, f"{target}[{extras}]")
    after = _probe(py)
    present = TF_DISTRIBUTIONS & set(after["distributions"])
    assert present == {"tensorflow"}, f"exactly the user's tensorflow must be installed, found {present}"
    assert "tf_error" not in after, after["tf_error"]
    assert after["tf_version"] == tf_version and after["cuda_build"] == before["cuda_build"], (before, after)
    return py


def test_the_wheel_installs_beside_tensorflow_and_converts(tmp_path, wheel):
    """Colab's TensorFlow today (2.20) and the wheel with [export,data]: TensorFlow kept, shrink and convert run."""
    try:
        py = _install_beside_tensorflow(tmp_path, "2.20.0", str(wheel), WHEEL_EXTRAS)
        names = set(_probe(py)["distributions"])
        assert "tflite-micro" not in names and {"ai-edge-litert", "scikit-learn", "keras-wgsef"} <= names
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run(
            [str(py), "-c", SHRINK_AND_CONVERT], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-4000:]
    finally:
        shutil.rmtree(tmp_path / "tf2.20.0", ignore_errors=True)  # 2 GB


@pytest.mark.slow
@pytest.mark.parametrize("tf_version", ["2.19.1", "2.20.0", "2.21.0"])
def test_the_install_line_from_a_clone_keeps_the_users_tensorflow(tmp_path, tf_version):
    """The install line every message quotes (all of EXTRAS, TFLite Micro too), from a clone."""
    try:
        py = _install_beside_tensorflow(tmp_path, tf_version, str(_clone(tmp_path)), ",".join(EXTRAS))
        code = "import keras_wgsef, tflite_export, tflite_micro; from ai_edge_litert.interpreter import Interpreter"
        subprocess.run([str(py), "-c", code], check=True, capture_output=True)
    finally:
        shutil.rmtree(tmp_path / f"tf{tf_version}", ignore_errors=True)  # 2 GB


@pytest.mark.slow  # installs torch and trains: the default suite checks the wheel beside TensorFlow
def test_the_core_installs_and_trains_without_tensorflow(tmp_path, wheel):
    """The wheel with no extra: Keras and NumPy only; trains under torch; tflite_export names its extra."""
    venv = tmp_path / "core"
    try:
        py = _venv(venv)
        _pip(py, "torch==2.13.0")  # the CPU wheel this machine keeps on disk (the index has CUDA builds)
        _pip(py, str(wheel))
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
            assert any('pip install ".[export]"' in str(x.message) for x in w), [str(x.message) for x in w]
            from tflite_export import shrink  # pure Keras: works without TensorFlow
            assert shrink(m).get_layer("h").units == 4
            try:
                tflite_export.to_tflite_int8
            except ImportError as e:
                assert 'pip install ".[export]"' in str(e), e
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


@pytest.mark.slow
def test_the_readme_quickstart_runs_from_the_wheel(tmp_path, wheel):
    """The README's first Python block, as written, in a venv with TensorFlow 2.20 and the wheel only."""
    import re

    from test_readme import quickstart

    try:
        py = _install_beside_tensorflow(tmp_path, "2.20.0", str(wheel), WHEEL_EXTRAS)
        work = tmp_path / "user"  # no checkout on the path: the installed wheel is what runs
        work.mkdir()
        (work / "quickstart.py").write_text(quickstart())
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        env.pop("PYTHONPATH", None)
        run = subprocess.run(
            [str(py), "quickstart.py"], capture_output=True, text=True, env=env, cwd=work, timeout=3600
        )
        assert run.returncode == 0, run.stderr[-4000:]
        assert "{'conv2d': 8, 'conv2d_1': 16, 'conv2d_2': 32}" in run.stdout, run.stdout[-3000:]
        assert re.search(r"MACs / inference[\s|]+508,352", run.stdout), run.stdout[-3000:]
        assert (work / "quickstart_model" / "model_int8.tflite").stat().st_size > 0
    finally:
        shutil.rmtree(tmp_path / "tf2.20.0", ignore_errors=True)  # 2 GB
