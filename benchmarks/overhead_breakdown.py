"""Where WGSEF's per-step overhead goes on the anchor CNN (TensorFlow, CPU time): a diagnostic, not a test.

``step_overhead.py`` measures wall time, which a busy host blurs; this script measures the process
CPU time of each step (all TensorFlow threads), interleaving the arms, so a comparison holds even
while other jobs run (an A/A pair of bare arms differs by ~0.2 %). Arms, each compiled like
``step_overhead.py`` (SGD momentum 0.9, ``WGSEF(k=0.5, lam=1e-3, make_groups(model))``):

* ``bare``: SGD alone; ``wgsef``: ``xla_prox=True`` (the ``xla_all`` path, built in);
* ``plain``: as shipped (``xla_prox=False``): the prox as ~100 separate operations;
* ``ones``: the prox factors replaced by ones (what the finite check, the assigns and the
  bookkeeping cost); ``normsonly``: the group norms computed, factors ones;
* ``xla_prox``: the batched prox (norms to factors) alone compiled with XLA inside the step;
* ``xla_all``: the whole prox-and-assign compiled with XLA (what ``xla_prox=True`` does);
  ``xla_all_nofinite``: the same without the non-finite-gradient check.

Measured here on 2026-12-01 (2 cores, two benchmark workers running, 400 interleaved steps, two
runs): plain +4.8 / +6.3 %, ones +1.7 / +1.2 %, xla_prox +4.1 / +4.5 %, xla_all +3.0 / +1.4 %,
xla_all_nofinite +2.5 %: under load the batched prox (~100 small operations) is about two thirds
of the overhead. On the quiet machine the picture changes: CPU time plain +4.9 %, xla_all +4.4 %,
and wall-time medians (400 steps) plain +5.9 %, xla_prox=True +5.3 %: the XLA cluster saves
~0.1 ms a step there, which is why it is an option and not the default.

    .venv/bin/python benchmarks/overhead_breakdown.py                 # every arm
    .venv/bin/python benchmarks/overhead_breakdown.py bare wgsef      # a subset
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
from keras_wgsef import prox_ops
from keras_wgsef.scope_state import prox_factors

ARMS = ("bare", "wgsef", "plain", "ones", "normsonly", "xla_prox", "xla_all", "xla_all_nofinite")


def _ones(states, values, lr, ridge):
    return [(ops.ones((st.num_groups,), "float64"),) * 2 for st in states]


def _norms_only(states, values, lr, ridge):
    out = []
    for st, vals in zip(states, values):
        axes, index = [mb.axis for mb in st.members], [mb.index for mb in st.members]
        norms = ops.sqrt(prox_ops.group_sq_norms(vals, axes, index, st.num_groups))
        out.append((ops.ones_like(norms), norms))
    return out


def _xla_prox(states, values, lr, ridge, cache={}):  # noqa: B006 - one compiled function per scope list
    sizes = [len(v) for v in values]
    if id(states) not in cache:

        @tf.function(jit_compile=True, autograph=False)
        def compiled(flat, lr):
            vals, i = [], 0
            for n in sizes:
                vals.append(list(flat[i : i + n]))
                i += n
            return [t for pair in prox_factors(states, vals, lr, ridge) for t in pair]

        cache[id(states)] = compiled
    res = cache[id(states)]([tf.convert_to_tensor(x) for v in values for x in v], tf.convert_to_tensor(lr))
    return [(res[2 * i], res[2 * i + 1]) for i in range(len(states))]


def _xla_all(opt) -> None:
    plain = opt._prox_assign

    @tf.function(jit_compile=True, autograph=False)
    def compiled(lr):
        plain(lr, lambda var, factor: var.assign(var * factor))
        return tf.constant(0)

    opt._prox_assign = lambda lr, assign: compiled(tf.convert_to_tensor(lr))


def build(arm: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = _anchor_cnn()
    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    if arm != "bare":
        xla = arm == "wgsef"  # the other arms patch the plain path themselves
        opt = kw.WGSEF(opt, k=0.5, lam=1e-3, groups=kw.make_groups(model), xla_prox=xla)
        if arm.startswith("xla_all"):
            _xla_all(opt)
        if arm.endswith("nofinite"):
            opt.check_finite = lambda grads: ops.convert_to_tensor(True)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def main(arms: list[str], cycles: int = 400) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 28, 28, 1)).astype("float32"), rng.integers(0, 10, size=64)
    steps = {}
    for arm in arms:
        # the patch is read when the step is traced, on its first call
        optimizer_module.prox_factors = {"ones": _ones, "normsonly": _norms_only, "xla_prox": _xla_prox}.get(
            arm, prox_factors
        )
        model = build(arm)
        iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
        model.make_train_function()
        for _ in range(20):
            model.train_function(iterator)
        steps[arm] = (model, iterator)
    optimizer_module.prox_factors = prox_factors

    def step(arm: str) -> float:
        model, iterator = steps[arm]
        t0 = time.process_time()
        float(model.train_function(iterator)["loss"])
        return time.process_time() - t0

    times: dict[str, list[float]] = {arm: [] for arm in arms}
    for c in range(cycles):
        for arm in arms[c % len(arms) :] + arms[: c % len(arms)]:
            times[arm].append(step(arm))
    bare = statistics.mean(times["bare"])
    print(f"{'arm':18s} {'CPU ms/step':>12s} {'overhead':>9s}")
    for arm in arms:
        mean = statistics.mean(times[arm])
        print(f"{arm:18s} {1e3 * mean:12.3f} {100 * (mean / bare - 1):+8.1f}%")


if __name__ == "__main__":
    chosen = sys.argv[1:] or list(ARMS)
    main(["bare", *[a for a in chosen if a != "bare"]])
