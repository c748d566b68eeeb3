"""Fit the hardware cost models of ``keras_wgsef.budget.hardware`` and check them on held-out models.

Builds ~200 small Keras models (mostly one operator each: convolutions over a grid of kernel
1x1/3x3/5x5, strides 1/2, SAME/VALID, 1..64 channels, 4..32 pixels; depthwise convolutions,
dense layers, max/average pooling, global average pooling as MEAN and as AVERAGE_POOL_2D +
RESHAPE, ADD, MUL, CONCATENATION, RESHAPE, PAD, SOFTMAX, QUANTIZE/DEQUANTIZE), with random
weights, converts them to int8 TFLite (``tflite_export.convert.to_tflite_int8``) and measures:

* flash: ``len(tflite)``;
* arena: ``tflm_min_arena`` (the searched minimum) and the persistent tail the recording
  allocator reports (``print_allocations``);
* instructions: ``count_instructions_many`` (callgrind, one valgrind run per ~70 models).

Then it fits:

* arena: ``tail_base`` and ``tail_per_op[kind]`` by least squares on the reported tails (the
  struct sizes of the rest of the tail, the planner and the Prepare temporaries come from the TFLM
  source, see ``hardware.py``);
* flash: ``base``, ``per[feature]`` and ``per_op[kind]`` by least squares on ``len(tflite)`` minus
  the constant data and the tensor names; the name estimate (``names``) separately: the graph
  input/output name means, then non-negative least squares per operator kind;
* instructions: a non-negative least squares fit (``scipy.optimize.nnls``, relative errors) of all
  models at once, one coefficient per (operator kind, regressor of ``instruction_features``) plus
  one per-Invoke constant; the fallback for unknown kinds takes the largest per-operator,
  per-element and per-MAC costs. Layers whose stride and padding the shapes do not tell apart
  (see ``hardware._axis_geometry``) are left out of the calibration set.

It writes ``keras_wgsef/budget/coefficients.py`` and prints predicted vs measured for held-out
whole models (the benchmark architectures at widths the tests do not use, a dense MLP with a
softmax, an Add + Concatenate + Flatten model, the GAP-as-average-pool form, a depthwise-separable
chain), flash once with estimated tensor names and once with those measured on the other width.

Usage::

    python benchmarks/calibrate_costs.py                 # measure, fit, write, report (~3 min on 2 cores)
    python benchmarks/calibrate_costs.py --cache /tmp/cc # keep measurements between runs
    python benchmarks/calibrate_costs.py --no-write      # fit and report only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np

from keras_wgsef.budget import hardware
from keras_wgsef.budget.lowered import LoweredModel

COEFF_PATH = ROOT / "keras_wgsef" / "budget" / "coefficients.py"

# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def randomize(model, seed: int = 0):
    """Random weights, biases and BatchNorm statistics (like a trained model: no all-zero bias)."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = weights
            new = [rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.2, b.shape), rng.normal(0, 0.2, m.shape)]
            new.append(rng.uniform(0.5, 1.5, v.shape))
        else:
            new = []
            for w in weights:
                if w.ndim == 1:
                    new.append(rng.normal(0, 0.2, w.shape))
                else:
                    new.append(rng.normal(0, np.sqrt(2.0 / max(1, int(np.prod(w.shape[:-1])))), w.shape))
        layer.set_weights([np.asarray(n, dtype="float32") for n in new])
    return model


