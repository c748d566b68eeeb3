"""Hardware cost models (keras_wgsef.budget.hardware) against measurements on models the fit never saw.

The coefficients come from ``benchmarks/calibrate_costs.py`` (single-operator and small models);
here the three benchmark architectures (anchor, ResNet-8, DS-CNN) at full, half and quarter
widths, the anchor with its global average pooling lowered to AVERAGE_POOL_2D + RESHAPE, a
Dense-only model with Add and Concatenate and a CNN with a channel Concatenate are converted to
int8 TFLite, measured (``len``, ``tflm_min_arena``, callgrind instructions of one ``Invoke``) and
compared with ``hardware.predict(lowered_model(tflite))``:

* flash within 2 %, with the tensor-name bytes measured on *another width* of the same
  architecture (names come from the Keras layer and model names, not from the widths, and are
  not in the lowered graph: ``hardware.estimate_name_bytes`` only approximates them);
* arena within 10 %; instructions within 10 %.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tflite_micro")

import keras

from keras_wgsef.budget import hardware, memory_timeline
from keras_wgsef.budget.lowered import LoweredModel, Op, Tensor
from keras_wgsef.budget.lowering import lowering_template
from tflite_export.convert import to_tflite_int8
from tflite_export.flatbuffer import lowered_model, summarize, tensor_name_bytes
from tflite_export.micro import count_instructions_many, tflm_min_arena

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from models import ANCHOR_WIDTHS, BUILDERS_1D, DSCNN_WIDTHS, RESNET8_WIDTHS, anchor, dscnn, resnet8, scaled

L = keras.layers


def _randomize(model: keras.Model, seed: int) -> keras.Model:
    """Random kernels, biases and BatchNorm statistics: no all-zero bias, as after training."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):
            g, b, m, v = (w.shape for w in weights)
            new = [rng.uniform(0.5, 1.5, g), rng.normal(0, 0.2, b), rng.normal(0, 0.2, m), rng.uniform(0.5, 1.5, v)]
        else:
            new = [
                rng.normal(0, 0.2, w.shape)
                if w.ndim == 1
                else rng.normal(0, np.sqrt(2 / np.prod(w.shape[:-1])), w.shape)
                for w in weights
            ]
        layer.set_weights([np.asarray(w, "float32") for w in new])
    return model


def _anchor_pooled(widths):
    """The anchor with GlobalAveragePooling2D written as AveragePooling2D over the map + Reshape."""
    inp = keras.Input((28, 28, 1))
    h = inp
    for i, w in enumerate(widths):
        h = L.Conv2D(int(w), 3, padding="same", name=f"conv{i + 1}")(h)
        h = L.ReLU(name=f"relu{i + 1}")(L.BatchNormalization(name=f"bn{i + 1}")(h))
        if i < len(widths) - 1:
            h = L.MaxPooling2D(name=f"pool{i + 1}")(h)
    h = L.AveragePooling2D((7, 7), name="gap_pool")(h)
    h = L.Reshape((int(widths[-1]),), name="gap_reshape")(h)
    return keras.Model(inp, L.Dense(10, name="head")(h), name="anchor_pooled")


