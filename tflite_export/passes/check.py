"""The output check of every pass and the errors a pass raises: one place, imported by every pass.

A pass hands on a new Keras model that must compute what the old one computed. The check runs both
models on the caller's sample (random normal inputs only when none is given) and compares:
``max |y_new - y| <= rtol * max(1, max |y|)``, output shapes equal.

Example (``model`` the doctest CNN, compared with itself):
  >>> diff, tol, same = output_difference(model, model, x[:8])
  >>> diff, same
  (0.0, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "PassError",
    "RewriteError",
    "ShrinkError",
    "difference",
    "output_difference",
    "predict",
    "random_sample",
]


class ShrinkError(RuntimeError):
    """The shrunk model would differ from the original (or could not be built)."""


class RewriteError(RuntimeError):
    """The rewritten model would differ from the original (or could not be built)."""


class PassError(ShrinkError, RewriteError):
    """A pass of :func:`tflite_export.passes.run_passes` failed: it could not rebuild the model, or
    the model it made differs from the one it got (or, at the end, from the original).

    Attributes:
      pass_name: the failing pass (``"end"`` for the final check against the original).
      before: the names of the passes that ran before it, in order.

    A subclass of :class:`ShrinkError` and :class:`RewriteError`, so that ``except`` clauses
    written for either keep catching it.
    """

    def __init__(self, message: str, pass_name: str = "", before: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.pass_name = pass_name
        self.before = tuple(before)


def predict(model: Any, x: Any) -> list[np.ndarray]:
    """The model's outputs on ``x`` (inference mode) as a list of float64 arrays.

    A model with a fixed batch size (:class:`tflite_export.passes.batch.BatchOfOne`) is run on
    batches of that size and the outputs joined.
    """
    import keras

    batch = {t.shape[0] for t in getattr(model, "inputs", None) or []}
    size = next(iter(batch)) if len(batch) == 1 else None
    xs = x if isinstance(x, (list, tuple)) else [x]
    n = len(xs[0]) if xs and hasattr(xs[0], "__len__") else None
    if size is not None and n is not None and n != size and n % size == 0:
        parts = [predict(model, _rows(x, i, i + size)) for i in range(0, n, size)]
        return [np.concatenate(ys, axis=0) for ys in zip(*parts)]
    y = model(x, training=False)
    y = y if isinstance(y, (list, tuple)) else [y]
    return [np.asarray(keras.ops.convert_to_numpy(t), np.float64) for t in y]


def _rows(x: Any, start: int, stop: int) -> Any:
    return [v[start:stop] for v in x] if isinstance(x, (list, tuple)) else x[start:stop]


def random_sample(model: Any) -> Any:
    """4 random normal inputs (seed 0) of ``model``'s input shapes: the sample when none is given.

    Raises:
      ValueError: an input takes strings (no random sample exists; the caller must pass one).
    """
    for t in model.inputs:
        if str(t.dtype) == "string":
            raise ValueError(
                f"model input {t.name!r} takes strings, so no random sample can be drawn for the output check; "
                "pass a sample of real inputs (shrink(model, sample) / output_difference(model, new, sample))."
            )
    rng = np.random.default_rng(0)
    sample = [rng.standard_normal((4, *[int(s) for s in t.shape[1:]])).astype(np.float32) for t in model.inputs]
    return sample[0] if len(sample) == 1 else sample


def output_difference(
    model: Any, new: Any, sample: Any = None, rtol: float = 1e-5, *, reference: list[np.ndarray] | None = None
) -> tuple[float, float, bool]:
    """``(max |y_new - y|, tolerance, same)`` of two models on ``sample`` (the check of every pass).

    Args:
      model, new: the models to compare.
      sample: their inputs; None draws 4 random normal inputs (seed 0) of ``model``'s input shapes.
      rtol: the tolerance is ``rtol * max(1, max |y|)``.
      reference: ``model``'s outputs on ``sample`` when already known (``model`` is then not run).

    Returns:
      The largest absolute difference, the tolerance, and whether the outputs agree (equal shapes
      and the difference within the tolerance).
    """
    if sample is None:
        sample = random_sample(model)
    y0 = reference if reference is not None else predict(model, sample)
    return difference(y0, predict(new, sample), rtol)


def difference(y0: list[np.ndarray], y1: list[np.ndarray], rtol: float = 1e-5) -> tuple[float, float, bool]:
    """``(max |y1 - y0|, tolerance, same)`` of two lists of outputs, ``y0`` the reference.

    The tolerance is ``rtol * max(1, max |y0|)``; ``same`` also requires equal output shapes.

    Example:
      >>> difference([np.ones(3)], [np.ones(3) + 1e-7])[2]
      True
    """
    shapes_equal = len(y0) == len(y1) and all(p.shape == q.shape for p, q in zip(y0, y1))
    diff = max(float(np.max(np.abs(p - q))) if p.size else 0.0 for p, q in zip(y0, y1)) if shapes_equal else np.inf
    tol = rtol * max(1.0, max(float(np.max(np.abs(p))) if p.size else 0.0 for p in y0))
    return diff, tol, bool(shapes_equal and diff <= tol)
