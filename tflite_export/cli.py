"""``wgsef-export``: shrink a WGSEF-trained Keras model, convert it to int8 and measure it.

Usage::

    wgsef-export model.keras --calibration calib.npz --eval test.npz --out build/

writes into ``build/``: ``model_int8.tflite``, ``model_data.cc``/``model_data.h`` (aligned C
array with the length and the measured TFLM arena size), ``report.json`` and
``report.md``. Everything is written to a temporary folder next to ``--out`` and moved into
place at the end, so a failure leaves no half-written output. ``GlobalAveragePooling`` layers
are exported as ``AVERAGE_POOL_2D`` over the whole map instead of ``MEAN`` (same values, an
optimized TFLite Micro kernel; the report gives the instruction saving); ``--keep-mean`` keeps
``MEAN``.

Output: the Markdown report on stdout, progress (one line per stage) on stderr; ``--json`` prints
the report as one JSON object instead (``report.json``'s content: the figures, ``schema_version``
and the versions of the tools in ``tools``). ``--version`` prints those versions. ``--no-latency``,
``--no-arena``, ``--no-instructions`` and ``--tflm-samples N`` are :func:`tflite_export.export`'s
``latency``, ``arena``, ``instructions`` and ``tflm_samples``. Without tflite-micro (the ``micro``
extra) or valgrind the figures that need them are skipped, and a note on stderr says how to install them.

Data files: ``--calibration`` is a ``.npy`` array or an ``.npz`` holding it under ``x`` (or
its only array), preprocessed exactly as for training; ``--eval`` is an ``.npz`` with ``x``
and ``y``; ``--labels`` is a ``.npy`` of labels for the calibration samples (accuracy is
then measured on those).

The model is loaded with its training configuration (``compile=True``), as :func:`tflite_export.export`
sees a model in Python: a model trained with ``WGSEF(budget=...)`` is checked against that budget as
measured, and repaired if a bound is broken (``--budget none`` skips the check). A model whose training
configuration cannot be restored (e.g. a custom loss that is not registered) is loaded without it
(``compile=False``); a note on stderr and in the report says so, and no budget is checked.

Exit codes: 0 success; 2 bad input, one line (arguments, model file, data files, a model with
several inputs or outputs, a budget that cannot be met); 1 a step failed (conversion,
unsupported operator, writing the output) or an unexpected error (``--debug`` shows its
traceback); 130 interrupted (Ctrl-C or SIGTERM: nothing is written and the temporary folder is
removed; after SIGKILL a hidden ``.<out>.tmp-*`` folder next to ``--out`` may remain: delete it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ExportError", "build_parser", "main"]

PROG = "wgsef-export"


class ExportError(Exception):
    """A failure with a one-line message for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class _Version(argparse.Action):
    """``--version``: one ``name version`` line per tool (unwrapped, so scripts can parse it)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from tflite_export.versions import tool_versions

        lines = [f"{name} {version or 'not installed'}" for name, version in tool_versions().items()]
        print("\n".join(lines))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``wgsef-export``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Shrink a WGSEF-trained Keras model, convert it to full-integer int8 TFLite, "
        "check it on LiteRT and TFLite Micro, and write firmware files and a report.",
        epilog="Exit codes: 0 success, 2 bad input, 1 a failed step or an unexpected error (--debug shows the "
        "traceback), 130 interrupted (Ctrl-C or SIGTERM: nothing is written). After SIGKILL a hidden "
        "'.<out>.tmp-*' folder next to --out may remain: delete it.",
    )
    p.add_argument(
        "--version", action=_Version, help="print the versions of keras-wgsef and the tools it runs, and exit"
    )
    p.add_argument("model", help="the trained model (.keras)")
    p.add_argument(
        "--calibration",
        required=True,
        metavar="FILE",
        help="calibration inputs: .npy array or .npz with key 'x' (float, preprocessed as for training)",
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=500,
        metavar="N",
        help="use at most N calibration samples (default 500)",
    )
    p.add_argument("--eval", metavar="FILE", help=".npz with 'x' and 'y' for accuracy (float and int8)")
    p.add_argument("--labels", metavar="FILE", help=".npy labels of the calibration samples (accuracy on them)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; must not exist or be empty)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty output folder (never one that holds an input file)",
    )
    p.add_argument(
        "--multiple",
        type=int,
        default=1,
        metavar="M",
        help="round kept channel counts up to a multiple of M when shrinking (e.g. 4 or 8)",
    )
    p.add_argument("--float-io", action="store_true", help="float32 input/output tensors (default int8)")
    p.add_argument("--no-shrink", action="store_true", help="export the model as it is, without removing channels")
    p.add_argument(
        "--compare-dense",
        action="store_true",
        help="also export and measure the unshrunk model and print both side by side",
    )
    p.add_argument(
        "--keep-mean",
        action="store_true",
        help="keep GlobalAveragePooling as TFLite MEAN (default: AVERAGE_POOL_2D over the whole map, "
        "the same values with an optimized TFLM kernel; the report gives the instruction saving)",
    )
    p.add_argument(
        "--budget",
        choices=("auto", "none"),
        default="auto",
        help="auto (default): check the budget of the model's saved WGSEF(budget=...) optimizer as measured and "
        "remove groups if a bound is broken, as tflite_export.export does; none: export without the check",
    )
    p.add_argument("--no-instructions", action="store_true", help="skip the valgrind instruction count")
    p.add_argument("--no-latency", action="store_true", help="skip the host latency runs on LiteRT")
    p.add_argument("--no-arena", action="store_true", help="skip the search for the smallest TFLite Micro arena")
    p.add_argument(
        "--tflm-samples",
        type=int,
        default=1000,
        metavar="N",
        help="run at most N evaluation samples on TFLite Micro for its accuracy (default 1000; 0 skips it)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the report as one JSON object on stdout (the content of report.json) instead of the "
        "Markdown report; progress stays on stderr",
    )
    p.add_argument("--runs", type=int, default=100, help="timed LiteRT invokes per latency figure (default 100)")
    p.add_argument("--array-name", default="g_model", help="C identifier of the model array (default g_model)")
    p.add_argument(
        "--unsafe-load",
        action="store_true",
        help="load with Keras safe_mode=False: runs code stored in the file (only for files you trust)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    return p


class _Progress:
    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.i = total, quiet, 0

    def step(self, label: str) -> _Progress:
        self.i += 1
        self.label, self.t0 = label, time.perf_counter()
        if not self.quiet:
            print(f"[{self.i}/{self.total}] {label} ...", file=sys.stderr, flush=True)
        return self

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None and not self.quiet:
            print(f"      done in {time.perf_counter() - self.t0:.1f} s", file=sys.stderr, flush=True)


def _load_array_file(path: str, what: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise ExportError(f"{what} file not found: {path}; check the path")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not (magic.startswith(b"\x93NUMPY") or magic.startswith(b"PK")):
        raise ExportError(f"{what} file {path} is not a .npy or .npz file; write it with np.save or np.savez")
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ExportError(
            f"{what} file {path} holds Python objects ({exc}); save plain numeric arrays with np.save/np.savez"
        ) from None
    except Exception as exc:
        raise ExportError(
            f"{what} file {path} is not a readable .npy/.npz file ({exc}); write it with np.save or np.savez"
        ) from None
    if isinstance(data, np.ndarray):
        return {keys[0]: data}
    arrays = {k: data[k] for k in data.files}
    if not arrays:
        raise ExportError(f"{what} file {path} holds no arrays; write it with np.savez(path, x=...)")
    return arrays


def _calibration(path: str) -> np.ndarray:
    arrays = _load_array_file(path, "calibration", ("x",))
    for key in ("x", "x_calib", "calibration", "images"):
        if key in arrays:
            return arrays[key]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise ExportError(
        f"calibration file {path} has arrays {sorted(arrays)} but none named 'x'; "
        "save the inputs as np.savez(path, x=inputs)"
    )


def _eval_data(args: argparse.Namespace, calib: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    if args.eval:
        arrays = _load_array_file(args.eval, "eval", ("x",))
        if "x" not in arrays or "y" not in arrays:
            raise ExportError(
                f"eval file {args.eval} needs arrays 'x' and 'y' (has {sorted(arrays)}); "
                "save it as np.savez(path, x=inputs, y=labels)"
            )
        x, y = arrays["x"], arrays["y"]
        where = f"eval set {args.eval}"
    elif args.labels:
        y = next(iter(_load_array_file(args.labels, "labels", ("y",)).values()))
        x, where = calib, "calibration samples (no separate eval set)"
    else:
        return None, None, ""
    if len(x) != len(y):
        raise ExportError(f"{where}: {len(x)} inputs but {len(y)} labels; pass one label per sample")
    return x, y, where


def _check_model_file(path: str) -> None:
    if not os.path.isfile(path):
        raise ExportError(f"model file not found: {path}; check the path")
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise ExportError(
            f"model file {path} is not a .keras (or legacy .h5) file; save the model with model.save('model.keras')"
        )
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ExportError(
            f"model file {path} is corrupt or not a Keras archive (a .keras file is a zip); "
            "save the model again with model.save('model.keras')"
        )


def _load_model(path: str, unsafe: bool) -> tuple[Any, str]:
    """The model with its training configuration (optimizer, hence a saved budget), and a note.

    The note is empty, or says why the model was loaded without its training configuration
    (``compile=False``): a custom loss or metric that is not registered, for instance.
    """
    _check_model_file(path)
    import keras

    import keras_wgsef  # noqa: F401  (registers WGSEF and its schedules for deserialization)

    try:
        return keras.saving.load_model(path, compile=True, safe_mode=not unsafe), ""
    except Exception as exc:
        why = " ".join(str(exc).split())
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:
        text = " ".join(str(exc).split())
        missing = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
        if missing:
            registered = re.search(r"'registered_name': '([^']+>[^']+)'", text)
            name = f"'{missing.group(1)}'" + (f" (registered as '{registered.group(1)}')" if registered else "")
            raise ExportError(
                f"model {path} uses the custom object {name} that is not registered; "
                "import the module that defines it (decorated with @keras.saving.register_keras_serializable) "
                "before exporting, e.g. run the export from Python, or replace the custom layer"
            ) from None
        if "safe_mode" in text:
            raise ExportError(
                f"model {path} contains a Lambda layer or other Python code that safe mode refuses to load; "
                "pass --unsafe-load only if you trust the file, or replace the Lambda layer"
            ) from None
        raise ExportError(
            f"cannot load model {path}: {text[:300]}; save it with Keras 3 model.save('model.keras')"
        ) from None
    note = (
        f"loaded without its training configuration (compile=False): compiling it failed ({why[:200]}); "
        "no budget saved in its optimizer is checked. Register the custom objects it needs (export from "
        "Python after importing them) for the budget check"
    )
    return model, note


def _refuse_inputs_inside(args: argparse.Namespace) -> None:
    """``--out`` is replaced as a whole (with ``--force``): it must not hold the model or a data file."""
    out = Path(args.out).resolve()
    for flag, path in (("model", args.model), ("--calibration", args.calibration), ("--eval", args.eval),
                       ("--labels", args.labels)):  # fmt: skip
        if path and (out == Path(path).resolve() or out in Path(path).resolve().parents):
            raise ExportError(
                f"--out {args.out} contains the {flag} file {path}; the output folder is replaced as a whole, so "
                "choose a folder that holds none of the inputs"
            )


def _interrupt_on_sigterm() -> None:
    """SIGTERM (e.g. a CI timeout) cleans up like Ctrl-C: the temporary output folder is removed."""
    import contextlib
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread: leave the default
        signal.signal(signal.SIGTERM, handler)


def _export(args: argparse.Namespace) -> int:
    from tflite_export.console import capture_output
    from tflite_export.convert import CalibrationError, calibration_samples
    from tflite_export.export import (
        BudgetOptionsError,
        OutputFolderError,
        atomic_folder,
        check_output_folder,
        export,
        write_artefacts,
    )
    from tflite_export.shrink import ShrinkError

    if args.multiple < 1 or args.calibration_samples < 1 or args.runs < 1:
        raise ExportError("--multiple, --calibration-samples and --runs must be >= 1")
    if args.tflm_samples < 0:
        raise ExportError(f"--tflm-samples must be >= 0 (0 skips the TFLite Micro accuracy), got {args.tflm_samples}")
    _check_model_file(args.model)  # cheap checks first: no TensorFlow import before them
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", args.array_name):
        raise ExportError(
            f"--array-name {args.array_name!r} is not a valid C identifier; use letters, digits and '_' (e.g. g_model)"
        )
    _refuse_inputs_inside(args)
    calib_raw = _calibration(args.calibration)
    x_eval, y_eval, eval_where = _eval_data(args, calib_raw)
    try:
        out = check_output_folder(args.out, args.force)
    except OutputFolderError as exc:
        raise ExportError(str(exc), 1) from None
    variants = 2 if args.compare_dense and not args.no_shrink else 1
    progress = _Progress(2 + variants, args.quiet)
    with progress.step(f"loading {args.model}"), capture_output():
        model, load_note = _load_model(args.model, args.unsafe_load)
    if load_note:
        print(f"{PROG}: note: {load_note}", file=sys.stderr, flush=True)
    try:
        calib = calibration_samples(model, calib_raw, args.calibration_samples)
    except CalibrationError as exc:
        raise ExportError(str(exc)) from None
    _say_what_is_skipped(args)
    common = {
        "eval_data": None if x_eval is None else (x_eval, y_eval),
        "int8_io": not args.float_io,
        "runs": args.runs,
        "latency": not args.no_latency,
        "arena": not args.no_arena,
        "instructions": False if args.no_instructions else "auto",
        "tflm_samples": args.tflm_samples,
        "cheaper_ops": not args.keep_mean,
        "verbose": 0 if args.quiet else 2,
    }
    baseline = None
    if variants == 2:
        with progress.step("converting and measuring the dense model (no shrink)"):
            baseline = export(model, calib, shrink=False, name="dense", budget=None, **common).report
    what = "exporting" if args.no_shrink else f"shrinking (multiple of {args.multiple}), exporting"
    with progress.step(f"{what} and measuring"):
        try:
            result = export(
                model,
                calib,
                shrink=not args.no_shrink,
                multiple=args.multiple,
                name="shrunk" if variants == 2 else "exported",
                budget="auto" if args.budget == "auto" else None,
                **common,
            )
        except BudgetOptionsError as exc:
            raise ExportError(f"{exc} (on the command line: --budget none)") from None
        except ShrinkError as exc:  # a pass failed: the message names it and the option that skips it
            raise ExportError(f"export failed: {' '.join(str(exc).split())[:400]}", 1) from None
    report = result.report
    if load_note:
        report.notes.append(load_note)
    elif args.budget == "none":
        report.notes.append("budget check skipped (--budget none)")
    if eval_where:
        report.notes.append(f"accuracy measured on the {eval_where}")
    with progress.step(f"writing {out}"), atomic_folder(out, args.force) as tmp:
        text = write_artefacts(
            tmp,
            result.tflite,
            report,
            title=Path(args.model).name,
            shrink_report=result.shrink_report,
            baseline=baseline,
            array_name=args.array_name,
        )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif not args.quiet:
        print(text)
    return 0


def _say_what_is_skipped(args: argparse.Namespace) -> None:
    """Says on stderr, before the work starts, which requested figures cannot be measured here and why."""
    import shutil

    from keras_wgsef._install import VALGRIND_HINT
    from tflite_export.micro import micro_missing

    wanted = [what for what, off in (("arena", args.no_arena), ("instructions", args.no_instructions)) if not off]
    if (args.eval or args.labels) and args.tflm_samples > 0:
        wanted.append("TFLM accuracy")
    why = micro_missing(f"not measured: {', '.join(wanted)}") if wanted else None
    if why is not None:
        print(f"{PROG}: note: {why}", file=sys.stderr, flush=True)
    elif not args.no_instructions and shutil.which("valgrind") is None:
        print(
            f"{PROG}: note: instruction counts skipped: valgrind not found; {VALGRIND_HINT} to count them "
            "(--no-instructions silences this)",
            file=sys.stderr,
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``wgsef-export``; returns the exit status.

    Example:
        >>> main(["model.keras", "--calibration", "calib.npz", "--out", "build"])   # doctest: +SKIP
        0
    """
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # at run time only, before TF loads
    if "keras" not in sys.modules:  # its own process: convert on TensorFlow whatever the user trains on
        os.environ["KERAS_BACKEND"] = "tensorflow"
    from tflite_export import install_export_hint, missing_export_modules

    if missing_export_modules():
        print(
            f"{PROG}: error: needs {', '.join(missing_export_modules())}, the `export` extra: {install_export_hint()}.",
            file=sys.stderr,
        )
        return 2
    from keras_wgsef.budget.plan import BudgetError
    from tflite_export.convert import CalibrationError, ConversionError
    from tflite_export.export import OutputFolderError
    from tflite_export.micro import UnsupportedOpError
    from tflite_export.rewrite import RewriteError

    _interrupt_on_sigterm()
    try:
        return _export(args)
    except ExportError as exc:
        message, code = str(exc), exc.code
    except OutputFolderError as exc:
        message, code = str(exc), 1
    except (CalibrationError, BudgetError) as exc:  # the user's input: one line, exit 2
        message, code = str(exc), 2
    except (ConversionError, UnsupportedOpError, RewriteError) as exc:
        message, code = str(exc), 1
    except KeyboardInterrupt:
        message, code = "interrupted; no output was written", 130
    except Exception as exc:
        if args.debug:
            raise
        message = (
            f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
            "(rerun with --debug for the traceback)"
        )
        code = 1
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
