"""Group math on arrays: group norms of a scope, the level ``tau``, top-k supports (NumPy, pure).

Nothing here reads a model or an optimizer: the functions take the scope's arrays and return new
ones. The optimizer's scopes (:mod:`keras_wgsef.scope_state`) and the reports
(:mod:`keras_wgsef.sparsity`) both use them.

Example:
  >>> from keras_wgsef.groups.scope import GroupScope, Member
  >>> s = GroupScope("d", (Member("d/kernel", -1, np.arange(3)),))
  >>> norms = scope_norms(s, {"d/kernel": np.array([[3.0, 0.0, 1.0], [4.0, 0.0, 0.0]])})
  >>> norms.tolist(), top_k_support(norms, 1).tolist()
  ([5.0, 0.0, 1.0], [True, False, False])
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from keras_wgsef.groups.scope import GroupScope
from keras_wgsef.prox import solve_alpha

__all__ = ["scope_norms", "scope_tau", "top_k_support"]


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
