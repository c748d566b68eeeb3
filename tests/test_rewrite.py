"""Cheaper operators: GlobalAveragePooling as AVERAGE_POOL_2D instead of MEAN, same outputs, fewer instructions."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

keras: Any = pytest.importorskip("keras")
pytest.importorskip("tflite_micro")

from anchor_model import anchor_cnn
from digits_cnn import digits_cnn, digits_xy

import tflite_export
from keras_wgsef.graph.model_graph import flatten_model
from tflite_export.cli import build_parser
from tflite_export.convert import to_tflite_int8
from tflite_export.export import export
from tflite_export.flatbuffer import summarize
from tflite_export.litert import check_agreement
from tflite_export.measure import Report
from tflite_export.micro import count_instructions_many, run_tflm
from tflite_export.rewrite import cheaper_ops, int8_difference
from tflite_export.shrink import plan_shrink

L = keras.layers
# what one rewritten GlobalAveragePooling2D(keepdims=False) becomes in the .tflite: Keras' Reshape keeps
# the batch dimension dynamic, so the converter emits SHAPE -> STRIDED_SLICE -> PACK for the new shape
GAP_OPS = ["AVERAGE_POOL_2D", "SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE"]


def _randomize_bn(model: Any, seed: int = 0) -> Any:
    """Non-trivial BatchNorm statistics, so the check compares more than a fresh model's outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([1 + 0.2 * rng.standard_normal(g.shape), 0.2 * rng.standard_normal(b.shape),
                               0.1 * rng.standard_normal(m.shape), 0.5 + rng.random(v.shape)])  # fmt: skip
    return model


def _anchor(widths: tuple[int, int, int], seed: int = 0) -> Any:
    """The anchor CNN of benchmarks/models.py (Functional, layer names conv1/bn1/.../gap/head)."""
    keras.utils.set_random_seed(seed)
    inp = h = keras.Input((28, 28, 1))
    for i, w in enumerate(widths):
        h = L.Conv2D(w, 3, padding="same", name=f"conv{i + 1}")(h)
        h = L.BatchNormalization(name=f"bn{i + 1}")(h)
        h = L.ReLU(name=f"relu{i + 1}")(h)
        if i < len(widths) - 1:
            h = L.MaxPooling2D(name=f"pool{i + 1}")(h)
    out = L.Dense(10, name="head")(L.GlobalAveragePooling2D(name="gap")(h))
    return _randomize_bn(keras.Model(inp, out, name="anchor_cnn"), seed)


def _snapshot(model: Any) -> tuple[str, list[np.ndarray], list[int]]:
    cfg = json.dumps(keras.saving.serialize_keras_object(model), sort_keys=True, default=str)
    return cfg, [w.copy() for w in model.get_weights()], [id(layer) for layer in model.layers]


def _unchanged(model: Any, snap: tuple[str, list[np.ndarray], list[int]]) -> bool:
    cfg, weights, ids = _snapshot(model)
    return (cfg, ids) == (snap[0], snap[2]) and all(np.array_equal(a, b) for a, b in zip(weights, snap[1]))


def _outputs(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False), np.float64)


