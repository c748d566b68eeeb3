"""Cheaper operators, recurrent unrolling and a batch of one: single passes, run and checked; and the saving.

The passes live in :mod:`tflite_export.passes` (``global_pool_as_average_pool`` in
:mod:`~tflite_export.passes.pooling`, which says what each layer becomes and when one is left alone;
``unroll_recurrent``; ``batch_of_one``); the functions here run one of them with the output check.
:func:`record_saving` puts the measured int8 difference and the instruction saving of the cheaper
operators into the export report.

Example (``model`` the doctest CNN, ending in ``GlobalAveragePooling2D(name="gap")``):
    >>> fast, lines = cheaper_ops(model, x[:16])
    >>> [layer.name for layer in fast.layers[-3:]], type(fast.get_layer("gap")).__name__
    (['gap_avgpool', 'gap', 'head'], 'Reshape')
    >>> lines[0]
    'gap: GlobalAveragePooling2D over 4x4x16 -> AveragePooling2D((4, 4)) gap_avgpool + Reshape((16,)) gap'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tflite_export.passes import Context, run_passes
from tflite_export.passes.batch import BatchOfOne
from tflite_export.passes.check import RewriteError
from tflite_export.passes.pooling import GlobalPoolAsAveragePool, call_kwargs
from tflite_export.passes.recurrent import UnrollRecurrent

__all__ = [
    "RewriteError",
    "call_kwargs",
    "cheaper_ops",
    "int8_difference",
    "record_saving",
    "unroll_recurrent",
    "with_batch_one",
]


def cheaper_ops(model: Any, sample: Any = None, *, rtol: float = 1e-5) -> tuple[Any, list[str]]:
    """``model`` with each global average pooling replaced by an average pooling over the whole map.

    See :mod:`tflite_export.passes.pooling` for what each layer becomes and when one is left alone.

    Args:
      model: a built Sequential or Functional model (nested models included); never modified.
      sample: inputs for the check (an array, or a list for several inputs); None draws 4 random
        normal inputs (seed 0) of the model's input shapes.
      rtol: the check passes when ``max |y_new - y| <= rtol * max(1, max |y|)``.

    Returns:
      ``(new_model, lines)``: the rewritten model (same layer names and weights, uncompiled), or
      ``model`` itself when nothing was rewritten; ``lines`` says per layer what it became
      (``"gap: GlobalAveragePooling2D over 7x7x64 -> AveragePooling2D((7, 7)) gap_avgpool +
      Reshape((64,)) gap"``) or why it was kept (``"kept <path> (<class>): <reason>"``).

    Raises:
      RewriteError: the rewritten model could not be built or its outputs differ beyond ``rtol``
        (a :class:`tflite_export.passes.PassError`).
    """
    run = run_passes(model, (GlobalPoolAsAveragePool(),), Context(sample, rtol))
    return run.model, run.notes(GlobalPoolAsAveragePool.name)


def _lsb_difference(raw_a: np.ndarray, raw_b: np.ndarray, a: bytes) -> tuple[int, float]:
    from tflite_export.quantization import dequantized_output_scale

    ra, rb = raw_a.reshape(len(raw_a), -1), raw_b.reshape(len(raw_b), -1)
    if ra.dtype.kind == "f":  # float outputs: in steps of the int8 tensor DEQUANTIZE reads
        lsb = np.rint(np.abs(ra.astype(np.float64) - rb) / (dequantized_output_scale(a) or 1.0))
    else:
        lsb = np.abs(ra.astype(np.int64) - rb.astype(np.int64))
    return int(lsb.max()) if lsb.size else 0, float(np.mean(ra.argmax(1) == rb.argmax(1))) if len(ra) else 1.0


def int8_difference(a: bytes, b: bytes, x: np.ndarray) -> tuple[int, float]:
    """How far two int8 models of the same function disagree on LiteRT over the inputs ``x``.

    Returns ``(max |difference| in output LSB, argmax agreement)``; both models must have the same
    output quantization (as a model and its :func:`cheaper_ops` version converted with the same
    calibration data do). Float outputs are compared in steps of the int8 tensor before DEQUANTIZE.
    """
    from tflite_export.console import capture_output
    from tflite_export.litert import run_litert

    with capture_output():
        ra, _, _ = run_litert(a, x)
        rb, _, _ = run_litert(b, x)
    return _lsb_difference(ra, rb, a)


def record_saving(
    report: Any,
    tflite: bytes,
    plain: bytes,
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    float_model: Any = None,
    max_samples: int = 1000,
) -> None:
    """Notes in ``report`` how the rewritten int8 model compares with ``plain`` (converted without it).

    Adds to the :class:`tflite_export.measure.Report` of ``tflite``: the TFLM instruction saving (when
    both counts are in the report), and on LiteRT over the first ``max_samples`` inputs of ``x`` the
    two int8 models' output difference, their argmax agreement, and with ``float_model`` each one's
    distance from the float outputs (with ``y`` also the accuracy without the rewrite).

    The int8 models are not bit-identical: ``AVERAGE_POOL_2D`` must keep its input's quantization
    step while ``MEAN`` gets a step fitted to the (narrower) range of the averages, so the averages
    are represented more coarsely after the rewrite. On trained CNNs with ReLU features this is an
    output LSB or a few; where the averages span a much narrower range than the features (e.g.
    nearly constant averages) it can be tens of LSB, which these notes show (export with
    ``cheaper_ops=False`` then).
    """
    from tflite_export.console import capture_output
    from tflite_export.litert import compare_outputs, float_outputs, run_litert
    from tflite_export.measure import accuracy_applies, class_accuracy

    before, after = report.tflm_instructions_without_rewrite, report.tflm_instructions
    if before and after is not None:
        report.notes.append(
            f"cheaper operators save {before - after:,} TFLM instructions per inference "
            f"({before:,} -> {after:,}, {100 * (before - after) / before:.1f} %)"
        )
    x = np.asarray(x)[:max_samples]
    with capture_output():
        raw_a, real_a, details_a = run_litert(tflite, x)
        raw_b, real_b, details_b = run_litert(plain, x)
    lsb, agreement = _lsb_difference(raw_a, raw_b, tflite)
    note = (
        f"int8 with vs without cheaper operators on LiteRT ({len(x)} samples): max diff {lsb} LSB, "
        f"argmax agreement {100 * agreement:.2f} %"
    )
    if float_model is not None:
        reference = float_outputs(float_model, x)
        with_, without = (
            compare_outputs(reference, real, details, t)
            for real, details, t in ((real_a, details_a, tflite), (real_b, details_b, plain))
        )
        note += (
            f"; int8 vs float max diff {with_.max_diff_steps:.1f} output steps with, "
            f"{without.max_diff_steps:.1f} without"
        )
    if y is not None and accuracy_applies((1, *np.asarray(raw_b).shape[1:]), np.asarray(y)[: len(x)]) is None:
        note += f"; int8 accuracy without them {100 * class_accuracy(raw_b, np.asarray(y)[: len(x)]):.2f} %"
    report.notes.append(note)


def unroll_recurrent(model: Any, sample: Any = None, *, rtol: float = 1e-5) -> tuple[Any, list[str]]:
    """The model with its recurrent layers unrolled over their (static) time steps, outputs checked.

    See :mod:`tflite_export.passes.recurrent`; ``(model, [])`` when there is nothing to unroll
    (the model itself).

    Example (``model`` the doctest CNN has no recurrent layer):
      >>> unroll_recurrent(model)[1]
      []
    """
    run = run_passes(model, (UnrollRecurrent(),), Context(sample, rtol))
    return run.model, run.notes(UnrollRecurrent.name)


def with_batch_one(model: Any, sample: Any = None, *, rtol: float = 1e-5) -> Any:
    """The model with a fixed batch of one sample (what a microcontroller runs), outputs checked.

    See :mod:`tflite_export.passes.batch`. The check runs the new model one sample at a time.

    Example (``model`` the doctest CNN):
      >>> with_batch_one(model).inputs[0].shape
      (1, 8, 8, 1)
    """
    return run_passes(model, (BatchOfOne(),), Context(sample, rtol)).model
