"""Reading a model's group structure: group norms, nonzero counts and ``tau`` per scope (NumPy).

Example:
  >>> import keras
  >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="h"), keras.layers.Dense(2)])
  >>> nonzero_groups(m)
  {'sequential/h': 3}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import numpy as np

from keras_wgsef.groups import GroupScope
from keras_wgsef.prox import solve_alpha

__all__ = ["scope_norms", "scope_tau", "nonzero_groups", "find_wgsef", "model_scopes"]


def scope_norms(scope: GroupScope, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """Group norms ``||x_{G_j}||`` of one scope (float64, length m) from ``{path: array}``."""
    sq = np.zeros(scope.num_groups)
    for mb in scope.members:
        x = np.asarray(values[mb.path], dtype=np.float64) ** 2
        if mb.axis is None:
            np.add.at(sq, mb.index.reshape(-1), x.reshape(-1))
        else:
            ax = mb.axis % x.ndim
            per_slice = x.sum(axis=tuple(i for i in range(x.ndim) if i != ax))
            np.add.at(sq, mb.index, per_slice)
    return np.sqrt(sq)


def scope_tau(norms: np.ndarray, weights: np.ndarray, k: int) -> float:
    """The level ``tau`` of the value function (0 when at most k groups are nonzero).

    ``tau`` solves ``sum_j min(1, w_j / tau) = k`` with ``w_j = sqrt(d_j) ||x_j||``: groups with
    ``w_j >= tau`` are under weight decay, the others under group-lasso pressure at level ``tau``.
    """
    w = np.sqrt(np.asarray(weights, dtype=np.float64)) * np.asarray(norms, dtype=np.float64)
    pos = w[w > 0]
    if pos.size <= k:
        return 0.0
    return 1.0 / solve_alpha(pos, np.zeros_like(pos), k)


def find_wgsef(optimizer) -> "keras.optimizers.Optimizer | None":
    """The WGSEF optimizer inside ``optimizer`` (also when Keras wrapped it in a LossScaleOptimizer)."""
    from keras_wgsef.optimizer import WGSEF

    seen = 0
    while optimizer is not None and seen < 4:
        if isinstance(optimizer, WGSEF):
            return optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)
        seen += 1
    return None


def model_scopes(model: keras.Model, groups: Sequence[GroupScope] | None = None) -> list[GroupScope]:
    """The scopes to report on: given ones, the built WGSEF optimizer's, or path-inferred ones."""
    if groups is not None:
        return list(groups)
    opt = find_wgsef(getattr(model, "optimizer", None))
    if opt is not None and opt.built:
        return list(opt.scopes)
    from keras_wgsef.path_groups import groups_from_paths

    return groups_from_paths(model.trainable_variables)


def nonzero_groups(model: keras.Model, groups: Sequence[GroupScope] | None = None) -> dict[str, int]:
    """Number of groups with a nonzero entry, per scope name.

    A merged global scope (``WGSEF(..., scope="model")``) is reported per source layer.

    Args:
      model: a Keras model.
      groups: the scopes to count (default: those of the model's WGSEF optimizer when it is built,
        else the output-channel groups inferred from the variable paths).
    """
    values = {v.path: v.numpy() for v in model.variables}
    counts: dict[str, int] = {}
    for s in model_scopes(model, groups):
        nonzero = scope_norms(s, values) > 0
        if s.segments is None:
            counts[s.name] = int(np.count_nonzero(nonzero))
            continue
        for seg in np.unique(s.segments):  # a global budget: report each layer (source scope)
            members = np.flatnonzero(s.segments == seg)
            name = s.labels[members[0]].rpartition(":")[0] if s.labels else f"{s.name}[{seg}]"
            counts[name] = int(np.count_nonzero(nonzero[members]))
    return counts
