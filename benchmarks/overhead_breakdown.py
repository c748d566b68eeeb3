"""Where WGSEF's per-step overhead goes on the anchor CNN (TensorFlow): a diagnostic, not a test.

Arms, each compiled like ``step_overhead.py`` (SGD momentum 0.9, ``WGSEF(k=0.5, lam=1e-3,
make_groups(model))``), stepped in turn, the order rotated every cycle:

* ``bare``: SGD alone; ``wgsef``: ``xla_prox=True`` (the ``xla_all`` path, built in);
* ``plain``: as shipped (``xla_prox=False``);
* ``ones``: the prox factors replaced by ones (what the gradients' check, the assigns and the
  bookkeeping cost); ``normsonly``: the group norms computed, factors ones;
* ``xla_prox``: the batched prox (norms to factors) alone compiled with XLA inside the step;
* ``xla_all``: the whole prox-and-assign compiled with XLA (what ``xla_prox=True`` does);
  ``xla_all_nofinite``: the same without the non-finite-gradient check.

It prints each arm's wall-time overhead (the median over cycles of its step minus the bare step
of the same cycle: drift cancels) and its CPU-time overhead (all threads; readable while other
jobs run). ``--profile ARM ...`` runs TensorFlow's profiler instead and prints how many ops the
optimizer and the loss execute per step and their kernel time: on a small model the overhead is
the number of ops (a few microseconds each, however small their tensors), not their size.

Measured on 2026-12-01 (2 cores, quiet, 400 cycles): plain +4.1 % wall / +3.6 % CPU, ones
+2.6 % / +1.4 %, wgsef (XLA) +5.1 % / +2.3 %. Profile: the optimizer and the loss execute 137 ops
per step with bare SGD, 170 with ``ones`` and 260 with ``plain``. Three paired runs of 1000
cycles: +3.2 / +3.4 / +3.2 % (CPU time +2.4 to +2.9 %).
The XLA executable of ``wgsef`` spends ~0.4 ms in its ~100 thunks, no faster than the plain ops.

    .venv/bin/python benchmarks/overhead_breakdown.py                 # every arm
    .venv/bin/python benchmarks/overhead_breakdown.py bare wgsef      # a subset
    .venv/bin/python benchmarks/overhead_breakdown.py --profile bare ones plain
    .venv/bin/python benchmarks/overhead_breakdown.py --against REV   # this tree against a git revision
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from step_overhead import _anchor_cnn

import keras_wgsef as kw
import keras_wgsef.optimizer as optimizer_module
from keras_wgsef.scope_state import padded_norms, prox_factors

ARMS = ("bare", "wgsef", "plain", "ones", "normsonly", "xla_prox", "xla_all", "xla_all_nofinite")


def _ones(states, values, lr, ridge):
    shape = (len(states), max(st.num_groups for st in states))
    return ops.ones(shape, "float32")


def _norms_only(states, values, lr, ridge):
    norms = padded_norms(states, values)
    return ops.cast(norms >= 0, "float32")  # ones, computed from the norms


def _xla_prox(states, values, lr, ridge, cache={}):  # noqa: B006 - one compiled function per scope list
    sizes = [len(v) for v in values]
    if id(states) not in cache:

        @tf.function(jit_compile=True, autograph=False)
        def compiled(flat, lr):
            vals, i = [], 0
            for n in sizes:
                vals.append(list(flat[i : i + n]))
                i += n
            return prox_factors(states, vals, lr, ridge)

        cache[id(states)] = compiled
    return cache[id(states)]([tf.convert_to_tensor(x) for v in values for x in v], tf.convert_to_tensor(lr))


def _xla_all(opt) -> None:
    plain = opt._prox_assign

    @tf.function(jit_compile=True, autograph=False)
    def compiled(lr):
        plain(lr, lambda var, value, factor: var.assign(value * factor))
        return tf.constant(0)

    opt._prox_assign = lambda lr, assign: compiled(tf.convert_to_tensor(lr))


def _revision(rev: str):
    """``keras_wgsef`` as of git revision ``rev``, imported as ``keras_wgsef_<rev>`` beside this one."""
    import importlib
    import re
    import subprocess
    import tarfile
    import tempfile

    name = "keras_wgsef_" + re.sub(r"\W", "_", rev)
    root = Path(tempfile.mkdtemp())
    archive = subprocess.run(
        ["git", "archive", rev, "keras_wgsef"], cwd=Path(__file__).resolve().parents[1], capture_output=True, check=True
    ).stdout
    tar_path = root / "src.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(root, filter="data")
    (root / "keras_wgsef").rename(root / name)
    for py in (root / name).rglob("*.py"):
        py.write_text(re.sub(r"\bkeras_wgsef\b", name, py.read_text()))
    sys.path.insert(0, str(root))
    return importlib.import_module(name)


#: ``--against REV`` adds the arm "rev": the plain prox of another revision, in the same process
AGAINST: list = []


def build(arm: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = _anchor_cnn()
    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    if arm != "bare":
        xla = arm == "wgsef"  # the other arms patch the plain path themselves
        lib = AGAINST[0] if arm == "rev" else kw
        opt = lib.WGSEF(opt, k=0.5, lam=1e-3, groups=lib.make_groups(model), **({"xla_prox": True} if xla else {}))
        if arm.startswith("xla_all"):
            _xla_all(opt)
        if arm.endswith("nofinite"):
            opt.check_finite = lambda grads: ops.convert_to_tensor(True)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _batch() -> tuple[np.ndarray, np.ndarray]:
    """One random anchor batch (64 MNIST-shaped images, 10 classes): the step's cost does not depend on it."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 28, 28, 1)).astype("float32"), rng.integers(0, 10, size=64)