def _dense_add_concat(width):
    inp = keras.Input((40,))
    a = L.Dense(width, activation="relu", name="fc1")(inp)
    b = L.Dense(width, activation="relu", name="fc2")(a)
    c = L.Add(name="add")([a, b])
    d = L.Dense(width // 2, activation="relu", name="fc3")(c)
    e = L.Concatenate(name="cat")([c, d])
    out = L.Softmax(name="softmax")(L.Dense(10, name="head")(e))
    return keras.Model(inp, out, name="dense_net")


def _conv_concat(width):
    inp = keras.Input((16, 16, 1))

    def block(h, w, i):
        h = L.Conv2D(w, 3, padding="same", name=f"conv{i}")(h)
        return L.ReLU(name=f"relu{i}")(L.BatchNormalization(name=f"bn{i}")(h))

    x1 = block(inp, width, 1)
    x2 = block(x1, width, 2)
    h = L.MaxPooling2D(name="pool")(L.Concatenate(name="cat")([x1, x2]))
    h = L.GlobalAveragePooling2D(name="gap")(block(h, 2 * width, 3))
    return keras.Model(inp, L.Dense(10, name="head")(h), name="concat_cnn")


# family -> builders of the same architecture at several widths (names do not depend on the widths)
FAMILIES = {
    "anchor": [lambda k=k: anchor(scaled(ANCHOR_WIDTHS, k) if k < 1 else ANCHOR_WIDTHS) for k in (1, 0.5, 0.25)],
    "resnet8": [lambda k=k: resnet8(scaled(RESNET8_WIDTHS, k) if k < 1 else RESNET8_WIDTHS) for k in (1, 0.5, 0.25)],
    "dscnn": [lambda k=k: dscnn(scaled(DSCNN_WIDTHS, k) if k < 1 else DSCNN_WIDTHS) for k in (1, 0.5, 0.25)],
    "anchor_pooled": [lambda: _anchor_pooled(ANCHOR_WIDTHS), lambda: _anchor_pooled(scaled(ANCHOR_WIDTHS, 0.5))],
    "dense_net": [lambda: _dense_add_concat(32), lambda: _dense_add_concat(20)],
    "concat_cnn": [lambda: _conv_concat(8), lambda: _conv_concat(12)],
}
# the 1-D models (MNIST-1D): every Conv1D / pooling is EXPAND_DIMS, a 2-D operator and a RESHAPE
for _name, (_build, _widths) in BUILDERS_1D.items():
    FAMILIES[_name] = [lambda b=_build, w=_widths, k=k: b(scaled(w, k) if k < 1 else w) for k in (1, 0.5)]


@pytest.fixture(scope="module")
def measured():
    """Convert every model once; measure flash, arena and tensor-name bytes."""
    out = []
    for family, builders in FAMILIES.items():
        for i, build in enumerate(builders):
            model = _randomize(build(), seed=i)
            shape = tuple(model.inputs[0].shape[1:])
            x = np.random.default_rng(i).normal(0, 1, (16, *shape)).astype("float32")
            tfl = to_tflite_int8(model, x, check=False)
            out.append({
                "name": f"{family}[{i}]", "family": family, "tflite": tfl, "lm": lowered_model(tfl),
                "flash": len(tfl), "arena": tflm_min_arena(tfl)[0], "names": tensor_name_bytes(tfl),
                "model": model, "head": _planned_head(tfl),
            })  # fmt: skip
    for family in FAMILIES:  # tensor names measured on the next width of the same architecture
        group = [r for r in out if r["family"] == family]
        for j, r in enumerate(group):
            r["names_other"] = group[(j + 1) % len(group)]["names"]
    return out


def _planned_head(tflite: bytes) -> int:
    """The non-persistent bytes TFLM's planner laid out (``print_allocations``' "head")."""
    import re

    from tflite_export.console import capture_output
    from tflite_export.micro import tflm_interpreter

    interp = tflm_interpreter(tflite, 1 << 17)
    with capture_output() as captured:
        interp.print_allocations()
    return int(re.search(r"Arena allocation head (\d+) bytes", captured.getvalue()).group(1))


def _rel(pred: float, true: float) -> float:
    return abs(pred / true - 1)


def test_covers_the_op_kinds(measured):
    kinds = {op.kind for r in measured for op in r["lm"].ops}
    want = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "ADD"}
    assert want | {"CONCATENATION", "RESHAPE", "SOFTMAX"} <= kinds


def test_flash_within_2_percent(measured):
    errors = {r["name"]: _rel(hardware.predict_flash_bytes(r["lm"], name_bytes=r["names_other"]), r["flash"])
              for r in measured}  # fmt: skip
    assert max(errors.values()) <= 0.02, errors


def test_tensor_names_do_not_depend_on_the_widths(measured):
    # only the graph input's name carries a counter of Keras tensors (a few digits)
    assert all(abs(r["names_other"] - r["names"]) <= 8 for r in measured)


