"""``run_passes``: runs a list of passes and checks the outputs after each one that changed the model.

Each pass plans on a read-only :class:`GraphView` of the current model and applies its plan. After
a pass that changed the model, the new model is run on the context's sample and compared with the
model the pass was given; at the end the last model is compared with the original. A failure
raises :class:`PassError`, which names the failing pass and the passes that ran before it. Each
model is run once: the outputs of the last checked model are the next check's reference.

Example (``model`` the doctest CNN: no dead channel, no zero branch or kernel border):
  >>> from tflite_export.passes import SHRINK, Context
  >>> run = run_passes(model, SHRINK, Context(sample=x[:8]))
  >>> run.model is model, run.changed
  (True, [])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from tflite_export.passes.base import Context, GraphView, Pass, PassResult
from tflite_export.passes.check import PassError, difference, predict, random_sample

__all__ = ["RunResult", "run_passes"]


@dataclasses.dataclass
class RunResult:
    """What :func:`run_passes` returns.

    Attributes:
      model: the last model (the original itself when no pass changed it).
      original: the model the run was given.
      results: ``(pass name, PassResult)`` per pass, in order.
      given: pass name -> the model that pass was given.
      plans: pass name -> its plan.
      ctx: the context of the run.
      max_abs_diff: the largest output difference of the last model from the original (0 when
        nothing changed).
      tolerance: the tolerance of that comparison.
    """

    model: Any
    original: Any
    results: list[tuple[str, PassResult]]
    given: dict[str, Any]
    plans: dict[str, Any]
    ctx: Context
    max_abs_diff: float = 0.0
    tolerance: float = 0.0

    @property
    def changed(self) -> list[str]:
        """The names of the passes that changed the model."""
        return [name for name, r in self.results if r.changed]

    def notes(self, name: str) -> list[str]:
        """The notes of the pass ``name`` (empty when it did not run)."""
        return next((list(r.notes) for n, r in self.results if n == name), [])


def _after(before: Sequence[str]) -> str:
    return f"after {', '.join(before)}" if before else "the first pass"


def _meanwhile(p: Pass) -> str:
    return f" Meanwhile: {p.way_out}." if p.way_out else ""


def run_passes(model: Any, passes: Sequence[Pass], ctx: Context | None = None) -> RunResult:
    """Runs ``passes`` on ``model`` in order; every change is checked against the outputs it must keep.

    Args:
      model: a built Sequential or Functional Keras model; never modified.
      passes: the passes, in order (:data:`tflite_export.passes.SHRINK`, :data:`~tflite_export.passes.DEFAULT`).
      ctx: the sample, tolerance, exclusions and width multiple (default :class:`Context()`).

    Returns:
      A :class:`RunResult`.

    Raises:
      PassError: a pass could not rebuild the model, or its model's outputs differ beyond the
        tolerance from the model it was given, or the last model's from the original.
      Whatever a plan raises (a layer without a channel rule, a subclassed model): unchanged.
    """
    ctx = Context() if ctx is None else ctx
    names = [p.name for p in passes]
    if len(set(names)) != len(names):
        raise ValueError(f"a pass list names a pass twice: {names}; give each pass once.")
    sample = ctx.sample
    view = GraphView(model, ctx.exclude)
    reference: list[np.ndarray] | None = None  # the current model's outputs on the sample
    original_outputs: list[np.ndarray] | None = None
    results: list[tuple[str, PassResult]] = []
    given: dict[str, Any] = {}
    plans: dict[str, Any] = {}
    current = model
    for i, p in enumerate(passes):
        given[p.name] = current
        plan = plans[p.name] = p.plan(view, ctx)
        try:
            result = p.apply(current, plan, ctx)
        except PassError:
            raise
        except Exception as e:
            raise PassError(
                f"pass {p.name!r} ({_after(names[:i])}) could not rebuild the model: {type(e).__name__}: {e}."
                + _meanwhile(p),
                p.name,
                tuple(names[:i]),
            ) from e
        results.append((p.name, result))
        if not result.changed:
            continue  # the same model: the view (graph, channel analysis) goes on to the next pass
        if sample is None:
            sample = random_sample(model)
        if reference is None:
            reference = original_outputs = predict(current, sample)
        outputs = predict(result.model, sample)
        diff, tol, same = difference(reference, outputs, ctx.rtol)
        if not same:
            raise PassError(
                f"pass {p.name!r} ({_after(names[:i])}) made a model that differs from the original: "
                f"max |difference| {diff:.3g} > tolerance {tol:.3g}. This is a bug or a layer rule that does "
                "not hold; please report it with the model." + _meanwhile(p),
                p.name,
                tuple(names[:i]),
            )
        current, reference = result.model, outputs
        view = GraphView(current, ctx.exclude)
    run = RunResult(current, model, results, given, plans, ctx)
    if original_outputs is not None and reference is not None:
        diff, tol, same = difference(original_outputs, reference, ctx.rtol)
        if not same:
            raise PassError(
                f"the passes {', '.join(run.changed)} together made a model that differs from the original: "
                f"max |difference| {diff:.3g} > tolerance {tol:.3g}. This is a bug; please report it with the model.",
                "end",
                tuple(names),
            )
        run.max_abs_diff, run.tolerance = diff, tol
    return run
