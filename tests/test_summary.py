"""What renders: ExportResult.summary(), BudgetPlan.summary(), the reports' Markdown, export progress."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import keras_wgsef as kw
from keras_wgsef.tables import format_table
from tflite_export.summary import LAYER_HEADER

pytestmark = pytest.mark.tensorflow_only


def _rows(text: str) -> list[list[str]]:
    """The rows of the first aligned-text table of ``text`` (cells split on runs of 2+ spaces)."""
    import re

    block = text.split("\n\n")[0]
    return [re.split(r"\s{2,}", line.strip()) for line in block.splitlines()]


def _num(cell: str) -> int:
    return int(cell.replace(",", ""))


@pytest.fixture(scope="module")
def exported():
    from tflite_export import export

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D(name="gap")(h))
    model = keras.Model(inp, out)
    k, b = model.get_layer("conv").get_weights()
    k[..., 5:] = 0.0  # 3 of the 8 filters are zero: shrink keeps 5
    b[5:] = 0.0
    model.get_layer("conv").set_weights([k, b])
    x = np.random.default_rng(0).random((32, 6, 6, 1), dtype=np.float32)
    return export(model, x, eval_data=(x, np.arange(32) % 3), latency=False, instructions=False, tflm_samples=8)


def test_export_summary_rows_are_the_shrink_reports_figures(exported):
    rows = _rows(exported.summary())
    assert tuple(rows[0]) == LAYER_HEADER
    conv = next(r for r in rows if r[0] == "conv")
    assert [_num(c) for c in conv[1:]] == [
        8,
        5,
        *exported.shrink_report.params["conv"],
        *exported.shrink_report.macs["conv"],
    ]
    assert [_num(c) for c in conv[1:3]] == list(exported.shrink_report.plan.widths["conv"])
    total = rows[-1]
    assert total[0] == "total" and [_num(c) for c in total[-4:]] == [
        *exported.shrink_report.params["total"],
        *exported.shrink_report.macs["total"],
    ]
    firmware = _rows(exported.summary().split("\n\n")[1])
    figures = dict(firmware[1:])
    r = exported.report
    assert _num(figures[".tflite bytes"]) == len(exported.tflite) == r.file_bytes
    assert _num(figures["TFLM arena bytes (minimal)"]) == r.tflm_arena_bytes
    assert figures["TFLM instructions / inference"] == "n/a"  # instructions=False
    assert float(figures["int8 accuracy % (TFLM)"]) == pytest.approx(100 * r.accuracy_tflm, abs=0.01)


def test_export_result_renders_the_same_rows_as_markdown(exported):
    md = exported._repr_markdown_()
    text = exported.summary()
    conv_md = next(line for line in md.splitlines() if line.startswith("| conv |"))
    conv_text = next(r for r in _rows(text) if r[0] == "conv")
    assert [c.strip() for c in conv_md.strip("|").split("|")] == conv_text
    assert md.count("|:---|") == 2  # the layers and the firmware figures


def test_report_and_shrink_report_render_as_markdown_tables(exported):
    report_md = exported.report._repr_markdown_()
    assert report_md.splitlines()[0] == f"| {exported.report.name} | value |"
    assert f"| .tflite bytes | {len(exported.tflite):,} |" in report_md
    shrink_md = exported.shrink_report._repr_markdown_()
    assert "| conv | 8 -> 5 |" in shrink_md


def test_budget_plan_summary_gives_each_scopes_widths_and_the_binding_bound():
    L = keras.layers
    x = keras.Input((8, 8, 1))
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="c1")(x)
    h = L.Conv2D(32, 3, padding="same", activation="relu", name="c2")(h)
    m = keras.Model(x, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(h)))
    plan = kw.BudgetPlan(m, kw.make_groups(m), kw.Budget(macs=0.25, arena_bytes=0.9))
    text = plan.summary()
    scopes = _rows(text)
    assert scopes[0] == ["scope", "dense width", "uniform width", "min width"]
    for i, (row, scope) in enumerate(zip(scopes[1:], plan.scopes)):
        assert row[0] == scope.name
        assert [_num(c) for c in row[1:]] == [
            scope.num_groups,
            int(plan.uniform[plan.segments == i].sum()),
            plan.min_keep[i],
        ]
    assert sum(_num(r[2]) for r in scopes[1:]) == plan.k
    bounds = {r[0]: r for r in _rows(text.split("\n\n")[1])[1:]}
    assert set(bounds) == {"macs", "arena_bytes"}
    assert [_num(c) for c in bounds["macs"][1:5]] == [
        plan.bounds["macs"],
        plan.dense["macs"],
        plan.predict(plan.uniform)["macs"],
        plan.floor["macs"],
    ]
    assert [r[5] for r in bounds.values()].count("yes") == 1 and bounds[plan.binding()][5] == "yes"
    assert plan._repr_markdown_().count("|:---|") == 2


def test_export_progress_names_each_stage_it_runs_in_order(capsys):
    from tflite_export import export

    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 4, 1))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp)))
    x = np.random.default_rng(0).random((16, 4, 4, 1), dtype=np.float32)
    export(model, x, eval_data=(x, np.arange(16) % 2), latency=False, arena=False, instructions=False, verbose=2)
    err = capsys.readouterr().err
    stages = [line.split("] ")[1].split(":")[0].rstrip(" .") for line in err.splitlines() if line.startswith("  [")]
    assert stages == ["shrink", "convert", "LiteRT", "TFLM accuracy"]
    export(model, x, latency=False, arena=False, instructions=False, verbose=1)
    out = capsys.readouterr().out
    assert "6/6" in out and "done" in out
    with pytest.raises(ValueError, match="verbose must be 0"):
        export(model, x, verbose=3)


def test_format_table_refuses_a_row_of_the_wrong_length():
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        format_table(["a", "b", "c"], [[1, 2]])
