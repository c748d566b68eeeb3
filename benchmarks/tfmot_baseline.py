"""TF Model Optimization ``prune_low_magnitude`` on a benchmark model, in its own process and venv.

TF-MOT 0.8 is Keras-2 only: it needs ``tf-keras`` (which needs the full
``tensorflow`` wheel) and sets ``TF_USE_LEGACY_KERAS=1`` for its process. So this script runs with
``.venv-tfmot/bin/python`` (``ensure_venv`` creates it when missing) and never imports
``keras_wgsef``. It builds the model with the benchmark's own builders (``models.py``, called with
``K=tf_keras``) and trains it with the same schedule as the main benchmark
(SGD momentum 0.9, lr 0.1 cosine decay, batch 64), ramps the sparsity with ``PolynomialDecay`` from
``start_epoch`` to ``prune_epoch`` (the structured methods' projection point), keeps the mask while
fine-tuning to the end (``UpdatePruningStep``), ``strip_pruning``, recalibrates BatchNorm on the
training set (as for every method), and exports int8 exactly like ``tflite_export.to_tflite_int8``
(``Optimize.DEFAULT``, 200 training images for calibration, ``TFLITE_BUILTINS_INT8``, int8 I/O). The
main process measures the ``.tflite`` with ``tflite_export.measure``.

    .venv-tfmot/bin/python benchmarks/tfmot_baseline.py --model anchor --data d.npz --out dir --sparsity 0.742
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VENV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv-tfmot")
REQUIREMENTS = ["tensorflow~=2.21.0", "tf-keras~=2.21.0", "tensorflow-model-optimization"]


def ensure_venv(log=print) -> str:
    """Creates ``.venv-tfmot`` when it does not import TF-MOT; returns its python."""
    py = os.path.join(VENV, "bin", "python")
    probe = "import os; os.environ['TF_USE_LEGACY_KERAS']='1'; import tensorflow_model_optimization, tf_keras"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if os.path.exists(py) and subprocess.run([py, "-c", probe], capture_output=True, env=env).returncode == 0:
        return py
    log(f"[tfmot] creating {VENV} ({' '.join(REQUIREMENTS)}) ...")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    with open(os.path.join(VENV, ".gitignore"), "w") as f:
        f.write("*\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    subprocess.run([py, "-c", probe], check=True, env=env)
    return py


def recalibrate_bn(tfk, model, x, batch=500):
    """Exact moving mean/variance of every BN layer from ``x``, in layer order (as keras_wgsef does).

    Works on a fresh copy of the graph (after ``strip_pruning`` the layers' ``input`` tensors belong
    to the pre-strip graph): each BN's input is computed by a sub-model, after the BNs before it
    were set. Returns the recalibrated copy.
    """
    import numpy as np

    fresh = tfk.Model.from_config(model.get_config())
    fresh.set_weights(model.get_weights())
    for layer in fresh.layers:
        if isinstance(layer, tfk.layers.BatchNormalization):
            sub = tfk.Model(fresh.inputs, layer.input)
            flat = [
                np.asarray(sub(x[i : i + batch], training=False), np.float64).reshape(-1, layer.input.shape[-1])
                for i in range(0, len(x), batch)
            ]
            n = sum(len(f) for f in flat)
            mean = sum(f.sum(0) for f in flat) / n
            var = np.maximum(sum((f**2).sum(0) for f in flat) / n - mean**2, 0)
            layer.moving_mean.assign(mean.astype("float32"))
            layer.moving_variance.assign(var.astype("float32"))
    return fresh


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="anchor", help="a key of models.BUILDERS")
    p.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0: TensorFlow's default)")
    p.add_argument("--data", required=True, help="npz with x, y, xt, yt")
    p.add_argument("--out", required=True, help="directory for <tag>.tflite and <tag>.json")
    p.add_argument("--sparsity", type=float, nargs="+", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--start-epoch", type=float, default=1.0)
    p.add_argument("--prune-epoch", type=float, default=8.0)
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args()

    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras as tfk

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from models import BUILDERS

    if a.threads:
        tf.config.threading.set_intra_op_parallelism_threads(a.threads)
        tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    builder, widths = BUILDERS[a.model]

    d = np.load(a.data)
    x, y, xt, yt = d["x"], d["y"], d["xt"], d["yt"]
    steps = int(np.ceil(len(x) / a.batch))
    os.makedirs(a.out, exist_ok=True)
    for seed in a.seeds:
        for s in a.sparsity:
            tag = f"tfmot_s{round(100 * s)}_seed{seed}"
            tfk.utils.set_random_seed(seed)
            schedule = tfmot.sparsity.keras.PolynomialDecay(
                initial_sparsity=0.0,
                final_sparsity=float(s),
                begin_step=int(a.start_epoch * steps),
                end_step=int(a.prune_epoch * steps),
                frequency=max(1, steps // 4),
            )
            model = tfmot.sparsity.keras.prune_low_magnitude(builder(widths, K=tfk), pruning_schedule=schedule)
            lr = tfk.optimizers.schedules.CosineDecay(0.1, decay_steps=steps * a.epochs)
            model.compile(
                optimizer=tfk.optimizers.SGD(lr, momentum=0.9),
                loss=tfk.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            times = []

            class Timer(tfk.callbacks.Callback):
                def on_epoch_begin(self, epoch, logs=None):
                    self.t = time.perf_counter()

                def on_epoch_end(self, epoch, logs=None):
                    times.append(time.perf_counter() - self.t)

            model.fit(
                x,
                y,
                batch_size=a.batch,
                epochs=a.epochs,
                verbose=0,
                callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), Timer()],
            )
            model = tfmot.sparsity.keras.strip_pruning(model)
            model = recalibrate_bn(tfk, model, x)
            float_acc = float(np.mean(np.argmax(model.predict(xt, batch_size=500, verbose=0), 1) == yt))
            kernels = [w for w in model.weights if w.name.endswith("kernel:0")]
            zeros = sum(int(np.sum(w.numpy() == 0)) for w in kernels)
            total = sum(int(np.prod(w.shape)) for w in kernels)
            conv = tf.lite.TFLiteConverter.from_keras_model(model)
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            cal = x[:200].astype("float32")
            conv.representative_dataset = lambda: ([cal[i : i + 1]] for i in range(len(cal)))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
            tfl = conv.convert()
            with open(os.path.join(a.out, tag + ".tflite"), "wb") as f:
                f.write(tfl)
            rec = {
                "tag": tag,
                "seed": seed,
                "sparsity": s,
                "float_acc": float_acc,
                "epoch_seconds": times,
                "kernel_sparsity": zeros / total,
                "train_s": float(sum(times)),
            }
            with open(os.path.join(a.out, tag + ".json"), "w") as f:
                json.dump(rec, f)
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
