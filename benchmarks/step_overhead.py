"""Per-step training cost of WGSEF over the bare inner optimizer, on four models (a benchmark, not a test).

Models, synthetic data (random inputs and labels: the cost of a step does not depend on them):

* ``anchor``      -- ``examples/anchor_cnn.py:anchor_cnn()``, 28x28x1, batch 64;
* ``resnet8``     -- ResNet-8 of MLPerf Tiny (16/32/64, 1x1 projections), 32x32x3, batch 64;
* ``mobilenetv2`` -- ``keras.applications.MobileNetV2(alpha=1.0)``, 96x96x3, batch 16;
* ``resnet50``    -- ``keras.applications.ResNet50``, 128x128x3, batch 8.

Arms, each SGD(0.01, momentum 0.9), compiled with the backend's default ``jit_compile`` (or the
one given): ``bare``; ``layer`` = ``WGSEF(sgd, k=0.5, lam=1e-3, groups=make_groups(model))`` (one
envelope per scope, the prox active on every step); ``model`` = the same with
``envelope="model"`` (one global envelope). The WGSEF arms run one batched prox over all scopes
per step (``keras_wgsef.scope_state.prox_factors``).

Timing: ``--warmup`` untimed steps per arm (tracing, XLA), then ``--cycles`` cycles of one step
per arm, the order rotated every cycle, so host drift hits the arms alike. On TensorFlow a step
is ``model.train_function(iterator)`` as ``fit`` runs it, with the loss read back; on JAX and
torch it is ``model.train_on_batch`` (the same for every arm). Reports medians (ms/step) and the
overhead as the median, over cycles, of the arm's step minus the bare step of the same cycle,
divided by the bare median (so that the host's drift between cycles cancels; the ratio of the
medians is kept in the JSON as ``overhead_of_medians_pct``); wall-clock timings on a shared host.

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/step_overhead.py
    ... --models anchor resnet8 --cycles 20 --jit 1        # a subset, XLA on

Appends one JSON line per (backend, jit, model) to benchmarks/step_overhead.jsonl and rewrites
benchmarks/step_overhead.md from all the lines there (the latest per key).
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
import numpy as np

import keras_wgsef as kw

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
JSONL = HERE / "step_overhead.jsonl"
ARMS = ("bare", "layer", "model")


def _anchor_cnn():
    spec = importlib.util.spec_from_file_location("anchor_cnn_example", ROOT / "examples" / "anchor_cnn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.anchor_cnn()


def _resnet8() -> keras.Model:
    """ResNet-8 of MLPerf Tiny (as examples/resnet8.py), 32x32x3."""
    L = keras.layers

    def conv_bn(h, filters, kernel, stride, name, relu=True):
        h = L.Conv2D(filters, kernel, strides=stride, padding="same", name=name)(h)
        h = L.BatchNormalization(name=f"{name}_bn")(h)
        return L.ReLU(name=f"{name}_relu")(h) if relu else h

    inp = keras.Input((32, 32, 3))
    h = conv_bn(inp, 16, 3, 1, "stem")
    for stage, w in enumerate((16, 32, 64), start=1):
        stride = 1 if stage == 1 else 2
        r = conv_bn(conv_bn(h, w, 3, stride, f"s{stage}_conv1"), w, 3, 1, f"s{stage}_conv2", relu=False)
        if stage > 1:
            h = conv_bn(h, w, 1, stride, f"s{stage}_proj", relu=False)
        h = L.ReLU(name=f"s{stage}_out")(L.Add(name=f"s{stage}_add")([h, r]))
    return keras.Model(inp, L.Dense(10, name="head")(L.GlobalAveragePooling2D(name="gap")(h)), name="resnet8")


MODELS = {
    "anchor": (_anchor_cnn, (28, 28, 1), 64),
    "resnet8": (_resnet8, (32, 32, 3), 64),
    "mobilenetv2": (
        lambda: keras.applications.MobileNetV2(
            input_shape=(96, 96, 3), alpha=1.0, weights=None, classes=10, classifier_activation=None
        ),
        (96, 96, 3),
        16,
    ),
    "resnet50": (
        lambda: keras.applications.ResNet50(
            input_shape=(128, 128, 3), weights=None, classes=10, classifier_activation=None
        ),
        (128, 128, 3),
        8,
    ),
}


def build(name: str, arm: str, jit, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = MODELS[name][0]()
    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    if arm != "bare":
        opt = kw.WGSEF(opt, k=0.5, lam=1e-3, groups=kw.make_groups(model), envelope=arm)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    return model


def stepper(model: keras.Model, x: np.ndarray, y: np.ndarray):
    """One training step as a callable returning its wall time (s), synchronised on the loss."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
        model.make_train_function()

        def step() -> float:
            t0 = time.perf_counter()
            float(model.train_function(iterator)["loss"])
            return time.perf_counter() - t0

        return step

    def step() -> float:
        t0 = time.perf_counter()
        float(np.asarray(model.train_on_batch(x, y)))
        return time.perf_counter() - t0

    return step