@pytest.fixture(scope="module")
def x28() -> np.ndarray:
    return np.random.default_rng(0).random((200, 28, 28, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def anchors(x28) -> dict[tuple[int, int, int], tuple[bytes, bytes]]:
    """The anchor CNN at three widths, int8 without (MEAN) and with the rewrite (AVERAGE_POOL_2D)."""
    out = {}
    for widths in ((16, 32, 64), (8, 16, 32), (4, 8, 16)):
        model = _anchor(widths)
        fast, _ = cheaper_ops(model, x28[:16])
        out[widths] = to_tflite_int8(model, x28, check=False), to_tflite_int8(fast, x28, check=False)
    return out


def test_anchor_sequential_rewrite(x28):
    model = _randomize_bn(anchor_cnn())
    snap = _snapshot(model)
    fast, lines = cheaper_ops(model, x28[:16])
    assert lines == [
        "gap: GlobalAveragePooling2D over 7x7x64 -> AveragePooling2D((7, 7)) gap_avgpool + Reshape((64,)) gap"
    ]
    assert _unchanged(model, snap) and type(model.get_layer("gap")) is L.GlobalAveragePooling2D
    names = [layer.name for layer in model.layers]
    assert [layer.name for layer in fast.layers] == [*names[:-2], "gap_avgpool", "gap", "dense"]
    pool, reshape = fast.get_layer("gap_avgpool"), fast.get_layer("gap")
    assert type(pool) is L.AveragePooling2D and tuple(pool.pool_size) == (7, 7) and pool.padding == "valid"
    assert type(reshape) is L.Reshape and tuple(reshape.target_shape) == (64,)
    for name in names:  # same weights, not the same variables
        old, new = model.get_layer(name).weights, fast.get_layer(name).weights
        assert all(np.array_equal(a.numpy(), b.numpy()) and a is not b for a, b in zip(old, new))
    y0, y1 = _outputs(model, x28), _outputs(fast, x28)
    assert np.max(np.abs(y0 - y1)) <= 1e-5 * max(1.0, np.max(np.abs(y0)))
    # the flat graph keeps every layer path (shrink and the cost model read it)
    assert set(flatten_model(model).layers) <= set(flatten_model(fast).layers)
    plan_shrink(fast)


def test_anchor_int8_ops_and_predictions(anchors, x28):
    for widths, (plain, fast) in anchors.items():
        model = _anchor(widths)
        fast_model, _ = cheaper_ops(model, x28[:16])
        ops_plain, ops_fast = summarize(plain).op_names, summarize(fast).op_names
        assert "MEAN" in ops_plain and "AVERAGE_POOL_2D" not in ops_plain
        assert "MEAN" not in ops_fast
        assert ops_fast == ops_plain[: ops_plain.index("MEAN")] + GAP_OPS + ["FULLY_CONNECTED"]
        # AVERAGE_POOL_2D keeps its input's quantization step, MEAN gets its own (finer) one: the outputs
        # differ by a few LSB (measured: max 2-3, mean 0.3-0.5) and are about as far from the float model
        # (measured 2.6 vs 2.3 output steps at 16/32/64). The untrained anchors have near-ties between
        # classes, so argmax is no check here (the trained export test checks the predictions).
        lsb, _ = int8_difference(fast, plain, x28)
        assert lsb <= 4
        assert check_agreement(fast_model, fast, x28).max_diff_steps <= 2 * (
            check_agreement(model, plain, x28).max_diff_steps + 1
        )
        tflm = run_tflm(fast, x28[:20]).astype(np.int64) - run_tflm(plain, x28[:20])
        assert np.abs(tflm).max() <= 4


def test_instruction_count_drops(anchors):
    """One callgrind process counts the three anchors with MEAN and with AVERAGE_POOL_2D."""
    import shutil

    if shutil.which("valgrind") is None:
        pytest.skip("valgrind not installed")
    items = [(t, np.zeros((1, 28, 28, 1), np.int8), None) for pair in anchors.values() for t in pair]
    counts = count_instructions_many(items)
    saved = {}
    for i, widths in enumerate(anchors):
        before, after = counts[2 * i], counts[2 * i + 1]
        saved[widths] = before - after
        # the MEAN kernel costs ~100 host instructions per input element more than the pooling
        assert before - after >= 50 * 7 * 7 * widths[-1], (widths, before, after)
    print("TFLM instructions saved:", saved)


def test_nested_models_and_keepdims():
    keras.utils.set_random_seed(1)
    features = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(8, 3, padding="same", name="conv"), L.GlobalAveragePooling2D(name="gap")],
        name="features",
    )
    b_in = keras.Input((8, 8, 3))
    b_out = L.GlobalAveragePooling2D(keepdims=True, name="gap")(L.Conv2D(4, 1, name="conv")(b_in))
    block = keras.Model(b_in, b_out, name="block")
    inp = keras.Input((8, 8, 3))
    h = L.Concatenate(name="cat")([features(inp), L.Flatten(name="flat")(block(inp))])
    model = keras.Model(inp, L.Dense(5, name="head")(h))
    x = np.random.default_rng(1).random((64, 8, 8, 3), dtype=np.float32)
    snap = _snapshot(model)
    fast, lines = cheaper_ops(model, x[:8])
    assert _unchanged(model, snap)
    assert sorted(lines) == [
        "block/gap: GlobalAveragePooling2D over 8x8x4 -> AveragePooling2D((8, 8)) gap",
        "features/gap: GlobalAveragePooling2D over 8x8x8 -> AveragePooling2D((8, 8)) gap_avgpool + Reshape((8,)) gap",
    ]
    flat = flatten_model(fast).layers
    assert type(flat["features/gap"]) is L.Reshape and type(flat["features/gap_avgpool"]) is L.AveragePooling2D
    assert type(flat["block/gap"]) is L.AveragePooling2D and "block/gap_avgpool" not in flat
    assert np.allclose(_outputs(model, x), _outputs(fast, x), rtol=0, atol=1e-5)
    plain, quick = to_tflite_int8(model, x, check=False), to_tflite_int8(fast, x, check=False)
    assert summarize(plain).op_names.count("MEAN") == 2
    ops = summarize(quick).op_names
    assert "MEAN" not in ops and ops.count("AVERAGE_POOL_2D") == 2
    # (no int8 output comparison: with i.i.d. random pixels the averages are nearly constant, so MEAN's
    # output step is much finer than the features' step that AVERAGE_POOL_2D keeps; see record_saving)


