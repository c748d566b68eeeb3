"""``export``: the one path from a trained Keras model to firmware: shrink, int8, check, measure, write.

::

    model --passes--> the passes of tflite_export.passes.DEFAULT, each checked on the calibration data:
                      shrink (zero branches, dead channels, zero kernel borders), global average
                      pooling -> AveragePooling + Reshape, recurrent layers unrolled
          --to_tflite_int8--> full-integer .tflite (calibrated on ``representative``)
          --measure--> Report: bytes, MACs, TFLM arena and instructions, int8 and float accuracy
          --(out=...)--> model_int8.tflite, model_data.cc/.h, report.json, report.md

The command line (``wgsef-export``), the examples and the benchmark all call :func:`export`.
With ``out`` the artefacts are written into a temporary folder next to it and moved into place at
the end: a failure (or a refusal) leaves no half-written output.

Example (``model`` a small Keras CNN, ``x``/``y`` 8x8 digits):
    >>> result = export(model, x[:100], eval_data=(x[:50], y[:50]), latency=False, instructions=False)
    >>> result.tflite[4:8], result.report.macs > 0
    (b'TFL3', True)
    >>> 0.0 <= result.report.accuracy_litert <= 1.0 and result.report.float_accuracy is not None
    True
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "BudgetOptionsError",
    "ExportResult",
    "OutputFolderError",
    "atomic_folder",
    "check_output_folder",
    "export",
]


class OutputFolderError(ValueError):
    """The output folder cannot be used (not empty without overwrite, a file, no parent, not writable)."""


class BudgetOptionsError(ValueError):
    """A budget is to be checked, but the export options would measure another model than the plan's."""


@dataclass
class ExportResult:
    """What :func:`export` produced.

    Attributes:
      model: the exported Keras model (shrunk, unless ``shrink=False``; with cheaper operators,
        unless ``cheaper_ops=False``).
      tflite: the int8 ``.tflite`` bytes.
      report: the measurements (:class:`tflite_export.measure.Report`).
      shrink_report: per-layer channels, parameters and MACs before and after (None without shrink).
      out: the folder the artefacts were written to (None without ``out``).
    """

    model: Any
    tflite: bytes
    report: Any
    shrink_report: Any = None
    out: Path | None = None

    def summary(self) -> str:
        """Per layer the width, parameters and MACs before and after, then the firmware figures (text).

        A notebook shows the same tables for a bare ``result`` (:func:`tflite_export.summary.export_summary`).
        """
        from tflite_export.summary import export_summary

        return export_summary(self)

    def _repr_markdown_(self) -> str:
        from tflite_export.summary import export_summary

        return export_summary(self, markdown=True)