def measure(name: str, jit, cycles: int, warmup: int, seed: int) -> dict:
    _, shape, batch = MODELS[name]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *shape)).astype("float32")
    y = rng.integers(0, 10, size=batch)
    models = {arm: build(name, arm, jit, seed) for arm in ARMS}
    steps = {arm: stepper(m, x, y) for arm, m in models.items()}
    t0 = time.time()
    for arm in ARMS:
        for _ in range(warmup):
            steps[arm]()
    warm_s = time.time() - t0
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for c in range(cycles):
        for arm in ARMS[c % 3 :] + ARMS[: c % 3]:
            times[arm].append(steps[arm]())
    med = {arm: 1e3 * statistics.median(t) for arm, t in times.items()}
    # each arm's step minus the bare step of the same cycle: drift of the host cancels
    paired = {arm: 1e3 * statistics.median(a - b for a, b in zip(times[arm], times["bare"])) for arm in ARMS[1:]}
    scopes = {arm: len(models[arm].optimizer.scopes) for arm in ARMS[1:]}
    row = {
        "backend": keras.backend.backend(),
        "jit_compile": str(jit),
        "model": name,
        "batch": batch,
        "input": list(shape),
        "params": int(models["bare"].count_params()),
        "scopes": scopes,
        "groups": int(sum(s.num_groups for s in models["layer"].optimizer.scopes)),
        "median_ms": med,
        "overhead_pct": {arm: 100.0 * paired[arm] / med["bare"] for arm in ARMS[1:]},
        "overhead_of_medians_pct": {arm: 100.0 * (med[arm] / med["bare"] - 1.0) for arm in ARMS[1:]},
        "cycles": cycles,
        "warmup_s": warm_s,
        "host": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "keras": keras.__version__,
            "loadavg": os.getloadavg(),
        },
    }
    del models
    keras.backend.clear_session()
    return row


def page() -> str:
    latest: dict[tuple, dict] = {}
    for line in JSONL.read_text().splitlines():
        r = json.loads(line)
        latest[(r["host"]["machine"], r["host"]["cpus"], r["backend"], r["jit_compile"], r["model"])] = r
    lines = [
        "# WGSEF per-step overhead over the bare optimizer",
        "",
        "SGD(0.01, momentum 0.9); WGSEF(k=0.5, lam=1e-3, make_groups(model)), the prox active on every step;",
        "'layer' = one envelope per scope, 'model' = one global envelope; one batched prox per step over all",
        "scopes. Median ms/step of interleaved steps, synthetic data (`benchmarks/step_overhead.py`);",
        "overhead = median over cycles of (arm step - bare step of the same cycle) / bare median.",
        "jit_compile 'auto' is the backend's default (on this CPU's TensorFlow it resolved to no XLA).",
        "",
        "| host | backend | jit_compile | model (batch) | scopes | bare ms | layer ms | model ms "
        "| layer overhead | model overhead |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (machine, cpus, backend, jit, name), r in sorted(latest.items()):
        m, o = r["median_ms"], r["overhead_pct"]
        lines.append(
            f"| {machine}, {cpus} cpus | {backend} | {jit} | {name} ({r['batch']}) | {r['scopes']['layer']} | "
            f"{m['bare']:.1f} | {m['layer']:.1f} | {m['model']:.1f} | {o['layer']:+.1f} % | {o['model']:+.1f} % |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--jit", choices=["auto", "0", "1"], default="auto", help="jit_compile: the default, off, on")
    p.add_argument("--cycles", type=int, default=30)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    jit = {"auto": "auto", "0": False, "1": True}[a.jit]
    for name in a.models:
        row = measure(name, jit, a.cycles, a.warmup, a.seed)
        with JSONL.open("a") as f:
            f.write(json.dumps(row) + "\n")
        m, o = row["median_ms"], row["overhead_pct"]
        print(
            f"{row['backend']} jit={jit} {name}: bare {m['bare']:.1f} ms, layer {m['layer']:.1f} ms "
            f"({o['layer']:+.1f} %), model {m['model']:.1f} ms ({o['model']:+.1f} %)",
            flush=True,
        )
    (HERE / "step_overhead.md").write_text(page())


if __name__ == "__main__":
    main()