def test_1d_and_layers_left_alone():
    keras.utils.set_random_seed(2)
    seq = keras.Sequential(
        [keras.Input((20, 3)), L.Conv1D(6, 3, name="conv"), L.GlobalAveragePooling1D(name="gap"), L.Dense(2, name="d")]
    )
    x = np.random.default_rng(2).random((64, 20, 3), dtype=np.float32)
    fast, lines = cheaper_ops(seq)
    assert lines == ["gap: GlobalAveragePooling1D over 18x6 -> AveragePooling1D(18) gap_avgpool + Reshape((6,)) gap"]
    assert np.allclose(_outputs(seq, x), _outputs(fast, x), rtol=0, atol=1e-5)
    ops = summarize(to_tflite_int8(fast, x, check=False)).op_names
    assert "MEAN" not in ops and "AVERAGE_POOL_2D" in ops
    # a name already taken gets a suffix
    taken = keras.Sequential(
        [keras.Input((4, 4, 2)), L.Conv2D(3, 1, name="gap_avgpool"), L.GlobalAveragePooling2D(name="gap")]
    )
    fast, _ = cheaper_ops(taken)
    assert [layer.name for layer in fast.layers] == ["gap_avgpool", "gap_avgpool_1", "gap"]
    # nothing to rewrite: the model itself comes back, with a line per global pooling that stays
    dynamic = keras.Sequential([keras.Input((None, None, 3)), L.GlobalAveragePooling2D(name="gap")])
    first = keras.Sequential([keras.Input((3, 4, 4)), L.GlobalAveragePooling2D(data_format="channels_first")])
    for model, why in ((dynamic, "is not static"), (first, "data_format channels_first")):
        same, lines = cheaper_ops(model)
        assert same is model and len(lines) == 1 and lines[0].startswith("kept ") and why in lines[0]
    masked = keras.Sequential([keras.Input((5,)), L.Embedding(10, 4, mask_zero=True), L.GlobalAveragePooling1D()])
    assert cheaper_ops(masked)[0] is masked


def test_export_uses_and_reports_the_rewrite(tmp_path):
    import shutil

    x, y = digits_xy()
    model = digits_cnn((16, 32))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1400], y[:1400], epochs=10, batch_size=32, verbose=0)
    counted = shutil.which("valgrind") is not None
    data: dict[str, Any] = {"eval_data": (x[1400:], y[1400:]), "latency": False, "tflm_samples": 50}
    fast = export(model, x[:300], instructions=counted, **data)
    report = fast.report
    assert "MEAN" not in report.ops and "AVERAGE_POOL_2D" in report.ops
    assert len(report.rewrites) == 1 and "-> AveragePooling2D((4, 4))" in report.rewrites[0]
    assert any("cheaper operator: " in line for line in report.to_markdown().splitlines())
    note = next(n for n in report.notes if n.startswith("int8 with vs without cheaper operators"))
    lsb = int(note.split("max diff ")[1].split(" LSB")[0])
    agreement = float(note.split("argmax agreement ")[1].split(" %")[0])
    assert lsb <= 8 and agreement >= 99.0  # a trained model: the predictions agree (measured 4 LSB, 100 %)
    assert "output steps with" in note and "int8 accuracy without them" in note
    if counted:
        assert report.tflm_instructions_without_rewrite > report.tflm_instructions > 0
        assert any(n.startswith("cheaper operators save ") for n in report.notes)
        assert "without the op rewrite" in report.to_markdown()
    report.save(tmp_path / "r.json")
    assert Report.load(tmp_path / "r.json") == report
    keep = export(model, x[:300], arena=False, instructions=False, cheaper_ops=False, **data)
    assert "MEAN" in keep.report.ops and keep.report.rewrites == []
    assert abs(report.accuracy_litert - keep.report.accuracy_litert) <= 0.01
    assert int8_difference(fast.tflite, keep.tflite, x[1400:]) == (lsb, agreement / 100)
    assert keep.report.tflm_instructions_without_rewrite is None
    assert "without the op rewrite" not in keep.report.to_markdown()
    assert build_parser().parse_args(["m.keras", "--calibration", "c.npy", "--out", "o", "--keep-mean"]).keep_mean
    assert tflite_export.cheaper_ops is cheaper_ops


