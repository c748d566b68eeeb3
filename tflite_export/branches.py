"""``drop_zero_branches``: the pass :class:`tflite_export.passes.branches.DropZeroBranches` alone, checked.

Residual branches whose whole output is zero are removed, branch and all (``Add(x, 0) = x``);
:mod:`tflite_export.passes.branches` says when. :func:`tflite_export.shrink.shrink` runs it first.

Example (``model`` the doctest CNN, which has no residual branch: nothing to drop):
  >>> new, dropped = drop_zero_branches(model)
  >>> dropped
  []
"""

from __future__ import annotations

from typing import Any

from tflite_export.passes import Context, run_passes
from tflite_export.passes.branches import DropZeroBranches

__all__ = ["drop_zero_branches"]


def drop_zero_branches(
    model: Any, *, exclude: Any = None, rtol: float = 1e-5, sample: Any = None
) -> tuple[Any, list[str]]:
    """A copy of ``model`` without the residual branches whose output is exactly zero.

    Args:
      model: a built Functional model (Sequential models have no branches); never modified.
      exclude: regexes on layer paths treated as opaque by the channel analysis.
      rtol: tolerance of the output check (as in :func:`tflite_export.shrink.shrink`).
      sample: inputs for the output check (None: random ones, as in
        :func:`tflite_export.passes.output_difference`).

    Returns:
      ``(new_model, dropped)``: ``dropped`` lists the layer paths removed (the merges left with
      one input and the layers only the zero branches read); ``(model, [])`` when there is nothing
      to drop (the model itself, not a copy).

    Raises:
      tflite_export.passes.PassError: the rebuilt model differs from the original (a ShrinkError).
    """
    run = run_passes(model, (DropZeroBranches(),), Context(sample, rtol, exclude))
    return run.model, run.notes(DropZeroBranches.name)
