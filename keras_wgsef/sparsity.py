"""Reading a model's group structure: group norms, ``tau``, supports and nonzero counts (NumPy).

Example:
  >>> import keras
  >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="h"), keras.layers.Dense(2)])
  >>> nonzero_groups(m)
  {'h': 3}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_wgsef.groups.scope import GroupScope, match_variables
from keras_wgsef.prox import solve_alpha

__all__ = [
    "find_wgsef",
    "group_norms",
    "model_scopes",
    "nonzero_groups",
    "scope_norms",
    "scope_tau",
    "top_k_support",
    "zero_groups",
]


def scope_norms(scope: GroupScope, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """Group norms ``||x_{G_j}||`` of one scope (float64, length m) from ``{member path: array}``.

    Example:
      >>> from keras_wgsef.groups import Member
      >>> s = GroupScope("d", (Member("d/kernel", -1, np.arange(2)),))
      >>> scope_norms(s, {"d/kernel": np.array([[3.0, 0.0], [4.0, 1.0]])}).tolist()
      [5.0, 1.0]
    """
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

    Example:
      >>> scope_tau(np.array([3.0, 1.0, 1.0]), np.ones(3), 2)   # 1 + 1/tau + 1/tau = 2
      2.0
    """
    w = np.sqrt(np.asarray(weights, dtype=np.float64)) * np.asarray(norms, dtype=np.float64)
    pos = w[w > 0]
    if pos.size <= k:
        return 0.0
    return 1.0 / solve_alpha(pos, np.zeros_like(pos), k)


def top_k_support(rank: np.ndarray, k: int, segments: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the k largest ``rank`` entries, keeping the best of every segment first.

    With ``segments`` (a merged, global scope) each segment (layer) keeps its best group before
    the rest is filled by global rank, so a global budget never removes a whole layer.

    Example:
      >>> top_k_support(np.array([5., 4., 3., 0.1]), 2, np.array([0, 0, 0, 1])).tolist()
      [True, False, False, True]
    """
    keep = np.zeros(rank.size, dtype=bool)
    if segments is not None:
        ids = np.unique(segments)
        if ids.size > k:
            raise ValueError(
                f"a global budget of k = {k} groups cannot keep one group in each of {ids.size} layers; raise k."
            )
        for sid in ids:
            members = np.flatnonzero(segments == sid)
            keep[members[np.argmax(rank[members])]] = True
    rest = [j for j in np.argsort(-rank, kind="stable") if not keep[j]]
    keep[rest[: k - int(keep.sum())]] = True
    return keep


def find_wgsef(optimizer: Any) -> Any:
    """The WGSEF optimizer inside ``optimizer`` (also when Keras wrapped it in a LossScaleOptimizer), or None."""
    from keras_wgsef.optimizer import WGSEF

    seen = 0
    while optimizer is not None and seen < 4:
        if isinstance(optimizer, WGSEF):
            return optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)
        seen += 1
    return None


def _variables(model: keras.Model, scopes: Sequence[GroupScope]) -> dict[str, Any]:
    """``{member path: variable}`` of the scopes' members in ``model`` (:func:`match_variables`)."""
    members = list({mb.path: mb for s in scopes for mb in s.members}.values())  # once each
    return match_variables(members, model.variables)


def _values(model: keras.Model, scopes: Sequence[GroupScope]) -> dict[str, np.ndarray]:
    return {p: np.asarray(keras.ops.convert_to_numpy(v)) for p, v in _variables(model, scopes).items()}


def model_scopes(model: keras.Model, groups: Sequence[GroupScope] | None = None) -> list[GroupScope]:
    """The scopes to report on: given ones, the built WGSEF optimizer's, or ``make_groups(model)``."""
    if groups is not None:
        return list(groups)
    opt = find_wgsef(getattr(model, "optimizer", None))
    if opt is not None and opt.built:
        return [s.scope for s in opt.scopes]
    from keras_wgsef.groups.make import make_groups

    return make_groups(model)


def nonzero_groups(model: keras.Model, groups: Sequence[GroupScope] | None = None) -> dict[str, int]:
    """Number of groups with a nonzero entry, per scope name.

    A merged global scope (``WGSEF(..., envelope="model")``) is reported per source layer.

    Args:
      model: a Keras model.
      groups: the scopes to count (default: those of the model's WGSEF optimizer when it is built,
        else ``make_groups(model)``).
    """
    scopes = model_scopes(model, groups)
    values = _values(model, scopes)
    counts: dict[str, int] = {}
    for s in scopes:
        nonzero = scope_norms(s, values) > 0
        if s.segments is None:
            counts[s.name] = int(np.count_nonzero(nonzero))
            continue
        for seg in np.unique(s.segments):  # a global budget: report each layer (source scope)
            members = np.flatnonzero(s.segments == seg)
            name = s.labels[members[0]].rpartition(":")[0] if s.labels else f"{s.name}[{seg}]"
            counts[name] = int(np.count_nonzero(nonzero[members]))
    return counts


def group_norms(model: keras.Model, scopes: Sequence[GroupScope]) -> np.ndarray:
    """``||x_j||`` of every group of ``scopes`` in ``model``, concatenated in scope order (float64).

    Example:
      >>> import keras
      >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="h"), keras.layers.Dense(1)])
      >>> from keras_wgsef import make_groups
      >>> group_norms(m, make_groups(m)).shape
      (3,)
    """
    values = _values(model, scopes)
    return np.concatenate([scope_norms(s, values) for s in scopes]) if scopes else np.zeros(0)


def zero_groups(model: keras.Model, scopes: Sequence[GroupScope], drop: np.ndarray) -> None:
    """Sets every group marked in ``drop`` (concatenated over ``scopes``, in order) to exactly zero, in place.

    Use it on a copy: it changes ``model``'s variables.

    Example:
      >>> import keras
      >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="h"), keras.layers.Dense(1)])
      >>> from keras_wgsef import make_groups
      >>> zero_groups(m, make_groups(m), np.array([True, False, True]))
      >>> (group_norms(m, make_groups(m)) > 0).tolist()
      [False, True, False]
    """
    drop = np.asarray(drop, bool).reshape(-1)
    total = sum(s.num_groups for s in scopes)
    if drop.size != total:
        raise ValueError(f"drop has {drop.size} entries; the scopes have {total} groups.")
    variables = _variables(model, scopes)
    offset = 0
    for s in scopes:
        mine = drop[offset : offset + s.num_groups]
        offset += s.num_groups
        if not mine.any():
            continue
        for mb in s.members:
            var = variables[mb.path]
            x = np.array(keras.ops.convert_to_numpy(var))
            dead = mine[mb.index]
            if mb.axis is None:
                x[dead] = 0
            else:
                ax = mb.axis % x.ndim
                sl: list[Any] = [slice(None)] * x.ndim
                sl[ax] = np.flatnonzero(dead)
                x[tuple(sl)] = 0
            var.assign(x)