def check_output_folder(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raises :class:`OutputFolderError` unless ``out`` can receive an export; returns it resolved."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out} exists and is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputFolderError(
            f"output folder {out} exists and is not empty; pass --force (overwrite=True) to replace it "
            "or choose another folder"
        )
    parent = out.resolve().parent
    if not parent.is_dir():
        raise OutputFolderError(f"cannot write {out}: its parent folder {parent} does not exist; create it first")
    return out.resolve()


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder next to ``out`` that replaces ``out`` when the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary folder is removed and ``out`` is
    left as it was.
    """
    out = check_output_folder(out, overwrite)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise OutputFolderError(f"cannot write to {out.parent} ({exc.strerror}); choose a writable folder") from None
    umask = os.umask(0o022)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_artefacts(
    folder: Path,
    tflite: bytes,
    report: Any,
    *,
    title: str = "model",
    shrink_report: Any = None,
    baseline: Any = None,
    array_name: str = "g_model",
) -> str:
    """Writes ``model_int8.tflite``, ``model_data.cc/.h``, ``report.json`` and ``report.md`` into ``folder``.

    With ``baseline`` (another :class:`Report`) the Markdown gains a side-by-side table and the
    baseline is saved as ``report_<baseline.name>.json``. Returns the Markdown text.
    """
    from tflite_export.firmware import write_c_array
    from tflite_export.measure import compare

    (folder / "model_int8.tflite").write_bytes(tflite)
    write_c_array(tflite, folder, name=array_name, arena_size=report.tflm_arena_bytes)
    report.save(folder / "report.json")
    text = f"# wgsef-export report: {title}\n\n{report.to_markdown()}"
    if shrink_report is not None:
        text += f"\n## shrink (Keras model)\n\n```\n{shrink_report}\n```\n"
    if baseline is not None:
        text += f"\n## {baseline.name} vs {report.name}\n\n" + compare(baseline, report)
        baseline.save(folder / f"report_{baseline.name}.json")
    (folder / "report.md").write_text(text)
    return text


def export(
    model: Any,
    representative: Any,
    *,
    eval_data: tuple[Any, Any] | Any = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    shrink: bool = True,
    multiple: int = 1,
    num_calibration: int | None = None,
    int8_io: bool = True,
    name: str = "model",
    runs: int = 100,
    latency: bool = True,
    arena: bool = True,
    instructions: bool | Literal["auto"] = "auto",
    tflm_samples: int = 1000,
    array_name: str = "g_model",
    baseline: Any = None,
    title: str | None = None,
    cheaper_ops: bool = True,
    budget: Any = "auto",
    verbose: int = 0,
    reorder_ops: bool = True,
) -> ExportResult:
    """Shrinks, converts to int8, checks and measures ``model``; optionally writes the artefacts.

    The input model is never modified.

    Args:
      model: a trained, built single-input Keras model (Sequential or Functional).
      representative: calibration inputs, preprocessed as for training (100-500 samples).
      eval_data: ``(x, y)`` for accuracy (float on the exported Keras model, int8 on LiteRT and
        TFLM), or just ``x`` for the int8-vs-float agreement without labels.
      out: a folder for ``model_int8.tflite``, ``model_data.cc/.h``, ``report.json``, ``report.md``
        (written atomically; must be empty or missing unless ``overwrite``).
      overwrite: replace a non-empty ``out``.
      shrink: run the passes of :data:`tflite_export.passes.SHRINK` (zero branches, dead channels,
        zero kernel borders; :func:`tflite_export.shrink`); False exports the layers as they are.
      multiple: round kept channel counts up to a multiple of this when shrinking.
      num_calibration: use at most this many calibration samples.
      int8_io: int8 input and output tensors (False: float I/O with (de)quantize ops at the edges).
      name: the model's name in the report.
      runs, latency, arena, instructions, tflm_samples: passed to :func:`tflite_export.measure`.
      array_name: C identifier of the model array in ``model_data.cc``.
      baseline: a report to compare against in ``report.md`` (e.g. the dense model's).
      title: heading of ``report.md`` (default ``name``).
      cheaper_ops: replace operators by cheaper ones of the same function before conversion
        (the pass ``global_pool_as_average_pool``: global average pooling -> ``AVERAGE_POOL_2D``
        instead of ``MEAN``); ``report.rewrites`` lists them. When instructions are counted, the
        model without the rewrite is converted too and counted in the same callgrind run
        (``report.tflm_instructions_without_rewrite``), and the two int8 models' outputs compared.
      budget: the :class:`keras_wgsef.BudgetPlan` to meet *as measured* (:func:`tflite_export.budget_fit.meet_budget`:
        if a bound is broken, groups of lowest rank per unit cost are removed until it holds; the
        report's ``budget`` says what was bounded, measured and removed). ``"auto"`` uses the plan
        of the model's ``WGSEF(budget=...)`` optimizer when it has one (binding it to ``model`` if it
        was saved and loaded); None skips the check.
      reorder_ops: when the TFLM arena is measured or ``out`` written, run the operators in the order
        with the smallest arena (:func:`tflite_export.reorder.reorder_for_tflm`; outputs bit-identical);
        a note gives the measured arena of both orders.
      verbose: 0 silent; 1 a Keras progress bar with one step per stage (shrink, convert, LiteRT,
        arena search, TFLM accuracy, callgrind); 2 one line per stage on stderr (the command's).

    Returns:
      an :class:`ExportResult`.

    Raises:
      OutputFolderError: ``out`` cannot be used (checked before any work).
      BudgetOptionsError: a budget is checked, but ``shrink``, ``multiple`` or ``cheaper_ops`` differ from
        what the plan predicts (its ``passes``; pass ``budget=None``).
      tflite_export.ShrinkError, CalibrationError, ConversionError, UnsupportedOpError: a step failed.
    """
    from tflite_export.console import StageProgress
    from tflite_export.convert import calibration_samples, to_tflite_int8
    from tflite_export.measure import measure
    from tflite_export.passes import Context, export_passes, run_passes
    from tflite_export.passes.pooling import GlobalPoolAsAveragePool
    from tflite_export.shrink import shrink_report

    progress = StageProgress(verbose)
    if out is not None:
        check_output_folder(out, overwrite)
    calib = calibration_samples(model, representative, num_calibration)
    x_eval, y_eval = eval_data if isinstance(eval_data, tuple) else (eval_data, None)
    if x_eval is not None:
        x_eval = calibration_samples(model, x_eval)  # the same checks for the evaluation inputs
    passes = export_passes(shrink=shrink, cheaper_ops=cheaper_ops)
    plan = _budget_plan(model, budget)
    if shrink:
        progress.start("shrink", "the budget as measured, then dead channels" if plan else "removing dead channels")
    fit = None
    if plan is not None:
        from keras_wgsef.budget.lowering import PRICED_PASSES

        priced = tuple(p.name for p in passes if p.name in PRICED_PASSES)
        if multiple != 1 or priced != plan.passes:
            raise BudgetOptionsError(
                f"a budget is met on the model the plan prices: the passes {', '.join(plan.passes)} with multiple=1 "
                f"(shrink=True, cheaper_ops={plan.gap_as_avgpool}); this export runs {', '.join(priced) or 'none'} "
                f"with multiple={multiple}. Pass budget=None to export without the budget check."
            )
        from tflite_export.budget_fit import meet_budget

        fit = meet_budget(model, plan, calib, cheaper_ops=cheaper_ops)
        model = fit.model  # the trained model, or a copy with the groups the measurement removed
    run = run_passes(model, passes, Context(sample=calib[:64], multiple=multiple))
    exported = run.model
    report_of_shrink = shrink_report(run) if shrink else None
    gap = GlobalPoolAsAveragePool.name
    rewrites = run.notes(gap)
    progress.start("convert", "int8 TFLite, calibrated")
    plain = None  # the int8 model without the operator rewrite, to measure the saving against
    if gap in run.changed and instructions:
        plain = to_tflite_int8(run.given[gap], calib, int8_io=int8_io, check=False)
    tflite = to_tflite_int8(exported, calib, int8_io=int8_io, check=False)
    reorder_notes: list[str] = []
    if reorder_ops and (arena or out is not None):
        from tflite_export.reorder import reorder_for_tflm

        reordered = reorder_for_tflm(tflite, measure_arena=arena)
        tflite, reorder_notes = reordered.tflite, reordered.notes
    report = measure(
        tflite,
        x_eval,
        y_eval,
        name=name,
        runs=runs,
        latency=latency,
        arena=arena,
        instructions=instructions,
        tflm_samples=tflm_samples,
        float_model=exported,
        without_rewrite=plain,
        progress=progress,
    )
    report.rewrites = rewrites
    report.notes += reorder_notes
    if fit is not None:
        report.budget = fit.summary()
    if plain is not None:
        from tflite_export.rewrite import record_saving

        x_check, y_check = (calib, None) if x_eval is None else (x_eval, y_eval)
        record_saving(report, tflite, plain, x_check, y_check, float_model=exported)
    if report.int8_vs_float_argmax_agreement is None:  # no evaluation inputs: check on the calibration data
        from tflite_export.console import capture_output
        from tflite_export.litert import check_agreement

        with capture_output():
            report.record_agreement(check_agreement(exported, tflite, calib[:1000]), "calibration samples")
    report.notes.append(f"Keras parameters: {exported.count_params():,}")
    folder = None
    if out is not None:
        with atomic_folder(out, overwrite) as tmp:
            write_artefacts(
                tmp,
                tflite,
                report,
                title=title or name,
                shrink_report=report_of_shrink,
                baseline=baseline,
                array_name=array_name,
            )
        folder = Path(out).resolve()
    progress.finish()
    return ExportResult(exported, tflite, report, report_of_shrink, folder)


def _budget_plan(model: Any, budget: Any) -> Any:
    """The BudgetPlan to meet: given, the model's WGSEF optimizer's (``"auto"``), or None."""
    if budget is None:
        return None
    if isinstance(budget, str):
        if budget != "auto":
            raise ValueError(f"budget must be a keras_wgsef.BudgetPlan, 'auto' or None, got {budget!r}.")
        from keras_wgsef.sparsity import find_wgsef

        opt = find_wgsef(getattr(model, "optimizer", None))
        if opt is None or getattr(opt, "budget", None) is None:
            return None
        return opt.plan if opt.plan is not None else opt.bind(model)  # e.g. a model loaded from .keras
    from keras_wgsef.budget.plan import BudgetPlan

    if not isinstance(budget, BudgetPlan):
        raise TypeError(
            f"budget must be a keras_wgsef.BudgetPlan (optimizer.plan), 'auto' or None, got {type(budget).__name__}."
        )
    return budget
