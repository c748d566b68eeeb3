"""``ScopeState``: one envelope of a built ``WGSEF`` optimizer, and the only way to change it.

The optimizer (:mod:`keras_wgsef.optimizer`) creates one per scope in ``build`` and runs the prox
through it; controllers (:mod:`keras_wgsef.controller`) read it and change it only through
:meth:`ScopeState.set_strength` and :meth:`ScopeState.freeze`.

Example:
  >>> import keras, keras_wgsef as kw
  >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="h"), keras.layers.Dense(2)])
  >>> opt = kw.WGSEF(keras.optimizers.SGD(0.1), k=2, groups=kw.make_groups(m))
  >>> opt.build(m.trainable_variables)
  >>> state = opt.scopes[0]
  >>> state.freeze(state.top_k_support())
  >>> state.frozen, state.strength, int(state.mask.sum()), kw.nonzero_groups(m, [state.scope])
  (True, 0.0, 2, {'h': 2})
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_wgsef import prox_ops
from keras_wgsef.groups.norms import scope_norms, top_k_support
from keras_wgsef.groups.scope import GroupScope

__all__ = ["ScopeState", "ScopeTable", "metric_scales", "padded_norms", "prox_factors"]


@dataclass(frozen=True)
class ScopeTable:
    """The optimizer state of every scope, one row per scope (saved with the optimizer).

    One variable per kind rather than per scope: the prox step reads and writes each once, so its
    number of operations does not grow with the number of scopes. Row ``s`` belongs to scope
    ``s``; a scope with ``m_s`` groups uses the first ``m_s`` columns (the rest is padding).

    Attributes:
      strength: ``(S,)`` float32, ``lam_s`` (0: penalty off).
      mask: ``(S, M)`` float32, 1 keeps a group, 0 pins it at zero (the frozen support).
      attenuation: ``(S, M)`` float32, the product of the prox factors since the last freeze.
      nonzero: ``(S,)`` int32, the groups left nonzero by the last prox step.
    """

    strength: Any
    mask: Any
    attenuation: Any
    nonzero: Any

    def record(self, scales, nonzero) -> None:
        """After a prox step: its factors ``(S, M)`` (float32) and the nonzero groups per scope ``(S,)``."""
        self.attenuation.assign(prox_ops.read(self.attenuation) * scales)
        self.nonzero.assign(nonzero)


class ScopeState:
    """One envelope of a built :class:`WGSEF` optimizer: its groups, k, weights, variables and state.

    Read it through the properties; change it only through :meth:`set_strength` and
    :meth:`freeze` (what controllers do). Its state is row ``row`` of the optimizer's
    :class:`ScopeTable`, saved with the optimizer, so a checkpoint restores it.

    Attributes:
      scope: the :class:`GroupScope` (members, labels, segments of a merged global scope).
      k: the number of groups to keep.
      weights: ``d_j`` (float64, length m).
      variables: the model variables of the members, in member order.
    """

    def __init__(
        self,
        scope: GroupScope,
        k: int,
        weights: np.ndarray,
        variables: Sequence[keras.Variable],
        table: ScopeTable,
        row: int,
    ) -> None:
        self.scope = scope
        self.k = int(k)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.variables = list(variables)
        self.table = table
        self.row = int(row)
        #: per variable, the inner optimizer's slots that give the prox its metric (empty tuples: Euclidean)
        self.slots: list[tuple] = [() for _ in self.variables]
        #: per variable, the inner optimizer's moving average (``use_ema=True``), scaled with it; else None
        self.ema: list | None = None

    # ---------------------------------------------------------------- read
    @property
    def name(self) -> str:
        return self.scope.name

    @property
    def num_groups(self) -> int:
        return int(self.scope.num_groups)

    @property
    def members(self):
        return self.scope.members

    @property
    def segments(self) -> np.ndarray | None:
        return self.scope.segments

    def _get(self, variable) -> np.ndarray:
        """This scope's row of one of the table's variables (NumPy; its m groups for a matrix)."""
        row = np.asarray(keras.ops.convert_to_numpy(variable))[self.row]
        return row[: self.num_groups] if row.ndim else row

    def _set(self, variable, value) -> None:
        """Writes this scope's row of one of the table's variables, the other rows unchanged."""
        full = np.array(keras.ops.convert_to_numpy(variable))
        if full.ndim == 2:
            full[self.row, : self.num_groups] = value
        else:
            full[self.row] = value
        variable.assign(full)

    @property
    def strength(self) -> float:
        """``lam_s``: the prox step is ``learning_rate * strength``; 0 means the penalty is off."""
        return float(self._get(self.table.strength))

    @property
    def mask(self) -> np.ndarray:
        """1 for a group that may be nonzero, 0 for a group pinned at zero (float32, length m)."""
        return self._get(self.table.mask)

    @property
    def frozen(self) -> bool:
        """True once the support has been pinned by :meth:`freeze`."""
        return bool(np.min(self.mask) == 0.0)

    @property
    def attenuation(self) -> np.ndarray:
        """Product of the prox factors of each group since the last freeze (float32, length m)."""
        return self._get(self.table.attenuation)

    def nonzero_count(self) -> int:
        """Groups left nonzero by the last prox step (m before the first step)."""
        return int(self._get(self.table.nonzero))

    def values(self) -> dict[str, np.ndarray]:
        """``{member path: current value}`` (NumPy)."""
        return {mb.path: np.asarray(keras.ops.convert_to_numpy(v)) for mb, v in zip(self.members, self.variables)}

    def group_norms(self) -> np.ndarray:
        """``||x_j||`` of the current weights (float64, length m)."""
        return scope_norms(self.scope, self.values())

    def rank(self) -> np.ndarray:
        """``||x_j|| / sqrt(d_j)``: the prox's own ranking of the groups."""
        return self.group_norms() / np.sqrt(self.weights)

    def top_k_support(self) -> np.ndarray:
        """The k best groups by :meth:`rank` (every layer of a merged scope keeps its best first)."""
        return top_k_support(self.rank(), self.k, self.segments)

    # --------------------------------------------------------------- change
    def retarget(self, k: int, weights: np.ndarray | None = None) -> None:
        """Sets the envelope's ``k`` and, when given, its weights ``d_j`` (a budget's plan does, knowing the model).

        Call it before the training step is traced: both enter the prox as constants.
        """
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64).reshape(-1)
            if w.size != self.num_groups or not np.all(w > 0):
                raise ValueError(f"weights of scope {self.name!r} must be {self.num_groups} numbers > 0.")
            self.weights = w
        if not 1 <= int(k) <= self.num_groups:
            raise ValueError(f"k = {k} is out of range for scope {self.name!r}: it must be in [1, {self.num_groups}].")
        self.k = int(k)

    def set_strength(self, value: float) -> None:
        """Sets ``lam_s`` (``>= 0``)."""
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"strength of scope {self.name!r} must be a finite number >= 0, got {value!r}.")
        self._set(self.table.strength, float(value))

    def freeze(self, support: np.ndarray, undo_cap: float = 1.0) -> None:
        """Projects the scope onto ``support``, pins it there and turns the penalty off.

        Groups outside ``support`` are zeroed; each kept group is multiplied by
        ``min(1 / attenuation_j, undo_cap)`` (undoing the prox's accumulated shrink, never
        shrinking further; ``undo_cap = 1`` leaves it as it is). The mask then keeps the dropped
        groups at zero for the rest of training, the attenuation restarts at 1, the strength
        is set to 0 and ``k`` becomes the size of the support.

        Args:
          support: boolean, length m.
          undo_cap: cap of the de-biasing factor, ``>= 1``.
        """
        keep = np.asarray(support, dtype=bool).reshape(-1)
        if keep.size != self.num_groups:
            raise ValueError(f"support of scope {self.name!r} must have {self.num_groups} entries, got {keep.size}.")
        if undo_cap < 1.0:
            raise ValueError(f"undo_cap must be >= 1, got {undo_cap}.")
        undo = np.ones(self.num_groups)
        if undo_cap > 1.0:
            att = np.asarray(self.attenuation, dtype=np.float64)
            undo = np.clip(1.0 / np.maximum(att, 1e-30), 1.0, undo_cap)
        factor = np.where(keep, undo, 0.0)
        for i, (var, mb) in enumerate(zip(self.variables, self.members)):
            x = np.asarray(keras.ops.convert_to_numpy(var))
            f = keras.ops.convert_to_numpy(prox_ops.expand_scales(factor, x.shape, mb.axis, mb.index))
            var.assign((x * f).astype(x.dtype))
            if self.ema is not None:  # the moving average keeps the same support
                avg = np.asarray(keras.ops.convert_to_numpy(self.ema[i]))
                self.ema[i].assign((avg * f).astype(avg.dtype))
        self._set(self.table.mask, keep.astype("float32"))
        self._set(self.table.attenuation, 1.0)
        self._set(self.table.strength, 0.0)
        self._set(self.table.nonzero, int(keep.sum()))
        self.k = int(keep.sum())