def test_arena_within_10_percent(measured):
    errors = {r["name"]: _rel(hardware.predict_arena_bytes(r["lm"]), r["arena"]) for r in measured}
    assert max(errors.values()) <= 0.10, errors


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instructions_within_10_percent(measured):
    items = []
    for i, r in enumerate(measured):
        shape = summarize(r["tflite"]).input_shapes[0]
        xq = np.random.default_rng(i).integers(-128, 128, shape).astype(np.int8)
        items.append((r["tflite"], xq, max(1 << 16, 2 * r["arena"])))
    counts = count_instructions_many(items)
    errors = {r["name"]: _rel(hardware.predict_instructions(r["lm"]), c) for r, c in zip(measured, counts)}
    assert max(errors.values()) <= 0.10, errors


def test_predict_returns_the_three_figures(measured):
    r = measured[0]
    p = hardware.predict(r["lm"], name_bytes=r["names_other"])
    assert p == {
        "flash_bytes": hardware.predict_flash_bytes(r["lm"], name_bytes=r["names_other"]),
        "arena_bytes": hardware.predict_arena_bytes(r["lm"]),
        "instructions": hardware.predict_instructions(r["lm"]),
    }


def test_lowered_model_reads_the_anchor(measured):
    r = next(o for o in measured if o["name"] == "anchor[0]")
    lm = r["lm"]
    assert lm.op_kinds == ["CONV_2D", "MAX_POOL_2D", "CONV_2D", "MAX_POOL_2D", "CONV_2D", "MEAN", "FULLY_CONNECTED"]
    assert [op.macs for op in lm.ops] == [op.macs for op in summarize(r["tflite"]).ops]
    assert sum(op.macs for op in lm.ops) == 1_919_872  # benchmarks/models.py: the anchor's MACs
    assert [op.window for op in lm.ops] == [9, 4, 9, 4, 9, 49, 1]
    assert [op.weight_elems for op in lm.ops] == [144, 0, 4608, 0, 18432, 0, 640]
    assert [op.bias_elems for op in lm.ops] == [16, 0, 32, 0, 64, 0, 10]
    assert [op.quant_channels for op in lm.ops] == [16, 0, 32, 0, 64, 0, 10]
    assert lm.tensors[lm.inputs[0]].shape == (28, 28, 1)
    assert lm.tensors[lm.outputs[0]].shape == (10,)
    assert [lm.tensors[op.outputs[0]].shape for op in lm.ops][:2] == [(28, 28, 16), (14, 14, 16)]
    assert all(t.dtype_bytes == 1 for t in lm.tensors.values())


def test_lowered_model_reads_pooled_gap_and_reshape(measured):
    lm = next(o for o in measured if o["name"] == "anchor_pooled[0]")["lm"]
    pool = next(op for op in lm.ops if op.kind == "AVERAGE_POOL_2D")
    assert pool.window == 49 and lm.tensors[pool.outputs[0]].shape == (1, 1, 64)
    assert "RESHAPE" in lm.op_kinds and "MEAN" not in lm.op_kinds


def _chain(sizes: list[tuple[int, ...]], kinds: list[str]) -> LoweredModel:
    tensors = {i: Tensor(i, s) for i, s in enumerate(sizes)}
    ops = [Op(k, (i,), (i + 1,)) for i, k in enumerate(kinds)]
    return LoweredModel(tensors, ops, (0,), (len(sizes) - 1,))


def test_plan_arena_by_hand():
    # 100 B -> 40 B -> 30 B -> 10 B: buffers 112, 48, 32, 16 (rounded up to 16 B). Largest first:
    # 112 at 0 (ops 0); 48 at 112 (ops 0-1); 32 (ops 1-2) collides with the 48 in time, not the
    # 112, so it goes to offset 0; 16 (op 2 to the end) beside the 32 at offset 32. Peak 160.
    lm = _chain([(100,), (40,), (30,), (10,)], ["FULLY_CONNECTED"] * 3)
    assert hardware.planner_buffers(lm) == [(112, 0, 0), (48, 0, 1), (32, 1, 2), (16, 2, 2)]
    assert hardware.plan_arena(lm) == 160
    # A residual: x (64 B) is read again by the ADD, so it lives through op 2.
    t = {0: Tensor(0, (4, 4, 4)), 1: Tensor(1, (4, 4, 8)), 2: Tensor(2, (4, 4, 4)), 3: Tensor(3, (4, 4, 4))}
    ops = [Op("CONV_2D", (0,), (1,)), Op("CONV_2D", (1,), (2,)), Op("ADD", (0, 2), (3,))]
    # 128 (ops 0-1) at 0; then the 64 B buffers, the last added first (TFLM reverses, then sorts
    # stably by size): the ADD output (op 2) does not meet the 128 in time: at 0; y (ops 1-2)
    # meets both: at 128; x (ops 0-2) meets all three: at 192. Peak 256.
    assert hardware.plan_arena(LoweredModel(t, ops, (0,), (3,))) == 256


