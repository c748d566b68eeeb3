"""WGSEF under tf.distribute.MultiWorkerMirroredStrategy: two worker processes on loopback.

Keras 3's ``model.fit`` fails under this strategy (``ValueError: Attempt to convert a value
(PerReplica:{...}) with an unsupported type``; keras-team/keras#20585, tensorflow#72388, open since
TF 2.16), so this uses the library's custom training step (``keras_wgsef.training.make_train_step``),
which works: the gradients are all-reduced, the prox acts on the synchronized weights and both
workers end with the same weights and the same support.

    python examples/multiworker.py              # launches 2 workers, checks they agree
    python examples/multiworker.py --steps 60   # longer run
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def worker(index: int, ports: list[int], steps: int, out: str) -> None:
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    import keras_wgsef as kw

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    (x, y), _ = kw.datasets.load_digits8x8()
    global_batch = 64
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
                keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(10, name="head"),
            ]
        )
        opt = kw.WGSEF(keras.optimizers.Adam(1e-2), k=4, lam=2.0, groups=kw.make_groups(model))
        opt.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    step = kw.training.make_train_step(model, loss_fn, opt, strategy=strategy, global_batch_size=global_batch)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).repeat().batch(global_batch)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    it = iter(strategy.experimental_distribute_dataset(ds.with_options(options)))
    losses = [float(step(*next(it))) for _ in range(steps)]
    weights = {v.path: v.numpy().tolist() for v in model.trainable_variables}
    with open(out, "w") as f:
        json.dump(
            {"losses": losses, "nonzero": kw.nonzero_groups(model, [s.scope for s in opt.scopes]), "weights": weights},
            f,
        )


def launch(steps: int, workdir: str) -> list[dict]:
    ports = free_ports(2)
    outs = [os.path.join(workdir, f"worker{i}.json") for i in range(2)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                str(i),
                "--ports",
                *map(str, ports),
                "--steps",
                str(steps),
                "--out",
                outs[i],
            ]
        )
        for i in range(2)
    ]
    codes = [p.wait(timeout=600) for p in procs]
    if any(codes):
        raise RuntimeError(f"workers exited with {codes}")
    results = []
    for o in outs:
        with open(o) as f:
            results.append(json.load(f))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", type=int)
    p.add_argument("--ports", type=int, nargs="+")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", default=".")
    a = p.parse_args()
    if a.worker is not None:
        worker(a.worker, a.ports, a.steps, a.out)
        return
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        r0, r1 = launch(a.steps, tmp)
    diff = max(float(np.max(np.abs(np.array(r0["weights"][k]) - np.array(r1["weights"][k])))) for k in r0["weights"])
    print(
        f"loss {r0['losses'][0]:.3f} -> {r0['losses'][-1]:.3f}; "
        f"nonzero groups worker0 {r0['nonzero']} worker1 {r1['nonzero']}"
    )
    print(f"max weight difference between the workers: {diff:.3g}")


if __name__ == "__main__":
    main()
