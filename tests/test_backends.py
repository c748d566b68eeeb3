"""fit + ReachK reach exactly k on the JAX and torch backends too, each in a fresh process.

The backend is fixed when Keras is imported, so each case runs a script with ``KERAS_BACKEND``
set: ``fit`` with ``WGSEF`` + ``ReachK`` (exactly k), ``SparsityLogger(log_dir=...)``,
``recalibrate_batchnorm``, ``model.save`` / ``load_model`` and more training. JAX runs with x64
off, as users have it (the prox then computes in float32, see ``prox_ops.prox_dtype``) and with
``-W error::UserWarning``: no float64 truncation warning may appear. ``make test`` also runs the
optimizer, controller and batchnorm test files under both backends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile, keras, numpy as np, keras_wgsef as kw
    jit = sys.argv[1] == "1"
    keras.utils.set_random_seed(0)
    (x, y), (xt, yt) = kw.datasets.load_digits8x8()
    x, y = x[:960], y[:960]
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(12, 3, padding="same", name="c1"),
        keras.layers.BatchNormalization(name="bn1"), keras.layers.ReLU(),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, name="head")])
    m.compile(optimizer=kw.WGSEF(keras.optimizers.Adam(1e-2), k=0.5, groups=kw.make_groups(m)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
              jit_compile=jit)
    tb = tempfile.mkdtemp()
    m.fit(x, y, batch_size=64, epochs=6, verbose=0,
          callbacks=[kw.callbacks.ReachK(start_epoch=1, verbose=0), kw.callbacks.SparsityLogger(log_dir=tb, verbose=0)])
    kw.recalibrate_batchnorm(m, x)
    out = {"backend": keras.backend.backend(), "nonzero": kw.nonzero_groups(m),
           "acc": float(m.evaluate(xt, yt, verbose=0)[1])}
    path = tempfile.mkdtemp() + "/m.keras"
    m.save(path)
    again = keras.models.load_model(path)
    out["loaded_same"] = all(np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
                             for a, b in zip(m.weights, again.weights))
    again.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)  # the frozen support holds in further training
    out["nonzero_after_more"] = kw.nonzero_groups(again)
    import tflite_export
    try:
        tflite_export.to_tflite_int8(m, x[:8])
        out["convert_error"] = None
    except tflite_export.ConversionError as e:  # conversion needs the TensorFlow backend: say so
        out["convert_error"] = str(e)
    if len(sys.argv) > 2:  # train here, export with the CLI (its own process converts on TensorFlow)
        import subprocess
        np.save("calib.npy", x[:64])
        cli = [sys.executable, "-m", "tflite_export", path, "--calibration", "calib.npy", "--out", "export",
               "--no-instructions", "--quiet"]
        out["cli_rc"] = subprocess.run(cli, capture_output=True, text=True).returncode
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize(
    ("backend", "jit"),
    [("jax", "1"), pytest.param("jax", "0", marks=pytest.mark.slow), ("torch", "0")],  # eager JAX: 75 s
    ids=["jax-jit", "jax-nojit", "torch"],
)
def test_fit_with_reachk_reaches_exactly_k(backend, jit, tmp_path):
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (`make test` installs it; or pip install 'jax[cpu]' / torch)")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("JAX_ENABLE_X64", None)
    extra = ["cli"] if (backend, jit) == ("jax", "1") else []
    proc = subprocess.run(
        [sys.executable, "-W", "error::UserWarning:keras_wgsef", "-c", SCRIPT, jit, *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == backend
    assert out["nonzero"] == out["nonzero_after_more"] == {"c1": 6, "c2": 8}
    assert out["loaded_same"]
    assert out["acc"] > 0.5, out  # chance is 0.1
    assert "truncated to dtype" not in proc.stderr  # JAX x64 off: the prox does not ask for float64
    assert "runs on the TensorFlow backend" in out["convert_error"] and "wgsef-export" in out["convert_error"]
    if extra:
        assert out["cli_rc"] == 0  # a model trained under JAX exports with wgsef-export