def _layout(states: Sequence[ScopeState]) -> tuple[list, np.ndarray, int]:
    """Every scope's members in order, the row (scope) of each, and the row width ``M`` (the largest ``m``)."""
    members = [mb for st in states for mb in st.members]
    rows = np.concatenate([np.full(len(st.members), r) for r, st in enumerate(states)])
    return members, rows, max(st.num_groups for st in states)


def padded_norms(states: Sequence[ScopeState], values: Sequence[Sequence]):
    """The group norms of every scope as one ``(S, M)`` matrix in ``prox_ops.prox_dtype()``.

    Row ``s`` holds scope ``s``'s ``m_s`` norms, then zeros up to ``M``, the largest ``m``
    (:func:`keras_wgsef.prox_ops.padded_sq_norms`: one segment sum for every scope).

    Args:
      states: the scopes.
      values: per scope, its variables' current values (tensors, member order).
    """
    members, rows, width = _layout(states)
    sq = prox_ops.padded_sq_norms([x for vals in values for x in vals], members, rows, width)
    return ops.sqrt(ops.cast(sq, prox_ops.prox_dtype()))


def metric_scales(states: Sequence[ScopeState], slots: Sequence[Sequence[tuple]], inverse_step: Callable):
    """The metric of the prox, one ``h_j`` per group of every scope, normalised to mean 1 per scope.

    ``h_j`` is the mean over group j's entries of ``inverse_step(*slots)``, the inverse of the
    inner optimizer's per-coordinate step scale (e.g. ``sqrt(v) + eps`` for Adam), divided by its
    mean over the scope's groups. One segment sum for every scope
    (:func:`keras_wgsef.prox_ops.padded_group_sums`); the group sizes are constants.

    Args:
      states: the scopes.
      slots: per scope, per member, a tuple of the inner optimizer's slot values of its variable.
      inverse_step: element-wise, the inverse step scale from those slots (up to a constant factor).

    Returns:
      ``(S, M)`` in ``prox_ops.prox_dtype()``: ``h_j / mean(h)`` on each scope's groups, 1 on the padding.
    """
    dt = prox_ops.prox_dtype()
    sizes = [st.num_groups for st in states]
    members, rows, width = _layout(states)
    shapes = [tuple(int(n) for n in v.shape) for st in states for v in st.variables]
    counts = prox_ops.group_sizes(members, rows, width, shapes)
    valid = np.arange(width)[None, :] < np.array(sizes)[:, None]
    sums = prox_ops.padded_group_sums([t for per_scope in slots for t in per_scope], members, rows, width, inverse_step)
    # the group means (0 on the padding); a tiny floor keeps a metric of exact zeros (epsilon = 0,
    # a group that never had a gradient) finite: such a scope's groups all get 1, the Euclidean prox
    inv_count = np.where(valid, 1.0 / np.maximum(counts, 1.0), 0.0)
    tiny = float(np.finfo(np.float32).tiny)
    means = ops.cast(sums, dt) * ops.convert_to_tensor(inv_count, dt) + ops.convert_to_tensor(valid * tiny, dt)
    scope_mean = ops.sum(means, axis=1, keepdims=True) * ops.convert_to_tensor(1.0 / np.array(sizes)[:, None], dt)
    return ops.where(ops.convert_to_tensor(valid), means / scope_mean, ops.ones_like(means))


