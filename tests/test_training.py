"""The custom training step: plain, under MirroredStrategy and MultiWorkerMirroredStrategy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

import keras_wgsef as kw

ROOT = Path(__file__).resolve().parents[1]


def model_and_data(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, name="h"), keras.layers.ReLU(), keras.layers.Dense(3, name="out")]
    )
    rng = np.random.default_rng(seed)
    return model, rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 3, 32)


def test_custom_step_equals_fit_step():
    """One tf.GradientTape step through make_train_step == one fit step (same batch, same optimizer)."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    m1, x, y = model_and_data()
    m2, _, _ = model_and_data()
    o1 = kw.WGSEF(keras.optimizers.SGD(0.1), k=3, lam=2.0)
    o2 = kw.WGSEF(keras.optimizers.SGD(0.1), k=3, lam=2.0)
    step = kw.training.make_train_step(m1, loss, o1)
    step(x, y)
    m2.compile(optimizer=o2, loss=loss)
    m2.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(m1.trainable_variables, m2.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert o1.scopes[0].nonzero_count() == o2.scopes[0].nonzero_count() < 8  # the prox ran in both


def test_train_step_override_example_runs_the_prox():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from train_step_override import ProxModel, build
    finally:
        sys.path.pop(0)
    model = build(ProxModel)
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 1)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, 64)
    opt = kw.WGSEF(keras.optimizers.Adam(1e-2), k=2, groups=kw.make_groups(model))
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    shrink_seen = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: shrink_seen.append(float(np.min(opt.scopes[0].attenuation)))
    )
    model.fit(
        x, y, epochs=3, batch_size=16, verbose=0, callbacks=[probe, kw.callbacks.ReachK(project_epoch=2, verbose=0)]
    )
    assert shrink_seen[1] < 1.0  # the prox shrank groups during epoch 2 (inside the override's apply)
    assert list(kw.nonzero_groups(model).values()) == [2]


def run_script(args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_mirrored_strategy_two_logical_cpus():
    out = json.loads(run_script([str(ROOT / "tests" / "mirrored_check.py")]).strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["replica_diff"] == 0.0  # the prox acted identically on both replicas
    assert list(out["nonzero"].values()) == [3]


def test_multiworker_two_processes_same_support(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import multiworker
    finally:
        sys.path.pop(0)
    r0, r1 = multiworker.launch(steps=25, workdir=str(tmp_path))
    assert r0["nonzero"] == r1["nonzero"]
    for name in r0["weights"]:
        np.testing.assert_array_equal(np.array(r0["weights"][name]), np.array(r1["weights"][name]))
    assert r0["losses"][-1] < r0["losses"][0]
