"""``BudgetPlan``: a budget bound to a model and its groups; prices candidate supports and picks one.

A plan holds the model's :class:`~keras_wgsef.budget.lowering.LoweringTemplate` and, for every
group of the (merged, global) scope, the channel class it removes. For any ``keep`` mask over
the groups, :meth:`BudgetPlan.predict` gives the five figures of the int8 model that shrinking to
that support would export: MACs and parameters exactly (the graph's arithmetic), flash bytes,
TFLite Micro arena and instructions from the calibrated models of
:mod:`keras_wgsef.budget.hardware`.

The support the controller freezes is chosen by :meth:`BudgetPlan.select`: starting from the
candidates (the groups still nonzero), remove the group with the lowest *rank per unit cost*,
``rank_j / sqrt(u_j / mean(u))`` with ``u_j = sum_b dcost_b,j / bound_b`` over the bounds still
broken (``dcost`` the predicted saving of removing group j alone; the square root is the
envelope's own metric, ``||x_j|| / sqrt(d_j)`` with ``d_j`` proportional to the cost), until every
bound holds, never below a layer's minimum width. With groups far over budget it removes the
lowest-scoring ones together (their savings summed to half the excess). Then it refills removed
candidates that still fit, and, if the tightest bound is used below ``min_use`` (95 %; a single
group can cost a few percent), tries trading kept groups for a removed costlier one.

The envelope's ``k`` (the number of groups the prox aims at) is the count a *uniformly* thinner
model meeting the budget keeps (each scope scaled by the same fraction, as a width multiplier
does), and the cost weights ``d_j = |G_j| * c_j / mean(c)`` follow the bound that binds hardest
(``c_j`` its predicted saving; the same form as ``make_groups(weights="macs")``).

Example:
  >>> import keras, keras_wgsef as kw
  >>> L = keras.layers
  >>> x = keras.Input((8, 8, 1))
  >>> h = L.Conv2D(16, 3, padding="same", activation="relu", name="c1")(x)
  >>> h = L.Conv2D(32, 3, padding="same", activation="relu", name="c2")(h)
  >>> m = keras.Model(x, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(h)))
  >>> plan = BudgetPlan(m, kw.make_groups(m), kw.Budget(macs=0.25))
  >>> plan.dense["macs"], plan.bounds, plan.k              # k: the uniform 25 % model keeps 7 + 15
  (304192, {'macs': 76048}, 22)
  >>> keep = plan.select(np.linspace(1.0, 2.0, 48))       # rank: later groups are better
  >>> plan.predict(keep)["macs"], int(keep[:16].sum()), int(keep[16:].sum())
  (74930, 5, 25)
  >>> print(plan.summary())                                 # which scope gets which width, which bound binds
  scope  dense width  uniform width  min width
  c1              16              7          5
  c2              32             15         11
  <BLANKLINE>
  bound   limit    dense  uniform  floor  binds
  macs   76,048  304,192   64,542  1,154    yes
  <BLANKLINE>
  uniform: ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_wgsef.budget.budget import COSTS, Budget
from keras_wgsef.budget.lowering import PRICED_PASSES, LoweringTemplate, lowering_template
from keras_wgsef.graph.model_graph import flatten_model, weight_paths
from keras_wgsef.groups.scope import GroupScope

__all__ = ["BudgetError", "BudgetPlan"]


class BudgetError(ValueError):
    """A budget that cannot be planned: already met, below the one-channel-per-layer floor, or wrong groups."""


class BudgetPlan:
    """A :class:`~keras_wgsef.budget.budget.Budget` bound to a model and its channel groups.

    Args:
      model: the built Keras model the groups belong to.
      scopes: its channel groups (:func:`keras_wgsef.make_groups`, kinds ``output_channel`` or
        ``block``), in the order the optimizer merges them.
      budget: the bounds.
      gap_as_avgpool: price ``GlobalAveragePooling2D`` as ``AVERAGE_POOL_2D`` + ``RESHAPE`` (what
        the exporter emits by default) instead of ``MEAN``; the same as naming the pass
        ``global_pool_as_average_pool`` in ``passes``.
      passes: the exporter's passes the plan prices, by name (a subset of
        :data:`~keras_wgsef.budget.lowering.PRICED_PASSES` with ``remove_dead_channels``); None:
        from ``gap_as_avgpool``. The exporter checks that it runs exactly these.
      min_width: every layer keeps at least this fraction of the width the uniformly thinner
        model meeting the budget has (at least one channel); default ``budget.min_width``. A
        global ranking alone narrows the costliest layers (a stem at full resolution) to one
        channel, a bottleneck no later width repairs; 0 lets it.
      name_bytes: bytes of the tensor names in the exported flatbuffer (they do not depend on the
        widths; ``tflite_export.budget_fit.export_name_bytes(model, x)`` measures them). Without
        it the flash prediction estimates them (within ~10 % of the file on small models, 1 %
        with them).

    Attributes:
      dense: predicted figures of the dense model (all five).
      bounds: the absolute bounds (fractions resolved against ``dense``).
      floor: predicted figures with one group per layer (the smallest the groups can reach).
      uniform: the support of the widest uniformly thinner model meeting the bounds (each scope
        keeps its first ``floor(f * m_s)`` groups, the largest such ``f``).
      k: the envelope's group count, ``uniform.sum()``.
      passes: the names of the exporter's passes the predictions price, in the exporter's order.
      min_keep: the fewest groups each scope keeps in :meth:`select`.
      segments: the scope index of every group.

    Raises:
      BudgetError: groups that are not channel groups of ``model``; every bound already met by the
        dense model; a bound below the floor (the message gives the smallest feasible figure).
    """

    def __init__(
        self,
        model: Any,
        scopes: Sequence[GroupScope],
        budget: Budget,
        *,
        gap_as_avgpool: bool = True,
        min_width: float | None = None,
        name_bytes: int | None = None,
        passes: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(budget, Budget):
            raise TypeError(f"budget must be a keras_wgsef.Budget, got {type(budget).__name__}.")
        self.model = model
        self.name_bytes = None if name_bytes is None else int(name_bytes)
        self.budget = budget
        if passes is None:
            passes = PRICED_PASSES if gap_as_avgpool else PRICED_PASSES[:1]
        unknown = [p for p in passes if p not in PRICED_PASSES]
        if unknown or PRICED_PASSES[0] not in passes:
            raise ValueError(
                f"passes {list(passes)}: a budget prices {PRICED_PASSES[0]!r} and optionally "
                f"{list(PRICED_PASSES[1:])}; pass a subset of {list(PRICED_PASSES)} with {PRICED_PASSES[0]!r}."
            )
        self.passes = tuple(p for p in PRICED_PASSES if p in passes)
        graph = flatten_model(model)
        self.template: LoweringTemplate = lowering_template(graph)
        self.scopes = list(scopes)
        self.segments = np.concatenate([np.full(s.num_groups, i) for i, s in enumerate(self.scopes)])
        self.group_classes = self._group_classes()
        self.num_groups = int(self.segments.size)
        self._class_index = {c: j for j, cs in enumerate(self.group_classes) for c in cs}
        shapes = {p: tuple(w.shape) for p, w in weight_paths(graph).items()}
        self.sizes = np.concatenate([s.sizes(shapes) for s in self.scopes]).astype(np.float64)
        full = np.ones(self.num_groups, bool)
        self.dense = self.predict(full)
        self.bounds = budget.resolve(self.dense)
        self.floor = self.predict(self._one_per_segment(np.ones(self.num_groups)))
        self._check()
        self.uniform = self._uniform_support()
        self.k = int(self.uniform.sum())
        self.min_width = float(budget.min_width if min_width is None else min_width)
        self.min_keep = {
            int(sid): max(1, int(np.floor(self.min_width * self.uniform[self.segments == sid].sum())))
            for sid in np.unique(self.segments)
        }

    # ------------------------------------------------------------ structure
    def _group_classes(self) -> list[list[int]]:
        a = self.template.analysis
        classes: list[list[int]] = []
        for s in self.scopes:
            per_group: list[set[int]] = [set() for _ in range(s.num_groups)]
            for mb in s.members:
                if mb.axis is None:
                    raise BudgetError(
                        f"scope {s.name!r}: member {mb.path!r} is not a channel group; a budget needs channel "
                        "groups (kw.make_groups(model) with kind 'output_channel' or 'block')."
                    )
                ids = a.param_ids.get(mb.path, (None, None))[1]
                if ids is None or len(ids) != len(mb.index):
                    raise BudgetError(
                        f"scope {s.name!r}: member {mb.path!r} does not name a channel of this model's layers; "
                        "build the groups from this model with kw.make_groups(model)."
                    )
                for root, gid in zip(a.roots(ids).tolist(), np.asarray(mb.index).tolist()):
                    per_group[gid].add(int(root))
            classes.extend(sorted(g) for g in per_group)
        return classes

    def _one_per_segment(self, rank: np.ndarray) -> np.ndarray:
        keep = np.zeros(self.num_groups, bool)
        for sid in np.unique(self.segments):
            members = np.flatnonzero(self.segments == sid)
            keep[members[np.argmax(rank[members])]] = True
        return keep

    def _check(self) -> None:
        met = {c: b for c, b in self.bounds.items() if self.dense[c] <= b}
        if len(met) == len(self.bounds):
            shown = ", ".join(f"{c} {self.dense[c]:,} <= {b:,}" for c, b in met.items())
            raise BudgetError(
                f"the dense model already meets the budget ({shown}): nothing to remove. Lower a bound "
                "(a fraction in (0, 1) of the dense figure, or an absolute figure below it)."
            )
        for c, b in self.bounds.items():
            if self.floor[c] > b:
                raise BudgetError(
                    f"Budget({c}={self.budget.bounds[c]!r}) = {b:,} is below what these groups can reach while "
                    f"keeping one channel per layer: the smallest feasible {c} is {self.floor[c]:,} (dense "
                    f"{self.dense[c]:,}). Raise the bound to at least {self.floor[c]:,}, or group more layers."
                )

    # ------------------------------------------------------------ rendering
    def summary(self, *, markdown: bool = False) -> str:
        """Which width each scope gets and which bound binds, as two tables (text, or Markdown).

        Per scope: its dense width (groups), the width of the uniformly thinner model that meets
        the budget (:attr:`uniform`, whose total is ``k``) and the floor :meth:`select` keeps
        (:attr:`min_keep`, "min width"). Per bound: the limit and the predicted figure of the dense,
        the uniform and the floor model (:attr:`floor`, one group per scope), and which bound binds
        (:meth:`binding`).

        The module's example prints one.
        """
        from keras_wgsef.tables import format_table

        scopes = [
            (s.name, s.num_groups, int(self.uniform[self.segments == i].sum()), self.min_keep[i])
            for i, s in enumerate(self.scopes)
        ]
        uniform = self.predict(self.uniform, tuple(self.bounds))
        binding = self.binding()
        bounds = [(c, b, self.dense[c], uniform[c], self.floor[c], c == binding) for c, b in self.bounds.items()]
        return "\n\n".join(
            [
                format_table(("scope", "dense width", "uniform width", "min width"), scopes, markdown=markdown),
                format_table(("bound", "limit", "dense", "uniform", "floor", "binds"), bounds, markdown=markdown),
                f"uniform: every scope scaled by one fraction (k = {self.k} groups); floor: one group per scope; "
                "min width: the fewest groups select() keeps per scope; binds: the bound that needs the largest cut",
            ]
        )

    def _repr_markdown_(self) -> str:
        return self.summary(markdown=True)

    @property
    def gap_as_avgpool(self) -> bool:
        """Whether global average pooling is priced as ``AVERAGE_POOL_2D`` (``global_pool_as_average_pool``)."""
        return PRICED_PASSES[1] in self.passes

    # -------------------------------------------------------------- pricing
    def lowered(self, keep: np.ndarray) -> Any:
        """The :class:`~keras_wgsef.budget.lowered.LoweredModel` of the support ``keep``."""
        keep = np.asarray(keep, bool)
        mapping = {c: bool(keep[j]) for j, cs in enumerate(self.group_classes) for c in cs}
        return self.template.lower(mapping, gap_as_avgpool=self.gap_as_avgpool)

    def predict(self, keep: np.ndarray, costs: Sequence[str] = COSTS) -> dict[str, int]:
        """Predicted figures of the exported model when only the groups in ``keep`` remain."""
        from keras_wgsef.budget import hardware

        lm = self.lowered(keep)
        out: dict[str, int] = {}
        if "macs" in costs:
            out["macs"] = int(sum(op.macs for op in lm.ops))
        if "params" in costs:
            out["params"] = int(sum(op.weight_elems + op.bias_elems for op in lm.ops))
        hw = [c for c in costs if c in ("flash_bytes", "arena_bytes", "instructions")]
        if hw:
            predicted = hardware.predict(lm, name_bytes=self.name_bytes)
            out.update({c: int(predicted[c]) for c in hw})
        return out

    def fits(self, costs: Mapping[str, float]) -> bool:
        """Every bound holds for ``costs``."""
        return all(costs[c] <= b for c, b in self.bounds.items())

    def use(self, costs: Mapping[str, float]) -> float:
        """How much of the tightest bound ``costs`` use: ``max_b cost_b / bound_b`` (1.0 = exactly at it)."""
        return max(costs[c] / b for c, b in self.bounds.items())

    def binding(self) -> str:
        """The bound that needs the largest relative cut from the dense model."""
        return max(self.bounds, key=lambda c: self.dense[c] / self.bounds[c])

    def savings(self, keep: np.ndarray, cost: str, candidates: np.ndarray | None = None) -> np.ndarray:
        """Predicted saving of ``cost`` when each candidate group is removed alone from ``keep`` (0 elsewhere)."""
        keep = np.asarray(keep, bool)
        cand = keep if candidates is None else (np.asarray(candidates, bool) & keep)
        base = self.predict(keep, (cost,))[cost]
        out = np.zeros(self.num_groups)
        for j in np.flatnonzero(cand):
            trial = keep.copy()
            trial[j] = False
            out[j] = base - self.predict(trial, (cost,))[cost]
        return out

    def cost_weights(self, cost: str | None = None) -> np.ndarray:
        """``d_j = |G_j| * c_j / mean(c)``, ``c_j`` the predicted saving of ``cost`` (default: the binding bound)."""
        c = self.savings(np.ones(self.num_groups, bool), cost or self.binding())
        c = np.maximum(c, 1e-3 * max(float(np.mean(c)), 1e-12))
        return self.sizes * c / float(np.mean(c))

    # ------------------------------------------------------------ selection
    def _uniform_support(self) -> np.ndarray:
        """The widest uniform scaling of every scope that meets the bounds."""
        lo, hi = 0.0, 1.0
        best = self._uniform(0.0)
        for _ in range(30):
            mid = (lo + hi) / 2
            keep = self._uniform(mid)
            if self.fits(self.predict(keep, tuple(self.bounds))):
                lo, best = mid, keep
            else:
                hi = mid
        return best

    def _uniform(self, fraction: float) -> np.ndarray:
        keep = np.zeros(self.num_groups, bool)
        for sid in np.unique(self.segments):
            members = np.flatnonzero(self.segments == sid)
            keep[members[: max(1, int(np.floor(fraction * members.size + 1e-9)))]] = True
        return keep

    def select(self, rank: np.ndarray, candidates: np.ndarray | None = None, *, min_use: float = 0.95) -> np.ndarray:
        """The support to freeze: the candidates minus the lowest rank-per-cost groups until every bound holds.

        Args:
          rank: score of every group (higher is better; the prox's ``||x_j|| / sqrt(d_j)``).
          candidates: groups that may be kept (default all; pass the nonzero groups).
          min_use: when the support found uses less than this share of its tightest bound (a
            group's cost is coarse), try trading kept groups for a removed costlier one.

        Returns:
          boolean keep mask; each scope keeps at least its best candidate.
        """
        rank = np.asarray(rank, np.float64).reshape(-1)
        if rank.size != self.num_groups:
            raise ValueError(f"rank has {rank.size} entries; the plan has {self.num_groups} groups.")
        keep = np.ones(self.num_groups, bool) if candidates is None else np.asarray(candidates, bool).copy()
        keep |= self._one_per_segment(np.where(keep, rank, -np.inf) if keep.any() else rank)
        return self._reduce(keep, keep.copy(), rank, min_use)

    def _reduce(self, keep: np.ndarray, pool: np.ndarray, rank: np.ndarray, min_use: float = 0.0) -> np.ndarray:
        """Removes the lowest rank-per-cost groups of ``keep`` until every bound holds, then refills."""
        keep = keep.copy()
        while True:
            costs = self.predict(keep, tuple(self.bounds))
            broken = {c: b for c, b in self.bounds.items() if costs[c] > b}
            if not broken:
                keep = self._fill(keep, pool, rank)
                return self._trade(keep, pool, rank, min_use)
            removable = keep.copy()
            for sid in np.unique(self.segments):
                if keep[self.segments == sid].sum() <= self.min_keep[int(sid)]:
                    removable[self.segments == sid] = False
            if not removable.any():
                return keep  # the floor: _check refused budgets below it, so only prediction noise lands here
            saving = {c: self.savings(keep, c, removable) for c in broken}
            unit: np.ndarray = np.sum([saving[c] / b for c, b in broken.items()], axis=0)
            relative = unit / max(float(np.mean(unit[removable])), 1e-300)
            score = np.where(removable & (unit > 0), rank / np.sqrt(np.maximum(relative, 1e-300)), np.inf)
            if not np.isfinite(score).any():
                score = np.where(removable, rank, np.inf)
            order = np.argsort(score, kind="stable")
            order = order[np.isfinite(score[order])]
            # remove together the lowest scores whose savings cover half of the largest relative excess
            excess = max((costs[c] - b) / b for c, b in broken.items())
            taken, covered = [], 0.0
            seg_left = {int(s): int(keep[self.segments == s].sum()) for s in np.unique(self.segments)}
            for j in order:
                s = int(self.segments[j])
                if seg_left[s] <= self.min_keep[s]:
                    continue
                taken.append(j)
                seg_left[s] -= 1
                covered += float(unit[j]) / max(len(broken), 1)
                if covered >= excess / 2:
                    break
            if not taken:  # nothing left that may go (minimum widths, locked groups): the caller checks fits()
                return keep
            keep[taken[:1] if excess < 0.02 else taken] = False

    def _trade(self, keep: np.ndarray, pool: np.ndarray, rank: np.ndarray, min_use: float) -> np.ndarray:
        """If ``keep`` uses less than ``min_use`` of its tightest bound: add one removed candidate, reduce again.

        Tries the ten best removed candidates by rank; each trade keeps the candidate's layer as it
        is (plus the candidate) and makes room in the other layers. Keeps the trade that uses the
        bound most.
        """
        if min_use <= 0:
            return keep
        use = self.use(self.predict(keep, tuple(self.bounds)))
        if use >= min_use:
            return keep
        best, best_use = keep, use
        out = np.flatnonzero(pool & ~keep & (rank > 0))
        for j in out[np.argsort(-rank[out], kind="stable")][:10]:
            trial = keep.copy()
            trial[j] = True
            same_layer = self.segments == self.segments[j]
            trial = self._reduce(trial, pool, np.where(same_layer & trial, np.inf, rank))
            u = self.use(self.predict(trial, tuple(self.bounds)))
            if self.fits(self.predict(trial, tuple(self.bounds))) and u > best_use:
                best, best_use = trial, u
        return best

    def _fill(self, keep: np.ndarray, pool: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Adds back removed candidates (best rank per unit cost first) while every bound still holds."""
        keep = keep.copy()
        while True:
            out = np.flatnonzero(pool & ~keep & (rank > 0))
            if out.size == 0:
                return keep
            costs = self.predict(keep, tuple(self.bounds))
            best, best_score = -1, -np.inf
            for j in out:
                trial = keep.copy()
                trial[j] = True
                after = self.predict(trial, tuple(self.bounds))
                if not self.fits(after):
                    continue
                unit = sum((after[c] - costs[c]) / b for c, b in self.bounds.items())
                score = rank[j] / np.sqrt(max(unit, 1e-300))
                if score > best_score:
                    best, best_score = int(j), score
            if best < 0:
                return keep
            keep[best] = True
