"""The ``wgsef-export`` command: outputs that agree with each other, and its error paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tflite_export.cli import main
from tflite_export.firmware import parse_c_array
from tflite_export.flatbuffer import summarize
from tflite_export.measure import Report


def _cnn() -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same")(inp)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(10)(h))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    x = rng.random((120, 8, 8, 1), dtype=np.float32)
    _cnn().save(d / "cnn.keras")
    np.savez(d / "calib.npz", x=x[:80])
    np.save(d / "calib.npy", x[:80])
    np.savez(d / "eval.npz", x=x[80:], y=rng.integers(0, 10, 40))
    np.save(d / "wrong_shape.npy", x[:10, :7])
    np.save(d / "uint8.npy", (x[:10] * 255).astype(np.uint8))
    np.save(d / "empty.npy", x[:0])
    np.savez(d / "eval_no_y.npz", x=x[80:])
    (d / "corrupt.keras").write_bytes(b"this is not a zip archive")
    (d / "notes.txt").write_text("not an array")

    @keras.saving.register_keras_serializable(package="wgsef_test")
    class Doubler(keras.layers.Layer):
        def call(self, t):
            return t * 2.0

    inp = keras.Input((8, 8, 1))
    keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(Doubler()(inp)))).save(d / "custom.keras")
    keras.saving.get_custom_objects().pop("wgsef_test>Doubler")  # as in a fresh process

    inp = keras.Input((8, 8, 1))
    lam = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(lam))).save(d / "lambda.keras")

    inp = keras.Input((8, 8, 1))
    gelu = keras.layers.Dense(4, activation="gelu")(keras.layers.Flatten()(inp))
    keras.Model(inp, gelu).save(d / "gelu.keras")
    return {p.name: p for p in d.iterdir()}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_export_writes_consistent_outputs(files, tmp_path, capsys):
    out = tmp_path / "build"
    rc = main(
        [
            str(files["cnn.keras"]),
            "--calibration",
            str(files["calib.npz"]),
            "--eval",
            str(files["eval.npz"]),
            "--out",
            str(out),
            "--no-shrink",
            "--no-instructions",
            "--runs",
            "5",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "model_data.cc",
        "model_data.h",
        "model_int8.tflite",
        "report.json",
        "report.md",
    ]
    tfl = (out / "model_int8.tflite").read_bytes()
    assert parse_c_array((out / "model_data.cc").read_text()) == tfl
    report = Report.load(out / "report.json")
    assert report.file_bytes == len(tfl) and report.macs == summarize(tfl).macs
    assert f"g_model_arena_size = {report.tflm_arena_bytes}u;" in (out / "model_data.h").read_text()
    assert report.n_eval == 40 and report.float_accuracy is not None
    assert report.int8_vs_float_argmax_agreement >= 0.9
    assert report.tflm_vs_litert_max_lsb <= 2
    assert summarize(tfl).input_types == ("INT8",)
    assert "| .tflite bytes |" in (out / "report.md").read_text()
    assert "| .tflite bytes |" in capsys.readouterr().out
    assert _leftovers(tmp_path) == []
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # an ordinary folder, not mkdtemp's


def test_float_io_force_and_npy_calibration(files, tmp_path):
    out = tmp_path / "build"
    out.mkdir()
    (out / "old.txt").write_text("previous export")
    args = [
        str(files["cnn.keras"]),
        "--calibration",
        str(files["calib.npy"]),
        "--out",
        str(out),
        "--no-shrink",
        "--no-instructions",
        "--float-io",
        "--runs",
        "2",
        "--quiet",
    ]
    assert main(args) == 1  # non-empty folder without --force
    assert (out / "old.txt").exists()
    assert main([*args, "--force"]) == 0
    assert not (out / "old.txt").exists()
    assert summarize((out / "model_int8.tflite").read_bytes()).input_types == ("FLOAT32",)
    assert _leftovers(tmp_path) == []


def _half_dead(model: keras.Model) -> keras.Model:
    """Zero the WGSEF groups of half the channels of each conv (as training to k would)."""
    conv1, bn, conv2 = (model.get_layer(index=i) for i in (1, 2, 5))
    k, b = conv1.get_weights()
    k[..., 4:], b[4:] = 0.0, 0.0
    conv1.set_weights([k, b])
    gamma, beta, mean, var = bn.get_weights()
    gamma[4:], beta[4:] = 0.0, 0.0
    bn.set_weights([gamma, beta, mean, var])
    k, b = conv2.get_weights()
    k[..., 8:], b[8:] = 0.0, 0.0
    conv2.set_weights([k, b])
    return model


def test_export_with_shrink_and_dense_comparison(tmp_path):
    x = np.random.default_rng(1).random((60, 8, 8, 1), dtype=np.float32)
    _half_dead(_cnn()).save(tmp_path / "sparse.keras")
    np.save(tmp_path / "calib.npy", x)
    out = tmp_path / "build"
    rc = main(
        [
            str(tmp_path / "sparse.keras"),
            "--calibration",
            str(tmp_path / "calib.npy"),
            "--out",
            str(out),
            "--compare-dense",
            "--no-instructions",
            "--runs",
            "2",
            "--quiet",
        ]
    )
    assert rc == 0
    dense, shrunk = Report.load(out / "report_dense.json"), Report.load(out / "report.json")
    conv_macs = 8 * 8 * 8 * 9 + 4 * 4 * 16 * 9 * 8  # dense convolutions: 4,608 + 18,432
    assert dense.macs == conv_macs + 16 * 10
    assert shrunk.macs == 8 * 8 * 4 * 9 + 4 * 4 * 8 * 9 * 4 + 8 * 10  # half the channels
    assert shrunk.tflm_arena_bytes < dense.tflm_arena_bytes
    assert shrunk.file_bytes < dense.file_bytes
    assert shrunk.int8_vs_float_argmax_agreement >= 0.9
    md = (out / "report.md").read_text()
    assert "## dense vs shrunk" in md and "## shrink (Keras model)" in md


@pytest.mark.parametrize(
    ("model", "calib", "extra", "code", "message"),
    [
        ("missing.keras", "calib.npz", [], 2, "model file not found"),
        ("corrupt.keras", "calib.npz", [], 2, "corrupt or not a Keras archive"),
        ("notes.txt", "calib.npz", [], 2, "not a .keras"),
        (
            "custom.keras",
            "calib.npz",
            [],
            2,
            "custom object 'Doubler' (registered as 'wgsef_test>Doubler') that is not registered",
        ),
        ("lambda.keras", "calib.npz", [], 2, "--unsafe-load"),
        ("cnn.keras", "wrong_shape.npy", [], 2, "shape (10, 7, 8, 1) but the model expects (N, 8, 8, 1)"),
        ("cnn.keras", "uint8.npy", [], 2, "dtype uint8; it must be floating point"),
        ("cnn.keras", "empty.npy", [], 2, "calibration data is empty"),
        ("cnn.keras", "notes.txt", [], 2, "is not a .npy or .npz file"),
        ("cnn.keras", "nothere.npy", [], 2, "calibration file not found"),
        ("cnn.keras", "calib.npz", ["--eval", "EVAL_NO_Y"], 2, "needs arrays 'x' and 'y'"),
        ("gelu.keras", "calib.npz", [], 1, "operator GELU is not supported by TFLite Micro"),
        ("cnn.keras", "calib.npz", ["--array-name", "my-model"], 2, "is not a valid C identifier"),
        ("cnn.keras", "calib.npz", ["--multiple", "0"], 2, "must be >= 1"),
    ],
)
def test_error_paths(files, tmp_path, capsys, model, calib, extra, code, message):
    out = tmp_path / "build"
    path = lambda name: str(files.get(name, tmp_path / name))  # noqa: E731
    extra = [str(files["eval_no_y.npz"]) if e == "EVAL_NO_Y" else e for e in extra]
    rc = main(
        [
            path(model),
            "--calibration",
            path(calib),
            "--out",
            str(out),
            "--no-shrink",
            "--no-instructions",
            "--runs",
            "2",
            "--quiet",
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == code
    assert message in err
    assert len(err.splitlines()) == 1 and err.startswith("wgsef-export: error: ")
    assert "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_unsafe_load_flag_loads_lambda_models(files, tmp_path):
    out = tmp_path / "build"
    rc = main(
        [
            str(files["lambda.keras"]),
            "--calibration",
            str(files["calib.npz"]),
            "--out",
            str(out),
            "--no-shrink",
            "--no-instructions",
            "--runs",
            "2",
            "--quiet",
            "--unsafe-load",
        ]
    )
    assert rc == 0 and (out / "model_int8.tflite").exists()


def test_unwritable_output(files, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = main(
        [
            str(files["cnn.keras"]),
            "--calibration",
            str(files["calib.npz"]),
            "--out",
            str(blocker / "build"),
            "--no-shrink",
            "--quiet",
        ]
    )
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err
    rc = main(
        [
            str(files["cnn.keras"]),
            "--calibration",
            str(files["calib.npz"]),
            "--out",
            str(blocker),
            "--no-shrink",
            "--quiet",
        ]
    )
    assert rc == 1 and "is a file" in capsys.readouterr().err


def test_module_entry_point_and_exit_code(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run(
        [sys.executable, "-m", "tflite_export", "--help"], capture_output=True, text=True, env=env, check=False
    )
    assert run.returncode == 0 and "--calibration" in run.stdout and "--unsafe-load" in run.stdout
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tflite_export",
            str(tmp_path / "nope.keras"),
            "--calibration",
            "c.npz",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()  # (importing the package may log TensorFlow start-up lines)
    assert lines[-1] == f"wgsef-export: error: model file not found: {tmp_path / 'nope.keras'}; check the path"
    assert sum("wgsef-export" in ln for ln in lines) == 1 and "Traceback" not in run.stderr


def test_package_names_stay_functions_after_submodule_imports():
    """shrink, measure and export are modules named after their function; the package keeps the function."""
    import tflite_export
    from tflite_export.export import ExportResult  # noqa: F401  (imports the submodule first)
    from tflite_export.measure import Report as _Report  # noqa: F401
    from tflite_export.shrink import plan_shrink  # noqa: F401

    for name in ("shrink", "measure", "export"):
        value = getattr(tflite_export, name)
        assert callable(value) and value.__name__ == name and value.__module__ == f"tflite_export.{name}"


def test_multi_output_model_is_refused_up_front_as_bad_input(files, tmp_path, capsys):
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(inp)
    keras.Model(inp, [keras.layers.Dense(2)(h), keras.layers.Dense(3)(h)]).save(tmp_path / "two.keras")
    code = main([str(tmp_path / "two.keras"), "--calibration", str(files["calib.npz"]), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "the model has 2 outputs" in err and "model.outputs[i]" in err
    assert not (tmp_path / "o").exists()


def test_an_internal_error_exits_1_and_debug_shows_the_traceback(files, tmp_path, capsys, monkeypatch):
    import importlib

    export_module = importlib.import_module("tflite_export.export")  # the module (the package binds the function)

    def broken(*args, **kwargs):
        raise ValueError("setting an array element with a sequence")  # not the user's fault

    monkeypatch.setattr(export_module, "export", broken)
    argv = [str(files["cnn.keras"]), "--calibration", str(files["calib.npz"]), "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "unexpected ValueError" in err and "--debug" in err
    with pytest.raises(ValueError, match="array element"):
        main([*argv, "--debug"])


def test_force_never_replaces_a_folder_that_holds_an_input(files, tmp_path, capsys):
    folder = tmp_path / "work"
    folder.mkdir()
    model, calib = folder / "cnn.keras", folder / "calib.npz"
    model.write_bytes(files["cnn.keras"].read_bytes())
    calib.write_bytes(files["calib.npz"].read_bytes())
    code = main([str(model), "--calibration", str(calib), "--out", str(folder), "--force"])
    assert code == 2 and "contains the model file" in capsys.readouterr().err
    assert model.exists() and calib.exists()


def test_sigterm_during_export_leaves_no_temporary_folder(files, tmp_path, capsys, monkeypatch):
    import importlib
    import signal

    export_module = importlib.import_module("tflite_export.export")
    real = export_module.write_artefacts

    def killed(folder, *args, **kwargs):
        real(folder, *args, **kwargs)  # half the work is on disk when the signal comes
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(export_module, "write_artefacts", killed)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        out = tmp_path / "o"
        code = main([str(files["cnn.keras"]), "--calibration", str(files["calib.npz"]), "--out", str(out),
                     "--no-instructions", "--runs", "1"])  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def _budget_trained(loss: object = None) -> keras.Model:
    """The CNN trained with WGSEF(budget=Budget(macs=0.3)) on the 8x8 digits (3 epochs), BN recalibrated."""
    import keras_wgsef as kw

    (x, y), _ = kw.datasets.load_digits8x8()
    model = _cnn()
    opt = kw.WGSEF(keras.optimizers.SGD(0.05, momentum=0.9), budget=kw.Budget(macs=0.3), groups=kw.make_groups(model))
    model.compile(optimizer=opt, loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[kw.callbacks.ReachK(verbose=0)])
    kw.recalibrate_batchnorm(model, x)
    return model


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory) -> tuple[Path, Path, keras.Model]:
    import keras_wgsef as kw

    d = tmp_path_factory.mktemp("budget")
    model = _budget_trained()
    model.save(d / "budget.keras")
    (x, _), _ = kw.datasets.load_digits8x8()
    np.save(d / "calib.npy", x[:100])
    return d / "budget.keras", d / "calib.npy", model


def test_the_command_checks_a_saved_budget_as_the_python_call_does(budgeted, tmp_path, capsys):
    import tflite_export as te

    path, calib, model = budgeted
    args = [str(path), "--calibration", str(calib), "--no-instructions", "--runs", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "auto")]) == 0
    report = Report.load(tmp_path / "auto" / "report.json")
    bounds = model.optimizer.plan.bounds
    assert report.budget is not None and report.budget["bounds"] == bounds
    assert report.budget["measured"]["macs"] == report.macs <= bounds["macs"]
    loaded = keras.saving.load_model(path)  # what the Python call sees: the same check, the same model
    python = te.export(loaded, np.load(calib), latency=False, instructions=False)
    assert python.report.budget == report.budget
    assert (tmp_path / "auto" / "model_int8.tflite").read_bytes() == python.tflite
    assert main([*args, "--out", str(tmp_path / "none"), "--budget", "none"]) == 0
    skipped = Report.load(tmp_path / "none" / "report.json")
    assert skipped.budget is None and "budget check skipped (--budget none)" in skipped.notes
    # options that measure another model than the plan's are refused as bad input, with the way out
    assert main([*args, "--out", str(tmp_path / "mean"), "--keep-mean"]) == 2
    err = capsys.readouterr().err
    assert "cheaper_ops=True" in err and "--budget none" in err and not (tmp_path / "mean").exists()


def test_a_model_that_cannot_compile_is_loaded_without_it_and_says_so(budgeted, tmp_path, capsys):
    @keras.saving.register_keras_serializable(package="wgsef_test")
    def unregistered_loss(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)

    path, calib, _ = budgeted
    model = _budget_trained(unregistered_loss)
    model.save(tmp_path / "custom_loss.keras")
    keras.saving.get_custom_objects().pop("wgsef_test>unregistered_loss")  # as in a fresh process
    out = tmp_path / "o"
    argv = [str(tmp_path / "custom_loss.keras"), "--calibration", str(calib), "--out", str(out)]
    assert main([*argv, "--no-instructions", "--runs", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "wgsef-export: note: loaded without its training configuration (compile=False)" in err
    assert "unregistered_loss" in err
    report = Report.load(out / "report.json")
    assert report.budget is None and any(
        n.startswith("loaded without its training configuration") for n in report.notes
    )


def test_python_warnings_in_captured_output_reach_the_user_after_the_block():
    import re
    import warnings

    from tflite_export.console import capture_output

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with capture_output() as captured:
            os.write(2, b"I0000 noise from C++\n")
            warnings.warn("Skipping variable loading for optimizer", UserWarning, stacklevel=1)
            assert seen == []  # held back while the output is captured
        with pytest.raises(RuntimeError), capture_output():
            warnings.warn("said before a failure", DeprecationWarning, stacklevel=1)
            raise RuntimeError("boom")
    assert "noise from C++" in captured.getvalue()
    assert [(w.category, str(w.message)) for w in seen] == [
        (UserWarning, "Skipping variable loading for optimizer"),
        (DeprecationWarning, "said before a failure"),
    ]
    assert seen[0].filename == __file__  # where it was raised, not the console module
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("ignore")  # the user's filters still decide, by module too
        warnings.filterwarnings("default", category=DeprecationWarning, module=re.escape(__name__))
        with capture_output():
            warnings.warn("hidden", UserWarning, stacklevel=1)
            warnings.warn("shown: a filter lets this module's deprecations through", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["shown: a filter lets this module's deprecations through"]


def test_version_prints_every_tool_on_stdout_and_exits_0(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "keras-wgsef",
        "keras",
        "tensorflow",
        "ai-edge-litert",
        "tflite-micro",
    ]
    assert lines[1] == f"keras {metadata.version('keras')}" and out.err == ""


def _fast_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        str(files["cnn.keras"]),
        "--calibration",
        str(files["calib.npz"]),
        "--eval",
        str(files["eval.npz"]),
        "--out",
        str(out),
        "--no-latency",
        *extra,
    ]


def test_json_is_report_json_and_the_python_apis_report(files, tmp_path, capsys):
    import json

    from tflite_export import export
    from tflite_export.versions import tool_versions

    out = tmp_path / "build"
    rc = main(_fast_args(files, out, "--json", "--no-arena", "--no-instructions", "--tflm-samples", "7"))
    assert rc == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # stdout holds the one JSON object and nothing else
    assert printed == json.loads((out / "report.json").read_text())
    assert printed["schema_version"] == 1 and printed["tools"] == tool_versions()
    assert printed["n_tflm"] == 7 and printed["accuracy_tflm"] is not None
    assert printed["tflm_arena_bytes"] is None and printed["litert_xnnpack_median_us"] is None
    assert printed["tflm_instructions"] is None and printed["latency_runs"] == 0
    assert "[2/6] convert" in captured.err and "[5/6] TFLM accuracy" in captured.err

    model = keras.saving.load_model(files["cnn.keras"])
    calib, ev = np.load(files["calib.npz"]), np.load(files["eval.npz"])
    api = export(
        model,
        calib["x"],
        eval_data=(ev["x"], ev["y"]),
        name="exported",
        latency=False,
        arena=False,
        instructions=False,
        tflm_samples=7,
    ).report.to_dict()
    assert set(api) == set(printed)
    for key in ("file_bytes", "params", "macs", "ops", "accuracy_litert", "accuracy_tflm", "n_eval", "n_tflm",
                "float_accuracy", "tflm_vs_litert_max_lsb", "tools", "schema_version"):  # fmt: skip
        assert printed[key] == api[key], key


def test_missing_valgrind_is_said_on_stderr_with_the_install_line(files, tmp_path, capsys, monkeypatch):
    import shutil

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "valgrind" else which(name, *a, **k))
    out = tmp_path / "build"
    assert main(_fast_args(files, out, "--no-arena", "--tflm-samples", "0", "--quiet")) == 0
    err = capsys.readouterr().err
    assert "instruction counts skipped: valgrind not found" in err and "apt-get install valgrind" in err
    report = Report.load(out / "report.json")
    assert report.tflm_instructions is None
    assert any(n.startswith("instruction count skipped") and "apt-get install valgrind" in n for n in report.notes)


def test_without_tflite_micro_the_command_exports_and_names_the_micro_extra(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tflite_micro", None)
    out = tmp_path / "build"
    assert main(_fast_args(files, out, "--quiet")) == 0
    err = capsys.readouterr().err
    assert "not measured: arena, instructions, TFLM accuracy" in err and 'pip install ".[micro]"' in err
    report = Report.load(out / "report.json")
    assert report.tflm_arena_bytes is None and report.accuracy_tflm is None and report.accuracy_litert is not None


def test_negative_tflm_samples_is_bad_input(files, tmp_path, capsys):
    assert main(_fast_args(files, tmp_path / "build", "--tflm-samples", "-1")) == 2
    assert "--tflm-samples must be >= 0" in capsys.readouterr().err
