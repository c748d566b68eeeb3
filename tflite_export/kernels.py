"""``trim_zero_borders``: the pass :class:`tflite_export.passes.kernels.TrimKernelBorders` alone, checked.

Filter-shape sparsity on the device: all-zero border rows and columns of a convolution kernel
become a smaller kernel after a ``ZeroPadding`` / ``Cropping`` that keeps the outputs;
:mod:`tflite_export.passes.kernels` says when and how. :func:`tflite_export.shrink.shrink` runs it last.

Example (``model`` the doctest CNN: its kernels have no zero border):
  >>> trimmed, lines = trim_zero_borders(model)
  >>> lines
  []
"""

from __future__ import annotations

from typing import Any

from tflite_export.passes import Context, run_passes
from tflite_export.passes.kernels import EXTRA_OPERATOR_BYTES, TrimKernelBorders, zero_borders

__all__ = ["EXTRA_OPERATOR_BYTES", "trim_zero_borders", "zero_borders"]


def trim_zero_borders(model: Any, sample: Any = None, *, rtol: float = 1e-5) -> tuple[Any, list[str]]:
    """A copy of ``model`` whose convolutions drop their all-zero border kernel rows and columns.

    Args:
      model: a built Functional or Sequential model; never modified.
      sample: inputs for the output check (None: random normal inputs).
      rtol: tolerance of the check (as in :func:`tflite_export.shrink.shrink`).

    Returns:
      ``(new_model, lines)``: one line per trimmed layer (old and new kernel, the padding layers
      added) and per layer with interior zero positions that stay; ``(model, lines)`` (the model
      itself) when no kernel has a zero border.

    Raises:
      tflite_export.passes.PassError: the rebuilt model's outputs differ (a ShrinkError).
    """
    run = run_passes(model, (TrimKernelBorders(),), Context(sample, rtol))
    return run.model, run.notes(TrimKernelBorders.name)
