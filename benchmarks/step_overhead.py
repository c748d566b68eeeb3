"""Per-step training cost of the WGSEF optimizer wrapper on the anchor CNN (a benchmark script, not a test).

Model: ``examples/anchor_cnn.py:anchor_cnn()`` (Conv16-BN-Conv32-BN-Conv64-BN-GAP-Dense10), batch 64,
the real 4,000 training digits of ``keras_wgsef.datasets.load_mnist5k()`` (a repeated tf.data
pipeline, the last partial batch dropped). For each inner optimizer (Adam(1e-3); SGD(0.1,
momentum 0.9)) and ``jit_compile`` False / True it compiles three models side by side:

* ``bare``      -- the inner optimizer alone;
* ``wgsef``     -- ``keras_wgsef.WGSEF(inner, k=0.5, lam=1e-3, groups=keras_wgsef.make_groups(model))``;
* ``wgsef off`` -- the same with ``lam=0`` (strength 0, the fine-tuning phase; the prox code still
  runs, its factors are then replaced by the mask).

Each model runs ``--warmup`` untimed steps (tracing, XLA compilation). Then ``--cycles`` cycles run
one step of every model, the order rotated each cycle (A B C, B C A, C A B, ...), so host drift hits
the arms alike. A step is timed as ``fit`` runs it: ``model.train_function(iterator)`` (Keras's
compiled train function on the next batch, no callbacks), the loss read back to synchronise.
Reports the median ms/step, the overhead ``median(wgsef) / median(bare) - 1``, the paired overhead
(median over cycles of the per-cycle ratio) and the range of the overhead over blocks of
``--block`` cycles. Noisy wall-clock timings on a shared host.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/step_overhead.py
    ... --cycles 60 --configs adam:0                 # quicker

Writes benchmarks/step_overhead.json and benchmarks/step_overhead.md next to this file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

import keras_wgsef as kw

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BATCH = 64


def load_anchor_cnn():
    """``anchor_cnn`` from examples/anchor_cnn.py (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("anchor_cnn_example", ROOT / "examples" / "anchor_cnn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.anchor_cnn


def timed_step(model: keras.Model, iterator) -> float:
    """Wall time (s) of one training step as ``fit`` runs it (the compiled train function on the
    next batch of ``iterator``), the loss read back so the step has finished."""
    t0 = time.perf_counter()
    logs = model.train_function(iterator)
    float(logs["loss"])
    return time.perf_counter() - t0


def make_inner(name: str) -> keras.optimizers.Optimizer:
    if name == "adam":
        return keras.optimizers.Adam(1e-3)
    if name == "sgd":
        return keras.optimizers.SGD(0.1, momentum=0.9)
    raise ValueError(name)


def build(arm: str, inner: str, jit: bool, anchor_cnn, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = anchor_cnn()
    opt = make_inner(inner)
    if arm == "wgsef":
        opt = kw.WGSEF(opt, k=0.5, lam=1e-3, groups=kw.make_groups(model))
    elif arm == "wgsef off":
        opt = kw.WGSEF(opt, k=0.5, lam=0.0, groups=kw.make_groups(model))
    model.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=100, help="timed steps per model, interleaved step by step")
    p.add_argument("--block", type=int, default=25, help="cycles per block for the spread of the overhead")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps per model")
    p.add_argument(
        "--configs",
        nargs="+",
        default=["adam:0", "adam:1", "sgd:0", "sgd:1"],
        help="inner:jit pairs, e.g. adam:0 sgd:1",
    )
    p.add_argument("--no-off", action="store_true", help="skip the penalty-off arm")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    t_start = time.time()
    anchor_cnn = load_anchor_cnn()
    (x, y), _ = kw.datasets.load_mnist5k()
    n = (len(x) // BATCH) * BATCH
    ds = tf.data.Dataset.from_tensor_slices((x[:n], y[:n])).batch(BATCH, drop_remainder=True).repeat().prefetch(2)
    arms = ["bare", "wgsef"] + ([] if a.no_off else ["wgsef off"])

    results = []
    for cfg in a.configs:
        inner, jit = cfg.split(":")
        jit = bool(int(jit))
        models = {arm: build(arm, inner, jit, anchor_cnn, a.seed) for arm in arms}
        iters = {arm: iter(ds) for arm in arms}
        t_warm = time.time()
        for arm, model in models.items():  # warm-up: tracing / XLA compilation, not timed
            model.make_train_function()
            for _ in range(a.warmup):
                timed_step(model, iters[arm])
        t_warm = time.time() - t_warm
        times = {arm: [] for arm in arms}
        for c in range(a.cycles):  # one step per arm per cycle, order rotated every cycle
            order = arms[c % len(arms) :] + arms[: c % len(arms)]
            for arm in order:
                times[arm].append(timed_step(models[arm], iters[arm]))
        med = {arm: statistics.median(times[arm]) for arm in arms}
        blocks = max(1, a.cycles // a.block)
        block_med = {
            arm: [statistics.median(times[arm][b * a.block : (b + 1) * a.block]) for b in range(blocks)] for arm in arms
        }
        row = {
            "inner": inner,
            "jit_compile": jit,
            "median_ms": {arm: 1e3 * med[arm] for arm in arms},
            "block_median_ms": {arm: [1e3 * t for t in block_med[arm]] for arm in arms},
            "step_ms": {arm: [round(1e3 * t, 3) for t in times[arm]] for arm in arms},
            "n_steps": {arm: len(times[arm]) for arm in arms},
            "warmup_s_all_arms": t_warm,
            "overhead_pct": {},
            "paired_overhead_pct": {},
            "block_overhead_pct_range": {},
        }
        for arm in arms[1:]:
            row["overhead_pct"][arm] = 100.0 * (med[arm] / med["bare"] - 1.0)
            row["paired_overhead_pct"][arm] = 100.0 * statistics.median(
                [w / b - 1.0 for w, b in zip(times[arm], times["bare"])]
            )
            ratios = [100.0 * (w / b - 1.0) for w, b in zip(block_med[arm], block_med["bare"])]
            row["block_overhead_pct_range"][arm] = [min(ratios), max(ratios)]
        wg = models["wgsef"].optimizer
        row["wgsef_nonzero_after"] = [int(v.numpy()) for v in wg.nonzero]
        row["wgsef_skipped_steps"] = int(wg.skipped_steps.numpy())
        results.append(row)
        print(
            f"{inner} jit={jit}: "
            + ", ".join(f"{arm} {1e3 * med[arm]:.2f} ms" for arm in arms)
            + " | overhead "
            + ", ".join(
                f"{arm} {row['overhead_pct'][arm]:+.1f}% (paired {row['paired_overhead_pct'][arm]:+.1f}%)"
                for arm in arms[1:]
            ),
            flush=True,
        )
        del models
        keras.backend.clear_session()

    head = (
        "| inner | jit_compile | "
        + " | ".join(f"{arm} ms/step" for arm in arms)
        + " | "
        + " | ".join(f"{arm} overhead (paired; block range)" for arm in arms[1:])
        + " |"
    )
    lines = [
        "# WGSEF per-step overhead on the anchor CNN",
        "",
        f"anchor_cnn(), batch {BATCH}, load_mnist5k() train split (4,000 digits, last partial batch dropped), "
        f"WGSEF(inner, k=0.5, lam=1e-3, groups=make_groups(model)); 'wgsef off' is lam=0. {a.warmup} untimed warm-up "
        f"steps per model, then {a.cycles} timed steps per model, interleaved step by step (order rotated each cycle); "
        "a step is `model.train_function(iterator)` with the loss read back. "
        "Overhead = median(wgsef)/median(bare) - 1; "
        f"paired = median of the per-cycle ratio; range = min..max of the overhead over blocks of {a.block} cycles. "
        f"Noisy wall-clock timings on a shared {os.cpu_count()}-core host with other jobs running.",
        "",
        head,
        "|---|---|" + "---|" * (len(arms) + len(arms) - 1),
    ]
    for r in results:
        lines.append(
            f"| {r['inner']} | {r['jit_compile']} | "
            + " | ".join(f"{r['median_ms'][arm]:.2f}" for arm in arms)
            + " | "
            + " | ".join(
                f"{r['overhead_pct'][arm]:+.1f}% ({r['paired_overhead_pct'][arm]:+.1f}%; "
                f"{r['block_overhead_pct_range'][arm][0]:+.0f}..{r['block_overhead_pct_range'][arm][1]:+.0f}%)"
                for arm in arms[1:]
            )
            + " |"
        )
    md = "\n".join(lines) + "\n"
    print()
    print(md)
    out = {
        "description": "WGSEF per-step overhead on the anchor CNN; milliseconds, noisy shared-host timings",
        "host": {
            "python": sys.version.split()[0],
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
        },
        "args": vars(a),
        "results": results,
        "wall_s": time.time() - t_start,
    }
    (HERE / "step_overhead.json").write_text(json.dumps(out, indent=1))
    (HERE / "step_overhead.md").write_text(md)


if __name__ == "__main__":
    main()
