"""Where the WGSEF optimizer's time goes: ``optimizer.apply`` alone, by ablation (a benchmark script).

``step_overhead.py`` times whole training steps, where the conv net dominates and the host noise
(a shared 2-core machine) is as large as the effect. This script isolates the optimizer: one fixed
gradient (from one real batch of ``load_mnist5k()`` on ``anchor_cnn()``) is applied again and
again inside a ``tf.function`` (jit_compile False and True), for these variants:

* ``bare``        -- the inner optimizer's ``apply``;
* ``wrapper``     -- ``WGSEF.apply`` with ``_apply_prox`` a no-op: the finite-gradient check
  (``check_finite``), the ``ops.cond`` / ``merge_call`` of ``_common_apply``/``_tf_apply``;
* ``+ norms``     -- plus ``prox_ops.group_sq_norms`` per scope (``optimizer.py:_scope_scales``);
* ``+ prox``      -- plus ``prox_ops.prox_scales`` (sort + prefix scan + 2 Newton steps) and the mask,
  and the ``shrink``/``nonzero`` bookkeeping assigns;
* ``full``        -- ``WGSEF`` as shipped: plus ``expand_scales`` and one ``assign`` per variable;
* ``full, XLA prox (fix)`` -- a candidate fix: ``full`` with ``_scope_scales`` (norms + prox factors)
  in a nested ``tf.function(jit_compile=True)`` per scope (delta reported against ``full``).

Differences between consecutive variants attribute the cost to lines of ``keras_wgsef/optimizer.py``
and ``prox_ops.py``. It also counts the graph ops of each variant's traced function (branch
functions of ``cond`` included). Calls of all variants are interleaved; medians over ``--calls``.
Noisy wall-clock timings on a shared host.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/step_profile.py

Writes benchmarks/step_profile.json and benchmarks/step_profile.md next to this file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

import keras_wgsef as kw  # noqa: E402
from keras_wgsef import prox_ops  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def load_anchor_cnn():
    spec = importlib.util.spec_from_file_location("anchor_cnn_example", ROOT / "examples" / "anchor_cnn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.anchor_cnn


class Wrapper(kw.WGSEF):
    """WGSEF without the prox: the finite check and the cond only."""

    def _apply_prox(self, lr):
        pass


class NormsOnly(kw.WGSEF):
    """Group norms per scope; a count is assigned so that the norms are not pruned from the graph."""

    def _prox_assign(self, lr, assign):
        for i, s in enumerate(self.scopes):
            values = [ops.convert_to_tensor(v) for v in self._scope_vars[i]]
            sq = prox_ops.group_sq_norms(values, [mb.axis for mb in s.members], [mb.index for mb in s.members], s.num_groups)
            self.nonzero[i].assign(ops.sum(ops.cast(sq > 0, "int32")))


class ProxNoAssign(kw.WGSEF):
    """Norms, prox factors, mask and the shrink/nonzero bookkeeping; no assign to the model's variables."""

    def _prox_assign(self, lr, assign):
        for i, s in enumerate(self.scopes):
            values = [ops.convert_to_tensor(v) for v in self._scope_vars[i]]
            scales, norms = self._scope_scales(i, values, lr)
            self.shrink[i].assign(self.shrink[i] * ops.cast(scales, "float32"))
            self.nonzero[i].assign(ops.sum(ops.cast(norms * scales > 0, "int32")))


class XlaScales(kw.WGSEF):
    """Candidate fix: the per-scope norms + prox factors (``_scope_scales``) as one nested
    ``tf.function(jit_compile=True)``, so a non-XLA train step runs them as one fused XLA call
    instead of ~300 small graph ops per scope. Same arithmetic as ``WGSEF._scope_scales``."""

    def _scope_scales(self, i, values, lr):
        if not hasattr(self, "_xla_scales"):
            self._xla_scales = {}
        if i not in self._xla_scales:
            base = kw.WGSEF._scope_scales.__get__(self)
            self._xla_scales[i] = tf.function(lambda vals, lr_: base(i, vals, lr_), jit_compile=True)
        return self._xla_scales[i]([tf.identity(v) for v in values], tf.identity(lr))


VARIANTS = {"bare": None, "wrapper": Wrapper, "+ norms": NormsOnly, "+ prox": ProxNoAssign, "full": kw.WGSEF, "full, XLA prox (fix)": XlaScales}


def make_step(opt, tvars, grads):
    """A no-argument step (variables captured by closure, not traced as inputs)."""

    def step():
        opt.apply(grads, tvars)
        return opt.iterations

    return step