def build(kind: str, p: dict):
    """One calibration or held-out Keras model from a spec."""
    import keras

    L = keras.layers
    if kind in ("anchor", "resnet8", "dscnn", "anchor1d", "resnet8_1d", "dscnn1d"):
        import models

        builder, _ = {**models.BUILDERS, **models.BUILDERS_1D}[kind]
        return builder(tuple(p["widths"]))
    if kind == "mlp":
        inp = keras.Input((p["sizes"][0],))
        h = inp
        for i, s in enumerate(p["sizes"][1:-1]):
            h = L.Dense(s, activation="relu", name=f"fc{i + 1}")(h)
        out = L.Dense(p["sizes"][-1], name="head")(h)
        if p.get("softmax"):
            out = L.Softmax(name="softmax")(out)
        return keras.Model(inp, out, name="mlp")
    shape = tuple(p["shape"])
    inp = keras.Input(shape)
    if kind in ("conv", "dw"):
        bn = p.get("bn", False)
        if kind == "conv":
            layer = L.Conv2D(p["cout"], p["k"], strides=p["s"], padding=p["pad"], name="conv",
                             activation=None if bn else "relu")  # fmt: skip
        else:
            layer = L.DepthwiseConv2D(p["k"], strides=p["s"], padding=p["pad"], depth_multiplier=p.get("dm", 1),
                                      name="dw", activation=None if bn else "relu")  # fmt: skip
        out = layer(inp)
        if bn:
            out = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(out))
    elif kind == "fc":
        out = L.Dense(p["units"], activation="relu", name="dense")(inp)
    elif kind == "maxpool":
        out = L.MaxPooling2D(p["k"], strides=p["s"], padding=p["pad"], name="pool")(inp)
    elif kind == "avgpool":
        out = L.AveragePooling2D(p["k"], strides=p["s"], padding=p["pad"], name="pool")(inp)
    elif kind == "gap":
        out = L.GlobalAveragePooling2D(keepdims=p.get("keepdims", False), name="gap")(inp)
    elif kind == "gap_pool":  # GAP as the exporter lowers it: AveragePooling2D over the map + Reshape
        h = L.AveragePooling2D(shape[:2], name="gap_pool")(inp)
        out = L.Reshape((shape[-1],), name="gap_reshape")(h)
        if p.get("units"):
            out = L.Dense(p["units"], name="head")(out)
    elif kind in ("add", "mul"):
        y = L.Conv2D(shape[-1], 1, name="conv")(inp)
        out = (L.Add(name="add") if kind == "add" else L.Multiply(name="mul"))([inp, y])
    elif kind == "concat":
        parts = [inp] + [L.Conv2D(c, 1, name=f"conv{i}")(inp) for i, c in enumerate(p["extra"])]
        out = L.Concatenate(name="concat")(parts)
    elif kind == "reshape":
        out = L.Reshape(tuple(p["to"]), name="reshape")(inp)
        if p.get("units"):
            out = L.Dense(p["units"], name="dense")(L.Flatten(name="flatten")(out))
    elif kind == "pad":
        out = L.ZeroPadding2D(p["pad"], name="pad")(inp)
    elif kind == "softmax":
        out = L.Softmax(name="softmax")(inp)
    elif kind == "chain":  # a small CNN: conv / depthwise-separable / residual blocks, GAP (or pooled), dense
        named = p.get("named", True)

        def nm(base: str, i: int) -> str | None:
            return f"{base}{i}" if named else None

        def cbr(h, w, k, i, stride=1, relu=True, depthwise=False):
            if depthwise:
                h = L.DepthwiseConv2D(k, strides=stride, padding="same", name=nm("dw", i))(h)
            else:
                h = L.Conv2D(w, k, strides=stride, padding="same", name=nm("conv", i))(h)
            h = L.BatchNormalization(name=nm("bn", i))(h)
            return L.ReLU(name=nm("relu", i))(h) if relu else h

        blocks = p.get("blocks") or ["conv"] * len(p["widths"])
        h = inp
        n = 0
        for b, (kind_, w) in enumerate(zip(blocks, p["widths"])):
            if kind_ == "conv":
                h = cbr(h, w, 3, n, stride=p.get("stride", 1) if b == 0 else 1)
                n += 1
            elif kind_ == "dwsep":
                h = cbr(h, w, 3, n, depthwise=True)
                h = cbr(h, w, 1, n + 1)
                n += 2
            elif kind_ == "res":
                y = cbr(h, w, 3, n)
                y = cbr(y, int(h.shape[-1]), 3, n + 1, relu=False)
                h = L.ReLU(name=nm("res_relu", n))(L.Add(name=nm("add", n))([h, y]))
                n += 2
            if p.get("pool", True) and b < len(p["widths"]) - 1 and b % 2 == 0:
                h = L.MaxPooling2D(name=nm("pool", n))(h)
        if p.get("pooled_gap"):
            h = L.AveragePooling2D(tuple(h.shape[1:3]), name=nm("gap_pool", 0))(h)
            h = L.Reshape((h.shape[-1],), name=nm("gap_reshape", 0))(h)
        else:
            h = L.GlobalAveragePooling2D(name=nm("gap", 0))(h)
        out = L.Dense(10, name=nm("head", 0))(h)
    elif kind == "conv1d":  # TensorFlow runs it as EXPAND_DIMS, CONV_2D / DEPTHWISE_CONV_2D / pooling, RESHAPE
        if p["op"] == "conv":
            h = L.Conv1D(p["cout"], p["k"], strides=p["s"], padding=p["pad"], name="conv")(inp)
        elif p["op"] == "dw":
            h = L.DepthwiseConv1D(p["k"], strides=p["s"], padding=p["pad"], name="dw")(inp)
        else:
            pool = L.MaxPooling1D if p["op"] == "maxpool" else L.AveragePooling1D
            h = pool(p["k"], strides=p["s"], padding=p["pad"], name="pool")(inp)
        if p.get("bn"):
            h = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(h))
        out = L.GlobalAveragePooling1D(name="gap")(h) if p.get("gap") else h
    elif kind == "chain1d":  # a small 1-D CNN: conv / depthwise-separable / residual blocks, pooling, GAP, dense
        h = inp
        for b, (kind_, w) in enumerate(zip(p["blocks"], p["widths"])):
            if kind_ == "dwsep":
                h = L.ReLU()(L.BatchNormalization()(L.DepthwiseConv1D(3, padding="same")(h)))
                h = L.ReLU()(L.BatchNormalization()(L.Conv1D(w, 1)(h)))
            elif kind_ == "res":
                y = L.ReLU()(L.BatchNormalization()(L.Conv1D(w, 3, padding="same")(h)))
                y = L.BatchNormalization()(L.Conv1D(int(h.shape[-1]), 3, padding="same")(y))
                h = L.ReLU()(L.Add()([h, y]))
            else:
                h = L.ReLU()(L.BatchNormalization()(L.Conv1D(w, 3, padding="same")(h)))
            if b % 2 == 0 and b < len(p["widths"]) - 1:
                h = L.MaxPooling1D()(h)
        if p.get("pooled_gap"):  # GAP as the exporter lowers it: AveragePooling1D over the signal + Reshape
            h = L.Reshape((h.shape[-1],))(L.AveragePooling1D(h.shape[1])(h))
        else:
            h = L.GlobalAveragePooling1D()(h)
        out = L.Dense(10)(h)
    elif kind == "branchy":  # residual Add and channel Concatenate, then Flatten + Dense
        a = L.Conv2D(p["c"], 3, padding="same", activation="relu", name="a")(inp)
        b = L.Conv2D(p["c"], 3, padding="same", activation="relu", name="b")(a)
        h = L.Add(name="res")([a, b])
        c = L.Conv2D(p["c2"], 1, activation="relu", name="c")(h)
        h = L.Concatenate(name="cat")([h, c])
        h = L.MaxPooling2D(name="pool")(h)
        h = L.Flatten(name="flatten")(h)
        out = L.Dense(10, name="head")(h)
    else:
        raise ValueError(kind)
    return keras.Model(inp, out, name=p.get("name", "calib"))