def _conv1d_stack(length: int = 40, keepdims: bool = False, seed: int = 3) -> Any:
    """``Input((length, 1)) -> [Conv1D(16, 3, same)/BatchNorm/ReLU] x4 -> GlobalAveragePooling1D -> Dense(10)``.

    Functional: each call's keyword arguments are in the config (``{"mask": None}`` for the pooling).
    """
    keras.utils.set_random_seed(seed)
    inp = h = keras.Input((length, 1))
    for i in range(4):
        h = L.ReLU(name=f"relu{i}")(L.BatchNormalization(name=f"bn{i}")(L.Conv1D(16, 3, padding="same")(h)))
    h = L.GlobalAveragePooling1D(keepdims=keepdims, name="gap")(h)
    if keepdims:
        h = L.Flatten(name="flat")(h)
    return _randomize_bn(keras.Model(inp, L.Dense(10, name="head")(h)), seed)


def test_functional_1d_rewrite_drops_the_none_mask_argument():
    x = np.random.default_rng(3).random((64, 40, 1), dtype=np.float32)
    for keepdims, line in (
        (False, "gap: GlobalAveragePooling1D over 40x16 -> AveragePooling1D(40) gap_avgpool + Reshape((16,)) gap"),
        (True, "gap: GlobalAveragePooling1D over 40x16 -> AveragePooling1D(40) gap"),
    ):
        model = _conv1d_stack(keepdims=keepdims)
        node = next(lc for lc in model.get_config()["layers"] if lc["config"]["name"] == "gap")["inbound_nodes"][0]
        assert node["kwargs"] == {"mask": None}  # a kwarg the rewrite must not pass on to AveragePooling1D
        snap = _snapshot(model)
        fast, lines = cheaper_ops(model, x[:8])
        assert lines == [line] and _unchanged(model, snap)
        assert type(fast.get_layer("gap")) is (L.AveragePooling1D if keepdims else L.Reshape)
        y0, y1 = _outputs(model, x), _outputs(fast, x)
        assert np.max(np.abs(y0 - y1)) <= 1e-5 * max(1.0, np.max(np.abs(y0)))


def test_a_pooling_called_with_a_real_mask_is_kept_and_a_lost_argument_is_refused():
    from tflite_export.rewrite import RewriteError, call_kwargs

    keras.utils.set_random_seed(4)
    inp, mask = keras.Input((6, 3)), keras.Input((6,), dtype="bool")
    h = L.GlobalAveragePooling1D(name="gap")(L.Conv1D(4, 1, name="conv")(inp), mask=mask)
    model = keras.Model([inp, mask], L.Dense(2, name="head")(h))
    same, lines = cheaper_ops(model)
    assert same is model
    assert lines == [
        "kept gap (GlobalAveragePooling1D): it is called with a mask (a masked average is not a plain one)"
    ]
    # the rule every replaced call goes through: None and an unused `training` go, a real value is refused
    pool = L.AveragePooling1D
    assert call_kwargs({"mask": None, "training": True}, "block/gap", "GlobalAveragePooling1D", pool) == {}
    tensor = {"class_name": "__keras_tensor__", "config": {"shape": [None, 6], "keras_history": ["m", 0, 0]}}
    with pytest.raises(RewriteError, match=r"layer 'block/gap' \(GlobalAveragePooling1D\) .* called with a mask"):
        call_kwargs({"mask": tensor}, "block/gap", "GlobalAveragePooling1D", pool)
    with pytest.raises(RewriteError, match=r"'gap' .* the argument scale=2"):
        call_kwargs({"scale": 2}, "gap", "GlobalAveragePooling1D", pool)
    assert call_kwargs({"training": False}, "bn", "BatchNormalization", L.BatchNormalization) == {"training": False}