def prox_factors(
    states: Sequence[ScopeState],
    values: Sequence[Sequence],
    lr,
    ridge: bool,
    metric: tuple[Sequence[Sequence[tuple]], Callable] | None = None,
) -> Any:
    """The prox factors of every scope at once, each frozen mask applied.

    The group norms of all scopes form one ``(S, M)`` matrix (row ``s``: scope ``s``'s ``m_s``
    groups, then zero padding; :func:`keras_wgsef.prox_ops.padded_sq_norms`, one segment sum) and
    :func:`keras_wgsef.prox_ops.batched_prox_scales` runs once, each row with its own ``k``,
    weights ``d_j`` and step ``lr * lam_s``; a global scope's layer leaders are protected as in
    the single-scope prox. The number of prox operations is the same for 1 scope or 100; only
    the per-variable reductions grow with the variables. A scope whose strength is 0 (warm-up,
    fine-tuning) keeps factor 1 on its nonzero groups (then its mask).

    With ``metric`` it is the prox in the diagonal metric ``sum_j h_j / (2 lr) ||x_j - z_j||^2``
    (:func:`metric_scales`, ``h`` of mean 1 per scope), computed as the Euclidean prox of
    ``sqrt(h_j) ||z_j||`` with weights ``d_j / h_j`` (:func:`keras_wgsef.prox.metric_prox_scales`).

    Args:
      states: the scopes.
      values: per scope, its variables' current values (tensors, member order).
      lr: the learning rate of this step (a scalar tensor; cast to ``prox_ops.prox_dtype()``).
      ridge: as in :func:`keras_wgsef.prox_ops.prox_scales`.
      metric: optional ``(slots, inverse_step)`` as in :func:`metric_scales`; None: the Euclidean prox.

    Returns:
      ``(S, M)`` float32 factors, positive exactly on the groups left nonzero (0 on the padding);
      row ``s``'s first ``m_s`` entries belong to scope ``s``.
    """
    sizes = [st.num_groups for st in states]
    n, width = len(states), max(sizes)
    table = states[0].table
    if [st.row for st in states] != list(range(n)) or any(st.table is not table for st in states):
        raise ValueError("prox_factors needs every scope of one optimizer, in its order (rows 0..S-1 of one table).")
    dt = prox_ops.prox_dtype()
    norms = padded_norms(states, values)

    def padded(row, m: int):
        return row if m == width else ops.pad(row, ((0, width - m),))

    weights_np = np.ones((n, width))
    for r, st in enumerate(states):
        weights_np[r, : sizes[r]] = st.weights
    weights: Any = weights_np
    if metric is not None:
        h = metric_scales(states, *metric)
        norms = norms * ops.sqrt(h)
        weights = ops.convert_to_tensor(weights_np, dt) / h
    valid = np.arange(width)[None, :] < np.array(sizes)[:, None]
    steps = ops.cast(lr, dt) * ops.cast(prox_ops.read(table.strength), dt)
    protect = None
    if any(st.segments is not None for st in states):
        # a global budget keeps each layer's best group: no layer is emptied (disconnected)
        leads = [
            ops.zeros((width,), dt)
            if st.segments is None
            else padded(prox_ops.segment_leaders(norms[r, :m], weights[r, :m], st.segments), m)
            for r, (st, m) in enumerate(zip(states, sizes))
        ]
        protect = ops.stack(leads)
    k = np.array([st.k for st in states])
    scales = prox_ops.batched_prox_scales(
        norms, weights, k, steps, valid, ridge=ridge, protect=protect, zero_padded=True
    )
    return ops.cast(scales, "float32") * prox_ops.read(table.mask)