def count_ops(concrete) -> int:
    """Ops in a traced function, those of its library functions (cond branches, ...) included."""
    gdef = concrete.graph.as_graph_def()
    return len(gdef.node) + sum(len(f.node_def) for f in gdef.library.function)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--inner", choices=["adam", "sgd"], default="adam")
    a = p.parse_args()
    t_start = time.time()
    anchor_cnn = load_anchor_cnn()
    (x, y), _ = kw.datasets.load_mnist5k()
    xb, yb = tf.constant(x[:64]), tf.constant(y[:64])

    def inner():
        return keras.optimizers.Adam(1e-3) if a.inner == "adam" else keras.optimizers.SGD(0.1, momentum=0.9)

    keras.utils.set_random_seed(0)
    ref = anchor_cnn()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(yb, ref(xb, training=True))
    grads0 = [tf.constant(g) for g in tape.gradient(loss, ref.trainable_variables)]

    results = {}
    for jit in (False, True):
        fns, opt_of = {}, {}
        for name, cls in VARIANTS.items():
            keras.utils.set_random_seed(0)
            model = anchor_cnn()
            opt = inner() if cls is None else cls(inner(), k=0.5, lam=1e-3, groups=kw.make_groups(model))
            opt.build(model.trainable_variables)
            tvars = model.trainable_variables

            fns[name] = tf.function(make_step(opt, tvars, grads0), jit_compile=jit)
            opt_of[name] = opt
        n_ops = {name: count_ops(fn.get_concrete_function()) for name, fn in fns.items()}
        for fn in fns.values():  # warm-up (XLA compile)
            for _ in range(3):
                fn().numpy()
        times = {name: [] for name in fns}
        names = list(fns)
        for c in range(a.calls):
            for name in names[c % len(names):] + names[: c % len(names)]:
                t0 = time.perf_counter()
                fns[name]().numpy()
                times[name].append(time.perf_counter() - t0)
        med = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        results[str(jit)] = {"median_ms": med, "graph_ops": n_ops}
        print(f"jit={jit}: " + ", ".join(f"{n} {med[n]:.3f} ms ({n_ops[n]} ops)" for n in names), flush=True)

    names = list(VARIANTS)
    lines = [
        "# Where the WGSEF optimizer step spends its time (optimizer.apply alone)",
        "",
        f"anchor_cnn(), inner {a.inner}, WGSEF(k=0.5, lam=1e-3, groups=make_groups(model)): 3 scopes of 16/32/64 "
        f"output-channel groups, 12 variables. One fixed real-batch gradient applied {a.calls} times per variant inside "
        "a tf.function, variants interleaved; median ms per apply. 'delta' is the increase over the previous row. "
        "Graph ops include cond branch functions. Noisy wall-clock timings on a shared 2-core host.",
        "",
        "| variant | what it adds (code) | ms, jit False | delta | ms, jit True | delta | graph ops (jit False) |",
        "|---|---|---|---|---|---|---|",
    ]
    what = {
        "bare": "inner optimizer apply",
        "wrapper": "`check_finite` + `ops.cond` (optimizer.py `_common_apply`, `_tf_apply`)",
        "+ norms": "`prox_ops.group_sq_norms` (optimizer.py `_scope_scales`, 1st line)",
        "+ prox": "`prox_ops.prox_scales` + mask + `shrink`/`nonzero` assigns",
        "full": "`expand_scales` + 12 variable `assign`s (optimizer.py `_prox_assign`)",
        "full, XLA prox (fix)": "full, with `_scope_scales` in a nested `tf.function(jit_compile=True)`; delta vs full",
    }
    for i, n in enumerate(names):
        f, t = results["False"]["median_ms"][n], results["True"]["median_ms"][n]
        df = "" if i == 0 else f"{f - results['False']['median_ms'][names[i - 1]]:+.3f}"
        dt = "" if i == 0 else f"{t - results['True']['median_ms'][names[i - 1]]:+.3f}"
        lines.append(f"| {n} | {what[n]} | {f:.3f} | {df} | {t:.3f} | {dt} | {results['False']['graph_ops'][n]} |")
    md = "\n".join(lines) + "\n"
    print()
    print(md)
    (HERE / "step_profile.json").write_text(
        json.dumps({"args": vars(a), "results": results, "loadavg_at_end": os.getloadavg(), "wall_s": time.time() - t_start}, indent=1)
    )
    (HERE / "step_profile.md").write_text(md)


if __name__ == "__main__":
    main()
