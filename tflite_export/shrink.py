"""Physical removal of dead channels: a new, thinner Keras model with the same outputs.

A channel class (see :mod:`keras_wgsef.graph.channels`) is **dead** when every place that reads it
through a kernel (a Conv/Dense input slice, a Dense after Flatten at positions ``s*C + c``) sees an
exact zero or reads it with an all-zero slice of its kernel (an input-channel group at zero: the
channel is computed but never used, so the producer's output channel goes too), and it is neither
a model input/output channel nor read by an opaque layer. Exact zeros
are propagated through the graph from the weights alone:

* producer channel ``c``: ``bias[c] = 0``, ``kernel[..., i, c] = 0`` for every input channel ``i``
  not known to be zero, and ``act(0) = 0``;
* BatchNorm: ``gamma = beta = 0``, or a zero input with ``beta = 0`` and ``gamma*mean = 0``;
  depthwise: (zero input or zero kernel slice) and zero bias;
* ``Add``/``Average``/``Maximum``: all inputs zero; ``Multiply``: any input zero; ``f(0) = 0`` layers
  pass zeros on, others (``sigmoid``) make them nonzero.

So a channel whose whole WGSEF group is zero is dead, and so is, e.g., a nonzero filter whose
BatchNorm has ``gamma = beta = 0``. A zero filter with a nonzero bias (or BN beta) emits a constant:
it is kept, and the report says where the constant is read (folding it into the next bias is exact
only without zero padding, so it is not done). Removing dead channels changes no output.

:func:`shrink` runs the passes of :data:`tflite_export.passes.SHRINK` (zero branches, dead channels,
zero kernel borders) with :func:`tflite_export.passes.run_passes`, which checks every changed model
on ``sample`` (or random normal input): ``max |y_new - y| <= rtol * max(1, max |y|)``, else a :class:`ShrinkError`
(:class:`tflite_export.passes.PassError`, naming the pass) is raised.

Example (``model`` a small CNN whose ``conv1`` feeds ``bn1``): zero half of conv1's filters, cut them out.
  >>> import keras
  >>> sparse = keras.models.clone_model(model)
  >>> sparse.set_weights(model.get_weights())
  >>> k, b = sparse.get_layer("conv1").get_weights()
  >>> k[..., 4:], b[4:] = 0.0, 0.0
  >>> sparse.get_layer("conv1").set_weights([k, b])
  >>> gamma, beta, mean, var = sparse.get_layer("bn1").get_weights()
  >>> gamma[4:], beta[4:] = 0.0, 0.0
  >>> sparse.get_layer("bn1").set_weights([gamma, beta, mean, var])
  >>> small, report = shrink(sparse, x[:32], return_report=True)
  >>> small.get_layer("conv1").filters, report.plan.widths["conv1"], report.max_abs_diff <= report.tolerance
  (4, (8, 4), True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

from keras_wgsef.graph.costs import count_macs, count_params
from tflite_export.passes import SHRINK, Context, RunResult, run_passes, without
from tflite_export.passes.branches import DropZeroBranches
from tflite_export.passes.channels import RemoveDeadChannels, ShrinkPlan, plan_shrink
from tflite_export.passes.check import ShrinkError, difference, output_difference, predict, random_sample
from tflite_export.passes.kernels import TrimKernelBorders
from tflite_export.passes.rebuild import rebuild

__all__ = [
    "ShrinkError",
    "ShrinkPlan",
    "ShrinkReport",
    "output_difference",
    "plan_shrink",
    "shrink",
    "shrink_report",
]


@dataclasses.dataclass
class ShrinkReport:
    """Per-layer channels, parameters and MACs before and after, plus the verification result."""

    plan: ShrinkPlan
    params: dict[str, tuple[int, int]]
    macs: dict[str, tuple[int, int]]
    max_abs_diff: float
    tolerance: float
    dropped: list[str] = dataclasses.field(default_factory=list)  # layers of zero residual branches
    trimmed: list[str] = dataclasses.field(default_factory=list)  # kernels without their zero borders

    def _changed(self) -> list[tuple[str, tuple[int, int], tuple[int, int], tuple[int, int]]]:
        """``(path, channels, params, MACs)`` (each before, after) of every layer that changed."""
        rows = []
        for path, params in self.params.items():
            if path == "total":
                continue
            widths, macs = self.plan.widths.get(path, (0, 0)), self.macs.get(path, (0, 0))
            if (widths[0], macs[0], params[0]) != (widths[1], macs[1], params[1]):
                rows.append((path, widths, params, macs))
        return rows

    def _notes(self) -> list[str]:
        """Removed branches, trimmed kernels and the channels kept, with their reasons."""
        notes = [f"removed zero residual branches: {', '.join(self.dropped)}"] if self.dropped else []
        return notes + list(self.trimmed) + [f"kept {lab}: {why}" for lab, why in self.plan.not_removed]

    def table(self) -> str:
        lines = [f"{'layer':36s} {'channels':>13s} {'params':>19s} {'MACs':>25s}"]
        for path, (wb, wa), (b, a), (mb, ma) in self._changed():
            lines.append(f"{path:36s} {wb:5d} -> {wa:5d} {b:8d} -> {a:8d} {mb:11d} -> {ma:11d}")
        pb, pa = self.params["total"]
        mb, ma = self.macs["total"]
        lines.append(f"{'total':36s} {'':13s} {pb:8d} -> {pa:8d} {mb:11d} -> {ma:11d}")
        lines += [f"  {note}" for note in self._notes()]
        lines.append(f"max |output difference| {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g})")
        return "\n".join(lines)

    __str__ = table

    def to_markdown(self) -> str:
        """The layers that changed as a Markdown table (channels, parameters, MACs), then the notes.

        A notebook shows it for a bare ``report`` (``_repr_markdown_``).
        """
        lines = ["| layer | channels | params | MACs |", "|---|---|---|---|"]
        for path, (wb, wa), (b, a), (mb, ma) in self._changed():
            lines.append(f"| {path} | {wb} -> {wa} | {b:,} -> {a:,} | {mb:,} -> {ma:,} |")
        (pb, pa), (mb, ma) = self.params["total"], self.macs["total"]
        lines.append(f"| **total** | | {pb:,} -> {pa:,} | {mb:,} -> {ma:,} |")
        notes = [*self._notes(), f"max abs output difference {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g})"]
        return "\n".join([*lines, "", *(f"- {n}" for n in notes)]) + "\n"

    _repr_markdown_ = to_markdown


def shrink(
    model: Any,
    sample: Any = None,
    *,
    multiple: int = 1,
    rtol: float = 1e-5,
    exclude: str | Iterable[str] | None = None,
    trim_kernels: bool = True,
    return_report: bool = False,
) -> Any:
    """A new model without the dead channels of ``model``, checked to give the same outputs.

    Args:
      model: a built Sequential or Functional model; never modified.
      sample: inputs for the check (an array, or a list for several inputs); None draws 4 random
        normal inputs (seed 0) of the model's input shapes.
      multiple: round kept producer widths up to a multiple of this (see :func:`plan_shrink`).
      rtol: the check passes when ``max |y_new - y| <= rtol * max(1, max |y|)``.
      exclude: regexes on layer paths (see :func:`plan_shrink`).
      trim_kernels: also cut all-zero border rows and columns off convolution kernels (filter-shape
        sparsity; :func:`tflite_export.kernels.trim_zero_borders`).
      return_report: also return a :class:`ShrinkReport`.

    Returns:
      The new model (same layer names, uncompiled: the training optimizer's groups belong to the
      old shapes), or ``(model, report)`` with ``return_report=True``.

    Raises:
      ShrinkError: if the rebuilt model's outputs differ beyond the tolerance (a
        :class:`tflite_export.passes.PassError` naming the pass).
      keras_wgsef.graph.rules.UnsupportedLayerError: a layer without a channel rule.
    """

    samples = sample if isinstance(sample, (list, tuple)) else [] if sample is None else [sample]
    for s, t in zip(samples, getattr(model, "inputs", None) or []):  # (subclassed models: refused below)
        if str(t.dtype) == "string" and np.asarray(s).dtype.kind not in "USO":
            raise ValueError(
                f"shrink: model input {t.name!r} takes strings, but its sample has dtype {np.asarray(s).dtype}; "
                "pass the strings the model reads."
            )
    for s in samples:
        arr = np.asarray(s)
        if arr.size == 0 or len(arr) == 0:
            raise ValueError(
                "shrink: the sample is empty, so the output check could not run; pass some inputs or None."
            )
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ValueError("shrink: the sample has NaN or inf values; pass finite inputs (or None for random ones).")
    passes = SHRINK if trim_kernels else without(SHRINK, TrimKernelBorders.name)
    run = run_passes(model, passes, Context(sample, rtol, exclude, int(multiple)))
    # The new model is returned uncompiled (rebuild drops the compile config): the training
    # optimizer's groups describe the old shapes (compile it again to fine-tune).
    new = run.model if run.changed else rebuild(model, lambda config: None)  # a new model even when none changed
    if not return_report:
        return new
    return new, shrink_report(run)


def shrink_report(run: RunResult) -> ShrinkReport:
    """The :class:`ShrinkReport` of a pass run that included ``remove_dead_channels``.

    Raises:
      ValueError: the run has no ``remove_dead_channels`` pass.
    """
    plan = run.plans.get(RemoveDeadChannels.name)
    if plan is None:
        raise ValueError(f"the run's passes {list(run.given)} do not include {RemoveDeadChannels.name!r}.")
    original, new = run.original, run.model
    diff, tol = run.max_abs_diff, run.tolerance
    if not run.changed:  # no model was checked: the tolerance of the original's outputs
        sample = run.ctx.sample if run.ctx.sample is not None else random_sample(original)
        outputs = predict(original, sample)
        diff, tol, _ = difference(outputs, outputs, run.ctx.rtol)
    p0, p1, m0, m1 = count_params(original), count_params(new), count_macs(original), count_macs(new)
    return ShrinkReport(
        plan,
        {k: (p0[k], p1.get(k, 0)) for k in p0},
        {k: (m0[k], m1.get(k, 0)) for k in m0},
        diff,
        tol,
        run.notes(DropZeroBranches.name),
        run.notes(TrimKernelBorders.name),
    )
