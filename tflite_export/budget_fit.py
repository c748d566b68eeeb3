"""Meet a budget as *measured*: shrink, convert, measure; if a bound is broken, remove more groups.

The budget controller (:class:`keras_wgsef.callbacks.ReachK` with ``WGSEF(budget=...)``) freezes
a support whose *predicted* costs meet every bound. The predictions of flash, arena and
instructions are calibrated models (:mod:`keras_wgsef.budget.hardware`), so the exporter checks
them: :func:`meet_budget` measures the exported int8 model (flatbuffer MACs and parameters,
``.tflite`` bytes, TFLite Micro minimal arena and instruction count, whichever are bounded) and,
while a bound is broken, scales that bound by the measured prediction error, selects a smaller
support with :meth:`keras_wgsef.BudgetPlan.select` (lowest rank per unit cost removed first),
zeroes the removed groups on a copy of the model and measures again. The user's model is never
changed; :class:`BudgetFit` says what was removed and why.

Example:
  >>> fit = meet_budget(trained, plan, x[:64])           # doctest: +SKIP
  >>> fit.measured, fit.removed                           # doctest: +SKIP
  ({'macs': 470112, 'arena_bytes': 8128}, [])
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np

__all__ = ["BudgetFit", "export_name_bytes", "measured_costs", "meet_budget"]


@dataclasses.dataclass
class BudgetFit:
    """The result of :func:`meet_budget`.

    Attributes:
      model: the model whose support meets the budget (the input, or a copy with more groups zeroed).
      shrunk: its shrunk Keras model (with the exporter's cheaper operators when asked).
      tflite: the int8 flatbuffer of ``shrunk``.
      bounds: the absolute bounds.
      measured: the measured figure of each bound on ``tflite``.
      predicted: the plan's prediction of each bound for the final support.
      removed: labels of the groups removed after the first measurement (empty when the trained
        support already met every bound).
      notes: what happened, one line per round.
    """

    model: Any
    shrunk: Any
    tflite: bytes
    bounds: dict[str, int]
    measured: dict[str, int]
    predicted: dict[str, int]
    removed: list[str]
    notes: list[str]

    @property
    def use(self) -> float:
        """Share of the tightest bound the measured model uses."""
        return max(self.measured[c] / b for c, b in self.bounds.items())

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``Report.budget`` holds)."""
        return {
            "bounds": dict(self.bounds),
            "measured": dict(self.measured),
            "predicted": dict(self.predicted),
            "use": round(self.use, 4),
            "removed_after_measurement": list(self.removed),
            "notes": list(self.notes),
        }


def measured_costs(tflite: bytes, costs: Any) -> dict[str, int]:
    """The figures of ``costs`` measured on an int8 model (``tflite_export.measure``'s figures)."""
    from tflite_export.measure import measure

    costs = set(costs)
    report = measure(
        tflite,
        latency=False,
        arena="arena_bytes" in costs,
        instructions="instructions" in costs,
    )
    figures = {
        "macs": report.macs,
        "params": report.params,
        "flash_bytes": report.file_bytes,
        "arena_bytes": report.tflm_arena_bytes,
        "instructions": report.tflm_instructions,
    }
    return {c: int(figures[c]) for c in costs}  # type: ignore[arg-type]


def export_name_bytes(model: Any, representative: np.ndarray, *, cheaper_ops: bool = True) -> int:
    """Bytes the tensor names take in ``model``'s exported flatbuffer (the same at every width).

    Pass it to ``WGSEF.bind(model, name_bytes=...)`` (or ``BudgetPlan(..., name_bytes=...)``)
    before training to a flash budget: the prediction is then within ~1 % instead of ~10 %.

    Measure it on a *trained* model (the dense one the budgeted run starts from): the converter
    folds or drops the zero biases and BatchNorm statistics of an untrained model, and the names
    it writes change with them (measured: up to 2x on the benchmark models).
    """
    from tflite_export.flatbuffer import tensor_name_bytes

    return tensor_name_bytes(_export_model(model, np.asarray(representative), cheaper_ops)[1])


def _export_model(model: Any, calibration: np.ndarray, cheaper: bool) -> tuple[Any, bytes]:
    """The model :func:`tflite_export.export` would convert (its passes, checked) and its int8 flatbuffer."""
    from tflite_export.convert import to_tflite_int8
    from tflite_export.passes import Context, export_passes, run_passes

    small = run_passes(model, export_passes(cheaper_ops=cheaper), Context(sample=calibration[:16])).model
    return small, to_tflite_int8(small, calibration, check=False)


def meet_budget(
    model: Any,
    plan: Any,
    calibration: np.ndarray,
    *,
    cheaper_ops: bool = True,
    max_rounds: int = 8,
) -> BudgetFit:
    """Exports ``model`` and makes the measured figures meet ``plan``'s bounds, removing groups if needed.

    Args:
      model: the trained Keras model (never modified).
      plan: the :class:`keras_wgsef.BudgetPlan` it was trained to (``optimizer.plan``).
      calibration: representative inputs for the int8 conversion.
      cheaper_ops: export with the pass ``global_pool_as_average_pool`` (must match
        ``plan.passes`` for the predictions to apply).
      max_rounds: measurements before giving up.

    Raises:
      RuntimeError: a bound still broken after ``max_rounds`` (the message gives the figures).
    """
    from keras_wgsef.sparsity import group_norms, zero_groups

    calibration = np.asarray(calibration)
    bounds = dict(plan.bounds)
    work = model
    removed: list[str] = []
    notes: list[str] = []
    labels = [lab for s in plan.scopes for lab in (s.labels or [f"{s.name}:{j}" for j in range(s.num_groups)])]
    for round_ in range(max_rounds):
        norms = group_norms(work, plan.scopes)
        keep = norms > 0
        shrunk, tflite = _export_model(work, calibration, cheaper_ops)
        measured = measured_costs(tflite, bounds)
        predicted = plan.predict(keep, tuple(bounds))
        broken = {c: b for c, b in bounds.items() if measured[c] > b}
        if not broken:
            notes.append(f"round {round_ + 1}: every bound holds as measured ({_fmt(measured, bounds)})")
            return BudgetFit(work, shrunk, tflite, bounds, measured, predicted, removed, notes)
        notes.append(
            f"round {round_ + 1}: measured {_fmt(measured, bounds)}: "
            + ", ".join(f"{c} over by {measured[c] - b:,}" for c, b in broken.items())
            + " (prediction error); removing the groups of lowest rank per unit cost"
        )
        tighter = copy.copy(plan)
        tighter.min_keep = dict.fromkeys(plan.min_keep, 1)  # the bounds are hard; the minimum width is a preference
        tighter.bounds = {
            c: int(b * min(1.0, predicted[c] / max(measured[c], 1)) * (1.0 if c not in broken else 0.999))
            for c, b in bounds.items()
        }
        new_keep = tighter.select(norms / np.sqrt(plan.sizes), candidates=keep, min_use=0.0)
        if (new_keep == keep).all():  # prediction already below the tightened bound: drop the weakest one
            scores = np.where(keep, norms / np.sqrt(plan.sizes), np.inf)
            for sid in np.unique(plan.segments):
                if keep[plan.segments == sid].sum() <= 1:
                    scores[plan.segments == sid] = np.inf
            if not np.isfinite(scores).any():
                break
            new_keep = keep.copy()
            new_keep[int(np.argmin(scores))] = False
        drop = keep & ~new_keep
        if work is model:
            work = _copy_model(model)
        zero_groups(work, plan.scopes, drop)
        removed.extend(labels[j] for j in np.flatnonzero(drop))
    raise RuntimeError(
        f"the exported model still breaks the budget after {max_rounds} rounds: {notes[-1]}. Lower the bounds "
        "given to the budget, or report the model: the cost models mispredict it."
    )


def _copy_model(model: Any) -> Any:
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _fmt(measured: dict[str, int], bounds: dict[str, int]) -> str:
    return ", ".join(f"{c} {measured[c]:,} of {b:,}" for c, b in bounds.items())