def test_plan_arena_mean_scratch_buffers():
    # MEAN on int8 asks for an int32 accumulator per output element, the iteration index (4 x rank)
    # and the resolved axes: 16 x 4 = 64, 16 and 8 -> 16 (rounded up to 16), all during the MEAN.
    lm = _chain([(4, 4, 16), (16,)], ["MEAN"])
    assert hardware.planner_buffers(lm) == [(256, 0, 0), (16, 0, 0), (64, 0, 0), (16, 0, 0), (16, 0, 0)]
    assert hardware.plan_arena(lm) == 256 + 16 + 64 + 16 + 16


def test_unknown_operator_uses_the_conservative_fallback():
    known = _chain([(8, 8, 4), (8, 8, 4)], ["ADD"])
    unknown = _chain([(8, 8, 4), (8, 8, 4)], ["SOME_NEW_OP"])
    assert hardware.predict_instructions(unknown) > hardware.predict_instructions(known) > 0
    assert hardware.predict_arena_bytes(unknown) >= hardware.plan_arena(unknown)
    assert hardware.predict_flash_bytes(unknown) > 0


def test_stride_and_padding_are_read_from_the_shapes():
    # 3x3 SAME stride 2 on 8x8: rows/columns 1..7 of the taps at the bottom/right edge fall outside
    conv = _chain([(8, 8, 2), (4, 4, 3)], ["CONV_2D"])
    op = conv.ops[0]
    conv.ops[0] = Op("CONV_2D", op.inputs, op.outputs, macs=4 * 4 * 3 * 9 * 2, window=9)
    f = hardware.instruction_features(conv.ops[0], conv)
    assert f["macs_eff"] == pytest.approx(f["macs"] * (11 / 12) ** 2)  # 11 of 12 (out, tap) pairs per axis


def test_memory_timeline_peak_is_what_tflm_plans(measured):
    """The timeline's peak is the head TFLM's planner lays out, operator by operator the same from the
    Keras model (what the budget sees) as from the converted file; plus the tail it is the arena."""
    for r in measured:
        tl = memory_timeline(r["lm"])
        assert tl.peak == hardware.plan_arena(r["lm"]) == r["head"], r["name"]
        assert tl.peak_op.high == tl.peak and all(o.high <= tl.peak for o in tl)
        assert tl.arena == hardware.predict_arena_bytes(r["lm"]) >= tl.peak + tl.persistent
        if r["family"] in ("anchor", "resnet8", "dscnn", *BUILDERS_1D):  # chains: the converter keeps Keras' order
            # the same buffers live at every operator; where buffers of equal size tie, the planner's
            # order (tensor ids) may lay them out differently between operators, not at the peak
            keras_side = memory_timeline(lowering_template(r["model"]).lower())
            assert [(o.kind, o.live_bytes) for o in keras_side] == [(o.kind, o.live_bytes) for o in tl], r["name"]
            assert keras_side.peak == tl.peak, r["name"]
    # the 1-D models' peak: where the widest full-length signals are live together
    tl = memory_timeline(next(r["lm"] for r in measured if r["name"] == "resnet8_1d[0]"))
    assert tl.peak + tl.persistent == tl.arena  # the planned arena, not a Prepare, sets it
    assert all(len(b.shape) < 2 or b.shape[-2] == 40 for b in tl.peak_op.live if b.tensor is not None)