def _prepared(arm: str, x: np.ndarray, y: np.ndarray):
    # the patch is read when the step is traced, on its first call
    optimizer_module.prox_factors = {"ones": _ones, "normsonly": _norms_only, "xla_prox": _xla_prox}.get(
        arm, prox_factors
    )
    try:
        model = build(arm)
        iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
        model.make_train_function()
        for _ in range(20):
            model.train_function(iterator)
    finally:
        optimizer_module.prox_factors = prox_factors
    return model, iterator


def main(arms: list[str], cycles: int = 400) -> None:
    """Wall time (median of each arm's step minus the bare step run next to it) and CPU time."""
    x, y = _batch()
    steps = {arm: _prepared(arm, x, y) for arm in arms}

    def step(arm: str) -> tuple[float, float]:
        model, iterator = steps[arm]
        t0, c0 = time.perf_counter(), time.process_time()
        float(model.train_function(iterator)["loss"])
        return time.perf_counter() - t0, time.process_time() - c0

    wall: dict[str, list[float]] = {arm: [] for arm in arms}
    cpu: dict[str, list[float]] = {arm: [] for arm in arms}
    for c in range(cycles):
        for arm in arms[c % len(arms) :] + arms[: c % len(arms)]:
            w, t = step(arm)
            wall[arm].append(w)
            cpu[arm].append(t)
    bare_wall, bare_cpu = statistics.median(wall["bare"]), statistics.mean(cpu["bare"])
    print(f"{'arm':18s} {'wall ms':>8s} {'paired':>8s} {'CPU ms':>8s} {'CPU':>8s}")
    for arm in arms:
        paired = statistics.median(a - b for a, b in zip(wall[arm], wall["bare"]))
        mean = statistics.mean(cpu[arm])
        print(
            f"{arm:18s} {1e3 * statistics.median(wall[arm]):8.3f} {100 * paired / bare_wall:+7.1f}% "
            f"{1e3 * mean:8.3f} {100 * (mean / bare_cpu - 1):+7.1f}%"
        )


def profile(arm: str, steps: int = 50) -> None:
    """TensorFlow's profiler over ``steps`` steps of one arm: kernel time and count of the optimizer's ops.

    The model's forward and backward ops (names under the model or ``gradient_tape``) are summed
    apart; every other op is the optimizer's (inner step, gradient check, prox). The count is
    what a small model pays for: each op costs a few microseconds however small its tensors.
    """
    import collections
    import glob
    import tempfile

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    x, y = _batch()
    model, iterator = _prepared(arm, x, y)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            float(model.train_function(iterator)["loss"])
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]).read_bytes())
    per_op: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" in name and "::" not in name:  # "scope/op_name:OpType", not executor bookkeeping
                    per_op[name] += event.duration_ps / 1e6 / steps
    model_ops = {n: t for n, t in per_op.items() if model.name in n or "gradient_tape" in n}
    opt_ops = {n: t for n, t in per_op.items() if n not in model_ops}
    print(f"{arm}: model {len(model_ops)} ops, {sum(model_ops.values()):.0f} us/step; ", end="")
    print(f"optimizer and loss {len(opt_ops)} ops, {sum(opt_ops.values()):.0f} us/step")
    for name, t in sorted(opt_ops.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {t:7.1f} us  {name}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--profile"]:
        for a in args[1:] or ["plain"]:
            profile(a)
    else:
        if args[:1] == ["--against"]:
            AGAINST.append(_revision(args[1]))
            args = ["plain", "rev", *args[2:]]
        chosen = args or list(ARMS)
        main(["bare", *[a for a in chosen if a != "bare"]])