def ambiguous(size: int, k: int, s: int, pad: str) -> bool:
    """Whether the shapes alone suggest another stride/padding than the layer's (see hardware._axis_geometry).

    Such layers (e.g. 5x5 VALID stride 1 on 8x8, which looks like 5x5 SAME stride 2) are left out of
    the fit: the cost model would read them with the other geometry.
    """
    out = -(-size // s) if pad == "same" else (size - k) // s + 1
    true = (s, max((out - 1) * s + k - size, 0) // 2 if pad == "same" else 0)
    return hardware._axis_geometry(size, out, k) != true


MODEL_NAMES = ("cnn", "kws_net", "small_model", "tiny_resnet", "mobilenet_v1", "net", "vww_model")


def calibration_specs(seed: int = 0) -> list[tuple[str, str, dict]]:
    """``(name, kind, params)`` of the models the coefficients are fitted on."""
    rng = np.random.default_rng(seed)
    specs: list[tuple[str, str, dict]] = []
    chans = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    sizes = [4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32]

    def add(kind: str, **p) -> None:
        specs.append((f"{kind}{len(specs)}", kind, p))

    n = 0
    while n < 48:  # CONV_2D
        k, s, pad = (
            int(rng.choice([1, 3, 3, 5])),
            int(rng.choice([1, 1, 2])),
            str(rng.choice(["same", "same", "valid"])),
        )
        hw, cin, cout = int(rng.choice(sizes)), int(rng.choice(chans)), int(rng.choice(chans))
        if (pad == "valid" and hw < k + 1) or ambiguous(hw, k, s, pad):
            continue
        ho = -(-hw // s) if pad == "same" else (hw - k) // s + 1
        if ho * ho * cout * k * k * cin > 3_000_000:
            continue
        add("conv", shape=(hw, hw, cin), cout=cout, k=k, s=s, pad=pad, bn=bool(rng.random() < 0.75),
            name=str(rng.choice(MODEL_NAMES)))  # fmt: skip
        n += 1
    n = 0
    while n < 26:  # DEPTHWISE_CONV_2D
        k, s, pad = int(rng.choice([3, 3, 5])), int(rng.choice([1, 1, 2])), str(rng.choice(["same", "same", "valid"]))
        hw, c, dm = int(rng.choice(sizes)), int(rng.choice(chans)), int(rng.choice([1, 1, 1, 2]))
        if (pad == "valid" and hw < k + 1) or ambiguous(hw, k, s, pad):
            continue
        add("dw", shape=(hw, hw, c), k=k, s=s, pad=pad, dm=dm, bn=bool(rng.random() < 0.75),
            name=str(rng.choice(MODEL_NAMES)))  # fmt: skip
        n += 1
    for _ in range(16):  # FULLY_CONNECTED
        add(
            "fc",
            shape=(int(rng.choice([4, 10, 16, 32, 64, 100, 128, 256])),),
            units=int(rng.choice([2, 8, 10, 32, 64])),
        )
    for kind in ("maxpool", "avgpool"):
        n = 0
        while n < 12:
            k = int(rng.choice([2, 2, 3]))
            s = int(rng.choice([1, k, k]))
            hw, pad = int(rng.choice(sizes[2:])), str(rng.choice(["valid", "valid", "same"]))
            if ambiguous(hw, k, s, pad):
                continue
            add(kind, shape=(hw, hw, int(rng.choice(chans))), k=k, s=s, pad=pad)
            n += 1
    for _ in range(10):  # MEAN
        add("gap", shape=(int(rng.choice(sizes)),) * 2 + (int(rng.choice(chans)),))
    for _ in range(3):
        add("gap", shape=(int(rng.choice(sizes)),) * 2 + (int(rng.choice(chans)),), keepdims=True)
    for _ in range(8):  # AVERAGE_POOL_2D over the map + RESHAPE (+ a dense head)
        add("gap_pool", shape=(int(rng.choice(sizes)),) * 2 + (int(rng.choice(chans)),),
            units=int(rng.choice([0, 10])))  # fmt: skip
    for kind in ("add", "mul"):
        for _ in range(8):
            add(kind, shape=(int(rng.choice(sizes)),) * 2 + (int(rng.choice(chans[:10])),))
    for _ in range(8):  # CONCATENATION
        extra = [int(rng.choice(chans[:10])) for _ in range(int(rng.choice([1, 1, 2])))]
        add("concat", shape=(int(rng.choice(sizes)),) * 2 + (int(rng.choice(chans[:10])),), extra=extra)
    for _ in range(6):  # RESHAPE
        hw, c = int(rng.choice(sizes[:8])), int(rng.choice(chans[:10]))
        add("reshape", shape=(hw, hw, c), to=(hw * hw, c), units=int(rng.choice([0, 0, 10])))
    for _ in range(6):  # PAD
        add("pad", shape=(int(rng.choice(sizes)),) * 2 + (int(rng.choice(chans[:10])),), pad=int(rng.choice([1, 2])))
    for _ in range(5):  # SOFTMAX
        add("softmax", shape=(int(rng.choice([2, 10, 32, 100, 256])),))
    for _ in range(3):
        add("softmax", shape=(int(rng.choice([4, 8])), int(rng.choice([10, 16]))))
    for _ in range(4):  # QUANTIZE / DEQUANTIZE (float input and output)
        add("conv", shape=(int(rng.choice(sizes[:8])),) * 2 + (int(rng.choice(chans[:8])),),
            cout=int(rng.choice(chans[:8])), k=3, s=1, pad="same", float_io=True)  # fmt: skip
    for i in range(14):  # small CNNs of conv-BN-ReLU, depthwise-separable and residual blocks
        nb = int(rng.choice([2, 3, 4]))
        blocks = [str(rng.choice(["conv", "dwsep", "res"])) if b else "conv" for b in range(nb)]
        widths = [int(rng.choice(chans[3:10])) for _ in range(nb)]
        add("chain", shape=(int(rng.choice([12, 16, 20, 24])),) * 2 + (1,), widths=widths, blocks=blocks,
            stride=int(rng.choice([1, 2])), pooled_gap=bool(i % 3 == 0), named=bool(i % 4 != 3),
            name=str(rng.choice(MODEL_NAMES)))  # fmt: skip
    for _ in range(3):
        add("branchy", shape=(12, 12, int(rng.choice([1, 3]))), c=int(rng.choice([4, 8, 12])),
            c2=int(rng.choice([4, 8])), name="branchy")  # fmt: skip
    for _ in range(3):
        sizes_ = [int(rng.choice([16, 32, 64])), int(rng.choice([8, 16, 32])), 10]
        add("mlp", sizes=sizes_, softmax=bool(rng.integers(2)))
    lengths = [6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64]
    n = 0
    while n < 24:  # 1-D layers: EXPAND_DIMS + the 2-D operator + RESHAPE (+ MEAN on the squeezed signal)
        op = str(rng.choice(["conv", "conv", "dw", "maxpool", "avgpool"]))
        k = int(rng.choice([2, 3]) if op.endswith("pool") else rng.choice([1, 3, 5]))
        s = int(rng.choice([1, k]) if op.endswith("pool") else rng.choice([1, 1, 2]))
        length, pad = int(rng.choice(lengths)), str(rng.choice(["same", "same", "valid"]))
        if (pad == "valid" and length < k + 1) or ambiguous(length, k, s, pad):
            continue
        add("conv1d", shape=(length, int(rng.choice(chans))), op=op, cout=int(rng.choice(chans)), k=k, s=s,
            pad=pad, bn=op in ("conv", "dw") and bool(rng.random() < 0.75), gap=bool(rng.random() < 0.3))  # fmt: skip
        n += 1
    for i in range(8):
        nb = int(rng.choice([2, 3, 4]))
        blocks = [str(rng.choice(["conv", "dwsep", "res"])) if b else "conv" for b in range(nb)]
        add("chain1d", shape=(int(rng.choice([20, 32, 40])), 1), blocks=blocks,
            widths=[int(rng.choice(chans[3:10])) for _ in range(nb)], pooled_gap=bool(i % 3 == 0))  # fmt: skip
    return specs


def holdout_specs() -> list[tuple[str, str, dict]]:
    """Whole models at widths neither the fit nor the tests use."""
    import models

    out: list[tuple[str, str, dict]] = []
    for arch, (_, widths) in {**models.BUILDERS, **models.BUILDERS_1D}.items():
        for keep in (0.75, 0.375):
            out.append((f"{arch}@{keep}", arch, {"widths": models.scaled(widths, keep)}))
    out.append(("mlp-100-48-24-10", "mlp", {"shape": None, "sizes": [100, 48, 24, 10], "softmax": True}))
    out.append(("branchy-c10", "branchy", {"shape": (14, 14, 1), "c": 10, "c2": 6, "name": "branchy"}))
    out.append(("chain-pooled-gap", "chain", {"shape": (24, 24, 1), "widths": [6, 12, 20], "pooled_gap": True,
                                              "name": "chain"}))  # fmt: skip
    out.append(("dwsep-chain", "chain", {"shape": (20, 20, 1), "widths": [10, 20, 28], "name": "dwnet",
                                         "blocks": ["conv", "dwsep", "dwsep"]}))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------

_TAIL = re.compile(r"Arena allocation tail (\d+) bytes")
_HEAD = re.compile(r"Arena allocation head (\d+) bytes")


def convert_spec(kind: str, params: dict, seed: int) -> bytes:
    from tflite_export.convert import to_tflite_int8

    model = randomize(build(kind, params), seed)
    shape = tuple(model.inputs[0].shape[1:])
    x = np.random.default_rng(seed).normal(0, 1, (16, *shape)).astype("float32")
    return to_tflite_int8(model, x, check=False, int8_io=not params.get("float_io", False))


def measure_arena(tflite: bytes) -> dict:
    from tflite_export.console import capture_output
    from tflite_export.micro import tflm_interpreter, tflm_min_arena

    searched, reported = tflm_min_arena(tflite)
    interp = tflm_interpreter(tflite, max(1 << 16, 4 * searched))
    with capture_output() as captured:
        interp.print_allocations()
    del interp
    text = captured.getvalue()
    tail, head = _TAIL.search(text), _HEAD.search(text)
    return {
        "arena": searched,
        "reported": reported,
        "tail": int(tail.group(1)) if tail else None,
        "head": int(head.group(1)) if head else None,
    }


def input_sample(tflite: bytes, seed: int) -> np.ndarray:
    from tflite_export.flatbuffer import summarize

    s = summarize(tflite)
    dtype = np.int8 if s.input_types[0] == "INT8" else np.float32
    rng = np.random.default_rng(seed)
    if dtype == np.int8:
        return rng.integers(-128, 128, s.input_shapes[0]).astype(np.int8)
    return rng.normal(0, 1, s.input_shapes[0]).astype(np.float32)


def measure(specs: list[tuple[str, str, dict]], cache: Path | None, chunk: int = 70) -> list[dict]:
    """Convert, then measure flash, arena and (in batched valgrind runs) instructions."""
    from tflite_export.micro import count_instructions_many

    records: list[dict] = []
    todo: list[dict] = []
    for i, (name, kind, params) in enumerate(specs):
        key = hashlib.sha1(json.dumps([name, kind, params], sort_keys=True).encode()).hexdigest()[:10]
        path = cache / f"{name}-{key}.tflite" if cache else None
        meta = cache / f"{name}-{key}.json" if cache else None
        if path is not None and meta is not None and path.exists() and meta.exists():
            rec = json.loads(meta.read_text())
            rec["tflite"] = path.read_bytes()
            records.append(rec)
            continue
        tfl = convert_spec(kind, params, seed=1000 + i)
        rec = {
            "name": name,
            "kind": kind,
            "flash": len(tfl),
            **measure_arena(tfl),
            "tflite": tfl,
            "seed": i,
            "key": key,
        }
        records.append(rec)
        todo.append(rec)
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        items = [(r["tflite"], input_sample(r["tflite"], r["seed"]), max(1 << 16, 2 * r["arena"])) for r in part]
        counts = count_instructions_many(items)
        for r, c in zip(part, counts):
            r["instructions"] = int(c)
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
        for r in todo:
            (cache / f"{r['name']}-{r['key']}.tflite").write_bytes(r["tflite"])
            (cache / f"{r['name']}-{r['key']}.json").write_text(
                json.dumps({k: v for k, v in r.items() if k != "tflite"})
            )
    return records


def lowered(rec: dict) -> LoweredModel:
    from tflite_export.flatbuffer import lowered_model

    if "_lm" not in rec:
        rec["_lm"] = lowered_model(rec["tflite"])
    return rec["_lm"]


# ---------------------------------------------------------------------------------------------
# Fits
# ---------------------------------------------------------------------------------------------


def _kinds(records: list[dict]) -> list[str]:
    return sorted({op.kind for r in records for op in lowered(r).ops})


def fit_arena(records: list[dict]) -> dict:
    """Least squares for tail_base and tail_per_op[kind] on the measured tails (integers, rounded)."""
    kinds = _kinds(records)
    probe = {"arena": {"tail_base": 0, "tail_io": 0, "tail_per_op": dict.fromkeys(kinds, 0), "tail_per_op_default": 0}}
    rows, target = [], []
    # per graph input/output: TfLiteTensor 64 + TfLiteAffineQuantization 24 + zero point array 8 + its pointer
    # in the 16-byte aligned input/output pointer array
    tail_io = 112
    for r in records:
        lm = lowered(r)
        t = hardware.tail_structure(lm, probe)
        known = t["static"] + t["channels"] + t["scratch"] + tail_io * (len(lm.inputs) + len(lm.outputs))
        rows.append([1.0] + [sum(op.kind == k for op in lm.ops) for k in kinds])
        target.append(r["tail"] - known)
    coef, *_ = np.linalg.lstsq(np.asarray(rows, float), np.asarray(target, float), rcond=None)
    per_op = {k: round(float(v)) for k, v in zip(kinds, coef[1:])}
    return {
        "tail_base": round(float(coef[0])),
        "tail_io": tail_io,
        "tail_per_op": per_op,
        "tail_per_op_default": max([*per_op.values(), 0]) + 16,
    }


def _name_bytes(rec: dict) -> int:
    from tflite_export.flatbuffer import tensor_name_bytes

    if "_names" not in rec:
        rec["_names"] = tensor_name_bytes(rec["tflite"])
    return rec["_names"]


def fit_flash(records: list[dict]) -> dict:
    """Structure by least squares on len - data - names; the name estimate on its own."""
    from tflite_export.flatbuffer import parse_model

    kinds = _kinds(records)
    feats = [k for k in hardware.FLASH_FEATURES if k != "data"]
    rows, target = [], []
    for r in records:
        lm = lowered(r)
        f = hardware.flash_features(lm)
        rows.append([1.0] + [f[k] for k in feats] + [sum(op.kind == k for op in lm.ops) for k in kinds])
        target.append(r["flash"] - f["data"] - _name_bytes(r))
    coef, *_ = np.linalg.lstsq(np.asarray(rows, float), np.asarray(target, float), rcond=None)
    out: dict = {"base": round(float(coef[0]), 1), "per": {k: round(float(v), 2) for k, v in zip(feats, coef[1:])}}
    out["per"]["data"] = 1.0
    out["per_op"] = {k: round(float(v), 1) for k, v in zip(kinds, coef[1 + len(feats) :])}
    out["per_op_default"] = max([*out["per_op"].values(), 0.0])

    # names: the graph input's and output's are the converter's (means over the models); the rest is
    # non-negative least squares on, per kind, the operators (their constants' names) and their
    # outputs that are not graph outputs (the output names)
    from scipy.optimize import nnls

    def io_names(r: dict) -> tuple[list[int], list[int]]:
        g = parse_model(r["tflite"]).subgraphs[0]
        size = [(4 + len(t.name or b"") + 1 + 3) // 4 * 4 for t in g.tensors]
        return [size[i] for i in g.inputs], [size[i] for i in g.outputs]

    ins, outs = zip(*(io_names(r) for r in records))
    a_in = float(np.mean([v for x in ins for v in x]))
    a_out = float(np.mean([v for x in outs for v in x]))
    rows, target = [], []
    for r in records:
        lm = lowered(r)
        counts = hardware.name_counts(lm)
        rows.append([counts["ops"].get(k, 0) for k in kinds] + [counts["outputs"].get(k, 0) for k in kinds])
        target.append(_name_bytes(r) - a_in * len(lm.inputs) - a_out * len(lm.outputs))
    c, _ = nnls(np.asarray(rows, float), np.asarray(target, float))
    per_op = {k: round(float(v), 1) for k, v in zip(kinds, c[: len(kinds)])}
    per_output = {k: round(float(v), 1) for k, v in zip(kinds, c[len(kinds) :])}
    seen = {k for r in records for k, n in hardware.name_counts(lowered(r))["outputs"].items() if n}
    for k in kinds:  # kinds never seen before another operator: the median output name
        if k not in seen:
            per_output[k] = round(float(np.median([per_output[j] for j in seen])), 1)
    out["names"] = {
        "input": round(a_in, 1),
        "output": round(a_out, 1),
        "per_op": per_op,
        "per_op_default": round(float(np.median(list(per_op.values()))), 1),
        "per_output": per_output,
        "per_output_default": round(float(np.median(list(per_output.values()))), 1),
    }
    return out


def fit_instructions(records: list[dict]) -> dict:
    """NNLS over all models: sum over ops of coef[kind] . regressors + invoke constant."""
    from scipy.optimize import nnls

    kinds = _kinds(records)
    columns: list[tuple[str, str]] = [("", "invoke")]
    for k in kinds:
        columns += [(k, f) for f in FEATURE_SETS.get(k, DEFAULT_FEATURES)]
    index = {c: i for i, c in enumerate(columns)}
    a = np.zeros((len(records), len(columns)))
    y = np.zeros(len(records))
    for i, r in enumerate(records):
        lm = lowered(r)
        a[i, 0] = 1.0
        for op in lm.ops:
            f = hardware.instruction_features(op, lm)
            for name in FEATURE_SETS.get(op.kind, DEFAULT_FEATURES):
                a[i, index[(op.kind, name)]] += f.get(name, 0.0)
        y[i] = r["instructions"]
    # relative errors matter: weight each model by 1 / measured count
    w = 1.0 / y
    coef, _ = nnls(a * w[:, None], y * w, maxiter=50 * a.shape[1])
    per_op: dict[str, dict[str, float]] = {}
    for (kind, name), v in zip(columns[1:], coef[1:]):
        if v > 0:
            per_op.setdefault(kind, {})[name] = round(float(v), 4)
    for k in kinds:
        per_op.setdefault(k, {})

    def per_element(c: dict[str, float]) -> float:
        return sum(c.get(k, 0.0) for k in ("in_elems", "out_elems", "taps_eff", "taps"))

    fallback = {
        "one": max(c.get("one", 0.0) for c in per_op.values()),
        "in_elems": max(per_element(c) for c in per_op.values()),
        "macs": max(c.get("macs", 0.0) + c.get("macs_eff", 0.0) for c in per_op.values()),
    }
    return {"invoke": round(float(coef[0]), 1), "per_op": per_op, "fallback": fallback}


FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "CONV_2D": ("one", "macs_eff", "taps_eff", "taps", "row_taps", "rows", "rows_eff", "out_elems", "out_pixels"),
    "DEPTHWISE_CONV_2D": ("one", "taps_eff", "taps", "row_taps", "rows", "rows_eff", "out_elems", "out_pixels"),
    "FULLY_CONNECTED": ("one", "macs", "out_elems", "in_elems"),
    "MAX_POOL_2D": ("one", "taps_eff", "rows_eff", "out_elems", "out_pixels"),
    "AVERAGE_POOL_2D": ("one", "taps_eff", "rows_eff", "out_elems", "out_pixels"),
    "MEAN": ("one", "in_elems", "out_elems"),
    "ADD": ("one", "out_elems", "bcast_elems"),
    "MUL": ("one", "out_elems", "bcast_elems"),
    "CONCATENATION": ("one", "out_elems", "copies"),
    "RESHAPE": ("one", "out_bytes"),
    "PAD": ("one", "out_elems", "in_elems", "out_pixels"),
    "SOFTMAX": ("one", "in_elems", "rows"),
    "QUANTIZE": ("one", "in_elems"),
    "DEQUANTIZE": ("one", "in_elems"),
}
DEFAULT_FEATURES = ("one", "in_elems", "out_elems", "macs")


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("tflite-micro", "tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def write_coefficients(coefficients: dict, n_models: int) -> None:
    v = coefficients["meta"]["versions"]
    tf_version = v.get("tensorflow-cpu", v.get("tensorflow", "?"))
    header = f'''"""Fitted constants of the hardware cost models (:mod:`keras_wgsef.budget.hardware`).

Generated by ``python benchmarks/calibrate_costs.py`` on {coefficients["meta"]["fitted"]}: {n_models} calibration models
converted to int8 TFLite with TensorFlow {tf_version} (Keras {v.get("keras", "?")}), measured with the TFLite Micro
Python runtime {v.get("tflite-micro", "?")} (reference kernels) on x86-64: flash = ``len(tflite)``, arena =
``tflm_min_arena`` and the allocator's reported tail, instructions = callgrind count of one ``Invoke()``.
Do not edit by hand: rerun the script after upgrading TensorFlow or tflite-micro.

* ``arena``: ``tail_base`` and ``tail_per_op`` by least squares on the reported persistent tails (bytes);
* ``flash``: ``base``, ``per`` and ``per_op`` by least squares on ``len(tflite)`` minus the constant data and the
  tensor names; ``names``: graph input/output name means and non-negative least squares per operator kind;
* ``instructions``: non-negative least squares over all models at once (relative errors), per operator kind and
  regressor of ``hardware.instruction_features``; ``fallback`` (unknown kinds): the largest costs.
"""

from typing import Any

# fmt: off
'''
    body = json.dumps(coefficients, indent=4, sort_keys=True)
    COEFF_PATH.write_text(header + "COEFFICIENTS: dict[str, Any] = " + body + "\n# fmt: on\n")


def hardware_tail(lm: LoweredModel, coefficients: dict) -> int:
    t = hardware.tail_structure(lm, coefficients)
    return t["static"] + t["channels"] + t["scratch"] + t["io"]


def report(records: list[dict], coefficients: dict, title: str, names_from: dict[str, int] | None = None) -> dict:
    print(f"\n{title}")
    print(f"{'model':24s} {'flash':>8s} {'pred':>8s} {'err%':>6s} | {'arena':>7s} {'pred':>7s} {'err%':>6s} | "
          f"{'instr':>11s} {'pred':>11s} {'err%':>6s}")  # fmt: skip
    worst = {"flash": 0.0, "arena": 0.0, "instructions": 0.0}
    for r in records:
        lm = lowered(r)
        nb = None if names_from is None else names_from.get(r["name"])
        p = hardware.predict(lm, coefficients, name_bytes=nb)
        e = {
            "flash": 100 * (p["flash_bytes"] / r["flash"] - 1),
            "arena": 100 * (p["arena_bytes"] / r["arena"] - 1),
            "instructions": 100 * (p["instructions"] / r["instructions"] - 1),
        }
        for k in worst:
            worst[k] = max(worst[k], abs(e[k]))
        print(f"{r['name']:24s} {r['flash']:8d} {p['flash_bytes']:8d} {e['flash']:+6.2f} | {r['arena']:7d} "
              f"{p['arena_bytes']:7d} {e['arena']:+6.2f} | {r['instructions']:11d} {p['instructions']:11d} "
              f"{e['instructions']:+6.2f}")  # fmt: skip
    print("max |error| %: " + ", ".join(f"{k} {v:.2f}" for k, v in worst.items()))
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=None, help="folder to keep converted models and measurements in")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite keras_wgsef/budget/coefficients.py")
    ap.add_argument("--show-fit", action="store_true", help="also print the calibration models' errors")
    args = ap.parse_args(argv)

    t0 = time.time()
    specs = calibration_specs()
    records = measure(specs, args.cache / "calib" if args.cache else None)
    print(f"measured {len(records)} calibration models in {time.time() - t0:.0f} s")
    coefficients = {
        "meta": {"fitted": datetime.date.today().isoformat(), "versions": versions(), "models": len(records)},
        "arena": fit_arena(records),
        "flash": fit_flash(records),
        "instructions": fit_instructions(records),
    }
    tail_res = [hardware_tail(lowered(r), coefficients) - r["tail"] for r in records]
    print(f"arena tail fit: max |residual| {max(map(abs, tail_res))} B over {len(records)} models")
    if args.show_fit:
        report(records, coefficients, "calibration models (fitted on)")
    t1 = time.time()
    holdout = measure(holdout_specs(), args.cache / "holdout" if args.cache else None)
    print(f"measured {len(holdout)} held-out models in {time.time() - t1:.0f} s")
    report(holdout, coefficients, "held-out models (not fitted on); flash with estimated tensor names")
    by_arch: dict[str, list[dict]] = {}
    for r in holdout:
        by_arch.setdefault(r["name"].split("@")[0], []).append(r)
    names_from = {
        r["name"]: _name_bytes(next(o for o in group if o is not r))
        for group in by_arch.values()
        if len(group) > 1
        for r in group
    }
    report([r for r in holdout if r["name"] in names_from], coefficients,
           "flash with the tensor names measured on the other width of the same architecture", names_from)  # fmt: skip
    if not args.no_write:
        write_coefficients(coefficients, len(records))
        importlib.invalidate_caches()
        print(f"wrote {COEFF_PATH.relative_to(ROOT)}")
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
