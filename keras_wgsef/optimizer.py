"""``WGSEF``: a Keras 3 optimizer wrapper that follows every inner step with the WGSEF prox.

Proximal gradient with any Keras optimizer inside::

    x <- inner_step(x, grad)                       # Adam, SGD, ... (its own state)
    x <- prox_{eta_t * lam_s * WGSEF_{k_s}}(x)     # per scope s, eta_t the current learning rate

The prox acts on each scope's groups (:class:`keras_wgsef.GroupScope`) and only rescales them
(group j by ``theta_j / (theta_j + eta_t lam_s d_j)``, exactly zero when ``theta_j = 0``). With
SGD this is the proximal gradient method of the paper. A diagonal-preconditioned step (Adam, AdamW,
Nadam, Adamax, RMSprop, Adagrad) moves coordinate i by ``eta_t * direction_i / q_i`` (``q = sqrt(v) +
eps`` for Adam); the prox that matches it is the one in the metric of that step,
``argmin_x sum_j h_j / (2 eta_t) ||x_j - z_j||^2 + lam_s WGSEF(x)``. ``metric="auto"`` uses it with
one ``h_j`` per group, the group mean of ``q`` divided by its mean over the scope's groups
(:func:`keras_wgsef.prox.metric_prox_scales`): group j is dropped by ``h_j ||x_j|| / sqrt(d_j)``,
so a group whose coordinates take small steps needs a smaller norm to go. The exact metric prox
with ``h' = c h`` and ``lam' = c lam`` is the same operator, so the normalisation only
reparametrises the strength: ``lam_s`` keeps its meaning (a uniform ``h`` is the Euclidean prox)
and the controllers' presets stay calibrated. ``metric="auto"`` is the default;
``metric="euclidean"`` is the Euclidean prox after any step, a heuristic after a preconditioned
one (on the benchmarks' anchor CNN at 25 % of the channels, Adam 2e-2 with cosine decay, it was
2 points below the metric prox: ``benchmarks/OPTIMIZERS.md``).

``ridge=True`` (the default) is the exact prox of ``WGSEF``: the groups the envelope keeps
(``theta_j = 1``) are shrunk by the ridge factor ``1 / (1 + eta_t lam_s d_j)``. ``ridge=False``
leaves them unshrunk, so the prox only acts on the groups on their way out; it allows the strong
fixed-rate prox of :class:`~keras_wgsef.callbacks.ReachK`'s ``"fixed"`` preset, which
``ReachK()`` then picks (with SGD at 0.1 or Adam at 2e-2, cosine decay, it matched or beat the
thin model trained the same way: ``benchmarks/OPTIMIZERS.md``).

The optimizer owns one :class:`keras_wgsef.scope_state.ScopeState` per scope (``opt.scopes``): its
groups, ``k``, weights ``d_j`` and variables, and its row of four optimizer variables that
checkpoints keep (:class:`keras_wgsef.scope_state.ScopeTable`): ``strength`` (``lam_s``; 0 turns
the penalty off), ``mask`` (1 keeps a group, 0 pins it at zero: the frozen support),
``attenuation`` (the product of the prox factors since the last freeze, used to undo the prox's
shrink of the kept groups) and ``nonzero`` (groups left nonzero by the last prox).
Controllers (:mod:`keras_wgsef.controller`) read and drive a scope only through the methods of
its :class:`ScopeState` (``set_strength``, ``group_norms``, ``freeze``, ...).

References:
  Refael, Arbel, Huleihel, "Learning k-Level Structured Sparse Neural Networks Using Group
  Envelope Regularization", arXiv:2212.12921 (TMLR 2024).

Example:
  >>> import keras, keras_wgsef as kw
  >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="h"), keras.layers.Dense(2)])
  >>> opt = kw.WGSEF(keras.optimizers.SGD(0.1), k=4, lam=1e-3)
  >>> model.compile(optimizer=opt, loss="mse")
  >>> opt.build(model.trainable_variables)
  >>> [(s.name, s.num_groups, s.k) for s in opt.scopes]
  [('h', 16, 4)]
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

import keras
import numpy as np
from keras import ops

from keras_wgsef import prox_ops
from keras_wgsef.budget.budget import Budget
from keras_wgsef.groups.default import groups_from_paths
from keras_wgsef.groups.scope import GroupScope, match_variables, merge_scopes
from keras_wgsef.legacy import envelope_from_kwargs, per_scope_state_as_table
from keras_wgsef.scope_state import ScopeState, ScopeTable, prox_factors

#: the Keras backends WGSEF trains on (each tested by `make test`)
TRAINING_BACKENDS = ("tensorflow", "jax", "torch")

__all__ = ["WGSEF", "KSpec", "ScopeState", "find_wgsef", "resolve_k"]

KSpec = int | float | Mapping[str, int | float]


def _lookup(spec: Any, name: str, what: str) -> Any:
    """Value of a scalar-or-{regex: value} spec for one scope name."""
    if isinstance(spec, Mapping):
        for pattern, value in spec.items():
            if re.search(pattern, name):
                return value
        raise ValueError(
            f"{what}: no pattern of {list(spec)} matches scope {name!r}; add a pattern for it "
            "(e.g. '.*' as a catch-all)."
        )
    return spec


def _check_k_spec(k: Any) -> None:
    """What can be checked before the groups are known: the type, a fraction's range, an int's sign."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, float, np.integer, np.floating)):
        raise TypeError(f"k must be an int (groups kept) or a float fraction in (0, 1), got {k!r}.")
    if isinstance(k, (float, np.floating)) and not 0.0 < float(k) < 1.0:
        raise ValueError(
            f"k = {k}: a float k is the fraction of groups kept and must lie in (0, 1); use an int for a count."
        )
    if isinstance(k, (int, np.integer)) and int(k) < 1:
        raise ValueError(f"k = {k}: keep at least one group (k >= 1; the upper bound m - 1 is checked per scope).")


def resolve_k(k: int | float, scope: GroupScope) -> int:
    """The integer k of a scope: an int as given, a float in (0, 1) as a fraction of its groups.

    Raises with the legal range unless ``1 <= k <= m - 1`` (``k >= m`` would regularize without
    sparsity and ``k <= 0`` would zero the scope).

    Example:
      >>> import numpy as np
      >>> from keras_wgsef.groups.scope import GroupScope, Member
      >>> resolve_k(0.25, GroupScope("c", (Member("c/kernel", -1, np.arange(8)),)))
      2
    """
    m = scope.num_groups
    paths = ", ".join(scope.paths[:3])
    if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)):
        raise TypeError(f"k for scope {scope.name!r} must be an int or a float fraction, got {type(k).__name__}.")
    if isinstance(k, (float, np.floating)):
        if not 0.0 < float(k) < 1.0:
            raise ValueError(
                f"k = {k} for scope {scope.name!r} ({paths}): a float k is the fraction of groups kept "
                "and must lie in (0, 1); use an int for a count."
            )
        k = max(1, min(m - 1, round(float(k) * m)))
    k = int(k)
    if not 1 <= k <= m - 1:
        raise ValueError(
            f"k = {k} is out of range for scope {scope.name!r} ({paths}): it has m = {m} groups, "
            f"so k must be in [1, {m - 1}]."
        )
    return k


METRICS = ("auto", "euclidean")


def _base_optimizer(opt: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that steps, inside any ``LossScaleOptimizer``."""
    while isinstance(opt, keras.optimizers.LossScaleOptimizer):
        opt = opt.inner_optimizer
    return opt


def _nadam_epsilon(opt):
    """Nadam's ``eps`` as it enters ``sqrt(v) + eps'``: it divides by ``sqrt(1 - beta_2^t)`` after adding eps."""
    t = ops.cast(opt.iterations, "float32")  # read after the step: the t of the step just taken
    return opt.epsilon * ops.sqrt(1.0 - ops.power(ops.cast(opt.beta_2, "float32"), t))


def _rmsprop_rule(opt):
    if opt.centered:
        return [opt._velocities, opt._average_gradients], lambda v, g: ops.sqrt(v - ops.square(g) + opt.epsilon)
    return [opt._velocities], lambda v: ops.sqrt(v + opt.epsilon)


#: per Keras optimizer class, ``opt -> (slot lists, inverse_step)``: the inner optimizer's
#: per-coordinate step is ``lr_t * direction / inverse_step(*slots)`` with ``lr_t`` common to every
#: coordinate (Keras 3's update rules; a constant factor cancels in the per-scope normalisation)
_SECOND_MOMENT_RULES: dict[type, Any] = {
    keras.optimizers.Adam: lambda o: (  # AdamW too: its decay is decoupled from the step
        [o._velocity_hats if o.amsgrad else o._velocities],
        lambda v: ops.sqrt(v) + o.epsilon,
    ),
    keras.optimizers.Nadam: lambda o: ([o._velocities], lambda v: ops.sqrt(v) + _nadam_epsilon(o)),
    keras.optimizers.Adamax: lambda o: ([o._u], lambda u: u + o.epsilon),
    keras.optimizers.RMSprop: _rmsprop_rule,
    keras.optimizers.Adagrad: lambda o: ([o._accumulators], lambda acc: ops.sqrt(acc + o.epsilon)),
}
#: optimizers whose step scale is the same for every coordinate: the Euclidean prox is the metric one
_EUCLIDEAN_STEP = (keras.optimizers.SGD, keras.optimizers.Lion)


def _known_rule(opt: keras.optimizers.Optimizer, classes) -> type | None:
    """The class of ``classes`` whose update rule ``opt`` runs (a subclass that overrides ``update_step`` has none)."""
    for cls in classes:
        if isinstance(opt, cls) and type(opt).update_step is cls.update_step:
            return cls
    return None


def _check_metric(metric: str, inner: keras.optimizers.Optimizer) -> None:
    """Refuses an unknown ``metric``; warns once when ``"auto"`` meets an optimizer of unknown update rule."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    base = _base_optimizer(inner)
    if metric == "auto" and _known_rule(base, [*_SECOND_MOMENT_RULES, *_EUCLIDEAN_STEP]) is None:
        import warnings

        warnings.warn(
            f"WGSEF(metric='auto') does not know the update rule of {type(base).__name__}: the prox stays "
            "Euclidean (as metric='euclidean'). Its metric is known for Adam, AdamW, Nadam, Adamax, RMSprop, "
            "Adagrad (and SGD, Lion, where it is the Euclidean one).",
            UserWarning,
            stacklevel=3,
        )


#: per optimizer, its prox-and-assign compiled with XLA (kept off the optimizer: TensorFlow would
#: track a tf.function attribute as part of the object)
_COMPILED_PROX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled_prox(opt: WGSEF) -> Any:
    """``lr -> None``: the optimizer's prox and assignments as one XLA-compiled TensorFlow function.

    One function per set of the scopes' Python-side constants (``k``, weights ``d_j``), which enter
    the prox when it is traced: a retarget followed by a new trace of the step gets a new function.
    """
    key = tuple((st.k, np.asarray(st.weights).tobytes()) for st in opt.scopes)
    functions = _COMPILED_PROX.setdefault(opt, {})
    if key not in functions:
        import tensorflow as tf

        @tf.function(jit_compile=True, autograph=False)
        def prox(lr):
            opt._prox_assign(lr, lambda var, value, factor: var.assign(value * factor))
            return tf.constant(0)

        functions[key] = prox
    return functions[key]


def _rows(matrix, sizes: Sequence[int]) -> list:
    """The first ``sizes[r]`` entries of each row ``r`` of an ``(S, M)`` tensor, by one split."""
    if len(sizes) == 1:  # one scope: its row is the whole width
        return [matrix[0]]
    width = int(matrix.shape[1])
    cuts = [c for r, m in enumerate(sizes) for c in (r * width + m, (r + 1) * width)][:-1]
    return ops.split(ops.reshape(matrix, (-1,)), cuts)[::2]


@keras.saving.register_keras_serializable(package="keras_wgsef")
class WGSEF(keras.optimizers.Optimizer):
    """Wraps a Keras optimizer and applies the WGSEF prox after each of its steps.

    Args:
      inner_optimizer: any ``keras.optimizers.Optimizer`` (Adam, SGD, AdamW, ...).
      k: groups kept per scope: an int, a float fraction in (0, 1), or ``{path-regex: k}``
        (first match wins; default 0.5). Scopes built with their own ``k`` keep it. Not with ``budget``.
      budget: a :class:`keras_wgsef.Budget` (MACs, parameters, flash, arena, instructions) instead
        of ``k``: one global envelope over ``groups`` (channel groups from
        :func:`keras_wgsef.make_groups`), whose ``k`` and cost weights ``d_j`` come from the
        budget's plan (:class:`keras_wgsef.BudgetPlan`; groups built with explicit ``weights``
        keep theirs). The plan needs the model:
        :class:`keras_wgsef.callbacks.ReachK` binds it when ``fit`` starts; a custom loop calls
        :meth:`bind` first. The controller then freezes a support whose predicted costs meet
        every bound.
      lam: initial strength ``lam_s`` per scope (float or ``{path-regex: lam}``), ``>= 0``. The
        prox step is ``learning_rate * lam``. Controllers raise or lower it during training.
      groups: the scopes to regularize: a list of :class:`GroupScope` (from
        :func:`keras_wgsef.make_groups`, which couples biases and BatchNorm and follows residual
        connections), or None for output-channel groups inferred from the variable paths
        (kernel + bias of each layer, classifier head excluded; see
        :func:`keras_wgsef.groups.groups_from_paths`).
      envelope: ``"layer"`` (one envelope per scope, the paper's per-layer k; the default without a
        budget) or ``"model"`` (all
        scopes merged into one envelope: a global budget; pass an int k or a fraction). A global
        budget keeps at least one group per layer: at every prox step each layer's best group
        (by ``||x_j|| / sqrt(d_j)``) is protected (ridge only) and the envelope decides the other
        ``k - layers`` (:func:`keras_wgsef.prox_ops.segment_leaders`); otherwise a layer whose
        channels all go disconnects the network. ``k`` must be at least the number of layers.
      ridge: True (default) is the exact prox of ``lam_s * WGSEF``. False leaves groups with
        ``theta = 1`` unshrunk: the kept groups are not penalised, the others are shrunk and
        dropped as by the exact prox; :class:`~keras_wgsef.callbacks.ReachK` then uses its
        fixed-rate preset (the recipe of the README's quickstart).
      include / exclude: regexes on variable paths used when ``groups`` is None.
      name: optimizer name.
      xla_prox: compile the prox-and-assign of each step as one XLA cluster (TensorFlow backend,
        one replica; ignored elsewhere), at the cost of one XLA compile per model (0.3-2 s). Off
        by default: on a 2-core CPU the XLA executable runs its ~100 thunks no faster than
        TensorFlow runs the ~120 small operations of the plain prox (profiled:
        ``benchmarks/overhead_breakdown.py``); it may pay off on other hosts.
      metric: ``"auto"`` (default): after Adam, AdamW, Nadam, Adamax,
        RMSprop or Adagrad, the prox in the metric of their step (module docstring), read from the
        inner optimizer's second moments after its step, one per group, normalised to mean 1 per
        scope (one more segment sum per step); SGD and Lion step every coordinate alike, so theirs
        is the Euclidean prox. Another optimizer class (or a subclass with its own
        ``update_step``) gets a warning and the Euclidean prox. ``"euclidean"``: the prox of
        ``learning_rate * lam_s * WGSEF`` in the Euclidean metric after any inner step.

    The inner optimizer's ``use_ema=True`` works: its moving averages are multiplied by the same
    prox factors as the weights (and zeroed with them by ``freeze``), so they keep the weights'
    support and the averages swapped in at the end of ``fit`` keep exactly the kept groups.
    Decoupled weight decay (AdamW) is multiplicative and runs before the prox: a group the prox
    or a frozen mask holds at zero stays exactly zero. With ``gradient_accumulation_steps``, the
    prox acts on the steps where the inner update fires and is the identity in between.

    Example:
      >>> import keras, keras_wgsef as kw
      >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="h"), keras.layers.Dense(2)])
      >>> opt = kw.WGSEF(keras.optimizers.Adam(1e-2), k=2, groups=kw.make_groups(m), metric="auto")
      >>> opt.apply([keras.ops.ones(v.shape) for v in m.trainable_variables], m.trainable_variables)
      >>> opt.scopes[0].nonzero_count() >= 2
      True
    """

    def __init__(
        self,
        inner_optimizer: keras.optimizers.Optimizer,
        k: KSpec | None = None,
        lam: float | Mapping[str, float] = 1e-3,
        groups: Sequence[GroupScope] | None = None,
        envelope: str | None = None,
        budget: Budget | Mapping[str, float] | None = None,
        ridge: bool = True,
        include: str | None = None,
        exclude: str | None = None,
        name: str | None = None,
        xla_prox: bool = False,
        metric: str = "auto",
        **kwargs: Any,
    ) -> None:
        envelope = envelope_from_kwargs(kwargs, envelope)  # the 0.1 name ``scope``, with a warning
        if kwargs:
            raise ValueError(f"WGSEF does not take {sorted(kwargs)}; set them on the inner optimizer.")
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                f"inner_optimizer must be a keras.optimizers.Optimizer, got {type(inner_optimizer).__name__}."
            )
        _check_metric(metric, inner_optimizer)
        if isinstance(budget, Mapping):  # from get_config
            budget = Budget.from_config(budget)
        if budget is not None:
            if not isinstance(budget, Budget):
                raise TypeError(f"budget must be a keras_wgsef.Budget, got {type(budget).__name__}.")
            if k is not None:
                raise ValueError(
                    f"WGSEF got both k={k!r} and budget={budget.bounds}: with a budget, k comes from the budget's "
                    "plan. Pass one of them."
                )
            if envelope not in (None, "model"):
                raise ValueError(
                    f"a budget is one global envelope across layers (envelope='model'), got envelope={envelope!r}."
                )
            if groups is None:
                raise ValueError(
                    "a budget needs channel groups to price: pass groups=kw.make_groups(model) (kind "
                    "'output_channel' or 'block')."
                )
            envelope = "model"
        envelope = envelope or "layer"
        k = 0.5 if k is None and budget is None else k
        if envelope not in ("layer", "model"):
            raise ValueError(
                f"envelope must be 'layer' (one per scope) or 'model' (one global budget), got {envelope!r}."
            )
        for value in lam.values() if isinstance(lam, Mapping) else [lam]:
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
                value, (bool, np.bool_)
            )
            if not (number and np.isfinite(value) and value >= 0):
                raise ValueError(f"lam must be a finite number >= 0 (or a mapping to such numbers), got {value!r}.")
        for value in k.values() if isinstance(k, Mapping) else [] if k is None else [k]:
            _check_k_spec(value)
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self.k = k
        self.lam = lam
        self.groups = None if groups is None else list(groups)
        self.envelope = envelope
        self.ridge = bool(ridge)
        self.include = include
        self.exclude = exclude
        self.budget = budget
        self.plan: Any = None  # the BudgetPlan, once bound to a model
        self.scopes: list[ScopeState] = []
        self.xla_prox = bool(xla_prox)
        self.metric = metric
        self._inverse_step: Any = None  # the inner optimizer's metric, once built (None: Euclidean)

    def bind(self, model: keras.Model, *, name_bytes: int | None = None) -> Any:
        """Binds the budget to ``model``: plans it (``k``, cost weights) and returns the :class:`BudgetPlan`.

        Called by :class:`keras_wgsef.callbacks.ReachK` when ``fit`` starts; call it yourself before
        a custom training loop. Raises :class:`keras_wgsef.BudgetError` for a budget the model
        already meets or cannot reach, before any training step. Without a budget it does nothing.
        ``name_bytes`` makes the flash prediction exact (see :class:`keras_wgsef.BudgetPlan`); once
        bound to ``model``, later calls keep the plan.
        """
        if self.budget is None:
            return None
        if self.plan is None or self.plan.model is not model:
            from keras_wgsef.budget.plan import BudgetPlan

            self.plan = BudgetPlan(model, self.groups or [], self.budget, name_bytes=name_bytes)
        if self.scopes:
            self.scopes[0].retarget(self.plan.k, self._budget_weights())
        return self.plan

    def _budget_weights(self) -> np.ndarray | None:
        """The plan's cost weights, unless the groups carry weights of their own (then None: keep them)."""
        if any(s.weights is not None for s in self.groups or []):
            return None
        return self.plan.cost_weights()

    # ------------------------------------------------------------------ build
    def _resolve_scopes(self, var_list: Sequence[keras.Variable]) -> tuple[list[GroupScope], dict[str, Any]]:
        scopes = self.groups
        if scopes is None:
            scopes = groups_from_paths(var_list, include=self.include, exclude=self.exclude)
        if not scopes:
            raise ValueError(
                "WGSEF found no variable to regularize: the include/exclude patterns or groups select nothing "
                f"among {len(var_list)} trainable variables (e.g. {[v.path for v in var_list][:4]}). "
                "Nothing would be sparse."
            )
        seen: dict[str, str] = {}
        for s in scopes:
            for p in s.paths:
                if p in seen:
                    raise ValueError(
                        f"variable {p!r} is in scopes {seen[p]!r} and {s.name!r}; each variable may be in one scope."
                    )
                seen[p] = s.name
        members = [mb for s in scopes for mb in s.members]
        by_member = match_variables(members, var_list, what="the trainable variables being optimized")
        shapes = {p: tuple(v.shape) for p, v in by_member.items()}
        for s in scopes:
            s.validate(shapes)
        if self.envelope == "model" and len(scopes) > 1:
            scopes = [merge_scopes(scopes, "model", shapes)]
        return list(scopes), by_member

    def build(self, var_list: Sequence[keras.Variable]) -> None:
        # the inner optimizer builds with Keras' tracking on: Nadam keeps a variable in an attribute
        # (``_u_product``), which only tracking puts among its variables (saved, and stepped under JAX)
        self.inner_optimizer.build(var_list)
        self._build_own(var_list)

    @keras.src.utils.tracking.no_automatic_dependency_tracking  # as LossScaleOptimizer.build: no public equivalent
    def _build_own(self, var_list: Sequence[keras.Variable]) -> None:
        scopes, by_member = self._resolve_scopes(var_list)
        shapes = {p: tuple(v.shape) for p, v in by_member.items()}
        self.scopes = []
        resolved = []
        for s in scopes:
            if self.budget is not None:  # provisional until bind(): the plan sets k and the weights
                k = self.plan.k if self.plan is not None else max(1, s.num_groups // 2)
            else:
                k = resolve_k(s.k if s.k is not None else _lookup(self.k, s.name, "k"), s)
            layers = 0 if s.segments is None else np.unique(s.segments).size
            if 0 < k < layers:
                raise ValueError(
                    f"a global budget of k = {k} groups over {layers} layers cannot keep one group per layer "
                    f"(scope {s.name!r}); use k between {layers} and {s.num_groups}, or envelope='layer'."
                )
            resolved.append((s, k, float(_lookup(self.lam, s.name, "lam"))))
        sizes = [s.num_groups for s in scopes]
        shape = (len(scopes), max(sizes))

        def values(array):  # an initializer (no assignment: build may run inside a traced step)
            return lambda shape, dtype=None: ops.convert_to_tensor(array, dtype)

        table = ScopeTable(
            strength=self.add_variable(
                shape[:1], initializer=values([lam0 for _, _, lam0 in resolved]), dtype="float32", name="strength"
            ),
            mask=self.add_variable(shape, initializer="ones", dtype="float32", name="mask"),
            attenuation=self.add_variable(shape, initializer="ones", dtype="float32", name="attenuation"),
            nonzero=self.add_variable(shape[:1], initializer=values(sizes), dtype="int32", name="nonzero"),
        )
        for row, (s, k, _) in enumerate(resolved):
            variables = [by_member[p] for p in s.paths]
            self.scopes.append(ScopeState(s, k, s.resolved_weights(shapes), variables, table, row))
        self._skipped = self.add_variable((), initializer="zeros", dtype="int32", name="skipped_steps")
        # the step of the last learning-rate rewind (0: none): an optimizer variable, so checkpointed
        self._rewind_step = self.add_variable((), initializer="zeros", dtype="int32", name="rewind_step")
        self._bind_inner_state()
        super().build(var_list)
        if self.plan is not None:
            self.scopes[0].retarget(self.plan.k, self._budget_weights())

    def _bind_inner_state(self) -> None:
        """Each scope's view of the built inner optimizer's per-variable state: its metric slots and EMA copies."""
        base = _base_optimizer(self.inner_optimizer)
        index = base._get_variable_index  # Keras' own map from a variable to its slots (no public one)
        cls = _known_rule(base, _SECOND_MOMENT_RULES) if self.metric == "auto" else None
        slot_lists, self._inverse_step = _SECOND_MOMENT_RULES[cls](base) if cls is not None else ([], None)
        averages = base._model_variables_moving_average if base.use_ema else None
        for state in self.scopes:
            state.slots = [tuple(slots[index(v)] for slots in slot_lists) for v in state.variables]
            state.ema = None if averages is None else [averages[index(v)] for v in state.variables]

    @property
    def variables(self) -> list[keras.Variable]:
        return self._variables + self.inner_optimizer.variables

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because a gradient was not finite (no inner step, no prox)."""
        return int(keras.ops.convert_to_numpy(self._skipped))

    @property
    def rewind_step(self) -> keras.Variable:
        """The step of the last learning-rate rewind (0: none): an int32 optimizer variable, so checkpointed.

        :func:`keras_wgsef.schedules.rewindable_schedule` makes it the offset of the inner
        optimizer's :class:`~keras_wgsef.schedules.Rewound` schedule. Needs a built optimizer.
        """
        return self._rewind_step

    def scope_named(self, name: str) -> ScopeState:
        """The scope called ``name`` (raises with the known names)."""
        for s in self.scopes:
            if s.name == name:
                return s
        raise KeyError(f"no scope {name!r}; the scopes are {[s.name for s in self.scopes]}.")

    # ------------------------------------------------------------------ apply
    def apply(self, grads, trainable_variables=None):
        if not self.built:  # type: ignore[has-type]
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        if self.budget is not None and self.plan is None:
            raise ValueError(
                "WGSEF(budget=...) is not bound to a model yet: add kw.callbacks.ReachK() to fit(callbacks=...), "
                "or call optimizer.bind(model) before a custom training loop."
            )
        backend = keras.backend.backend()
        if backend not in TRAINING_BACKENDS:  # a model loads anywhere; it trains on these
            raise ValueError(
                f"WGSEF trains on the {', '.join(TRAINING_BACKENDS)} backends of Keras, and Keras runs on "
                f"{backend!r}, which cannot train: set KERAS_BACKEND to one of them before importing Keras."
            )
        if backend == "tensorflow":
            self._tf_apply(grads, trainable_variables)
            return
        grads = [None if g is None else ops.convert_to_tensor(g) for g in grads]
        if backend != "jax":  # torch (eager): assign in place; its optimizers update in place anyway
            self._common_apply(grads, trainable_variables)
            return
        # JAX: compute every new value without assigning (stateless_apply), then assign once,
        # outside any conditional (assignments inside a traced cond leak JAX tracers)
        built = self._trainable_variables
        if trainable_variables is not None and [id(v) for v in trainable_variables] != [id(v) for v in built]:
            where = {id(v): i for i, v in enumerate(trainable_variables)}
            missing = [v.path for v in built if id(v) not in where]
            if missing:
                raise ValueError(f"apply() got no gradient for {missing[:3]}: pass the variables WGSEF was built with.")
            grads = [grads[where[id(v)]] for v in built]
        new_values, new_state = self.stateless_apply([v.value for v in self.variables], grads, [v.value for v in built])
        for var, value in zip([*built, *self.variables], [*new_values, *new_state]):
            var.assign(value)

    def check_finite(self, grads):
        """True when every gradient is finite, as a boolean tensor: one sum for all of them, one check.

        A NaN or an infinity makes a sum non-finite, and so does a sum past the float32 range
        (entries near 1e38: a step no model survives, skipped alike). The small gradients (up to
        ``prox_ops.SMALL_TENSOR`` entries, where copying costs less than an operation) are summed
        together after one concatenation, the large ones one by one: on a small model each
        operation costs a few microseconds, whatever its size.
        """
        small, sums = [], []
        for g in grads:
            if g is None:
                continue
            if type(g).__name__ == "IndexedSlices":  # TensorFlow's sparse gradient: the rows it holds
                g = g.values
            if keras.backend.standardize_dtype(g.dtype) != "float32":
                g = ops.cast(g, "float32")
            shape = tuple(g.shape)
            if None not in shape and int(np.prod(shape)) <= prox_ops.SMALL_TENSOR:
                small.append(g)
            else:
                sums.append(ops.sum(g))
        if small:
            sums.append(ops.sum(prox_ops.flat_concat(small)))
        return ops.isfinite(ops.sum(ops.stack(sums)) if len(sums) > 1 else sums[0])

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        """New values of the model's and the optimizer's variables after one step; nothing is assigned.

        What the JAX backend's ``fit`` calls (it keeps the state outside the variables between
        steps). The inner optimizer's step and the prox run in a :class:`keras.StatelessScope` that
        records their assignments; a step with a non-finite gradient keeps every value and only
        counts itself in ``skipped_steps``, selected with ``where`` (no assignment in a branch).
        """
        if not self.built:
            raise ValueError("To call stateless_apply, WGSEF must be built: call optimizer.build(trainable_variables).")
        built, own = self._trainable_variables, self.variables
        if len(optimizer_variables) != len(own) or len(trainable_variables) != len(built):
            raise ValueError(
                f"stateless_apply needs {len(own)} optimizer values and {len(built)} trainable values "
                f"(got {len(optimizer_variables)} and {len(trainable_variables)})."
            )
        # values, not variables (LossScaleOptimizer passes its inner optimizer's variables themselves)
        trainable_variables = [ops.convert_to_tensor(v) for v in trainable_variables]
        optimizer_variables = [ops.convert_to_tensor(v) for v in optimizer_variables]
        mapping = list(zip(built, trainable_variables)) + list(zip(own, optimizer_variables))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self._handle_finite(grads, None)  # the inner optimizer steps the variables it was built with
        finite = self.check_finite(grads)

        def pick(var, old):
            new = scope.get_current_value(var)
            return old if new is None else ops.where(finite, new, old)

        new_values = [pick(v, old) for v, old in zip(built, trainable_variables)]
        new_state = [pick(v, old) for v, old in zip(own, optimizer_variables)]
        i = next(i for i, v in enumerate(own) if v is self._skipped)
        new_state[i] = optimizer_variables[i] + ops.cast(ops.logical_not(finite), optimizer_variables[i].dtype)
        return new_values, new_state

    def _handle_finite(self, grads, trainable_variables, finite=None):
        """The inner step, then the prox.

        With ``finite`` (a boolean tensor), only the inner step sits in a conditional on it, and
        the prox runs either way with its step set to 0 unless ``finite``: a step of 0 leaves every
        factor at 1 (and frozen groups, already zero, at 0), so nothing changes, and the prox's
        operations that do not wait for the new values need not wait for the gradients' check.
        """
        dt = prox_ops.prox_dtype()
        lr = ops.cast(self.learning_rate, dt)  # before the inner step advances iterations
        inner = self.inner_optimizer
        before = ops.convert_to_tensor(inner.iterations) if inner.gradient_accumulation_steps else None

        def inner_step():
            inner.apply(grads, trainable_variables=trainable_variables)

        if finite is None:
            inner_step()
        else:
            ops.cond(finite, inner_step, self._handle_non_finite)
            lr = ops.where(finite, lr, 0.0)
        if before is not None:  # accumulating: the prox runs exactly when the inner update fired
            lr = lr * ops.cast(ops.greater(ops.convert_to_tensor(inner.iterations), before), dt)
        self._apply_prox(lr)

    def _common_apply(self, grads, trainable_variables=None):
        """TensorFlow (no merge call) and torch: the inner step when the gradients are finite, then the prox."""
        self._handle_finite(grads, trainable_variables, finite=self.check_finite(grads))

    def _handle_non_finite(self):
        self._skipped.assign_add(1)

    def _tf_apply(self, grads, trainable_variables=None):
        import tensorflow as tf

        if tf.distribute.in_cross_replica_context():
            raise ValueError("apply() must be called in a replica context.")
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            self._common_apply(grads, trainable_variables)
            return

        def cross_replica(distribution, grads, trainable_variables):
            finite = distribution.experimental_local_results(
                distribution.extended.call_for_each_replica(self.check_finite, args=(grads,))
            )[0]

            def finite_fn():
                distribution.extended.call_for_each_replica(self._handle_finite, args=(grads, trainable_variables))

            ops.cond(finite, finite_fn, self._handle_non_finite)

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(grads, trainable_variables))

    def _apply_prox(self, lr):
        """Runs the prox on every scope; under tf.distribute it updates each replica's copy alike."""
        if keras.backend.backend() != "tensorflow":
            self._prox_assign(lr, lambda var, value, factor: var.assign(value * factor))
            return
        import tensorflow as tf

        if self.xla_prox and not tf.distribute.has_strategy():
            _compiled_prox(self)(ops.convert_to_tensor(lr))
            return

        def update(distribution, lr):
            lr = distribution.experimental_local_results(lr)[0]  # identical on every replica

            def assign(var, value, factor):  # each replica multiplies its own copy
                distribution.extended.update(
                    var.value, lambda v, f: v.assign(v * tf.cast(f, v.dtype)), args=(factor,), group=False
                )

            self._prox_assign(lr, assign)

        tf.__internal__.distribute.interim.maybe_merge_call(update, tf.distribute.get_strategy(), lr)

    def _prox_assign(self, lr, assign) -> None:
        """The prox of every scope: ``assign(var, value, factor)`` writes ``value * factor`` to each variable."""
        values = [[prox_ops.read(v) for v in state.variables] for state in self.scopes]
        metric = None
        if self._inverse_step is not None:  # the inner optimizer's slots after its step
            slots = [[tuple(prox_ops.read(v) for v in t) for t in state.slots] for state in self.scopes]
            metric = (slots, self._inverse_step)
        scales = prox_factors(self.scopes, values, lr, self.ridge, metric)  # one batched prox for every scope
        rows = _rows(scales, [s.num_groups for s in self.scopes])
        for state, row, scope_values in zip(self.scopes, rows, values):
            averages = state.ema or [None] * len(state.variables)
            for var, value, mb, average in zip(state.variables, scope_values, state.members, averages):
                factor = prox_ops.expand_scales(row, tuple(var.shape), mb.axis, mb.index)
                factor = factor if var.dtype == "float32" else ops.cast(factor, var.dtype)
                assign(var, value, factor)
                if average is not None:  # the EMA copy follows the same envelope: the same support
                    assign(average, prox_ops.read(average), factor)
        # a positive factor is a group left nonzero
        self.scopes[0].table.record(scales, ops.sum(ops.cast(scales > 0, "int32"), axis=1))

    # --------------------------------------------------------------- loading
    def load_own_variables(self, store) -> None:
        """Loads a checkpoint, also one of a version that kept per-scope optimizer state (:mod:`keras_wgsef.legacy`)."""
        super().load_own_variables(per_scope_state_as_table(store, self.scopes, self.variables))

    # ------------------------------------------------------------- forwarding
    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    # ----------------------------------------------------------------- config
    def get_config(self) -> dict[str, Any]:
        groups = self.groups
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "k": dict(self.k) if isinstance(self.k, Mapping) else self.k,
            "lam": dict(self.lam) if isinstance(self.lam, Mapping) else self.lam,
            "groups": None if groups is None else [g.get_config() for g in groups],
            "envelope": self.envelope,
            "budget": None if self.budget is None else self.budget.get_config(),
            "ridge": self.ridge,
            "include": self.include,
            "exclude": self.exclude,
            "xla_prox": self.xla_prox,
            "metric": self.metric,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None) -> WGSEF:
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("inner_optimizer"), custom_objects=custom_objects)
        groups = config.pop("groups", None)
        if groups is not None:
            groups = [GroupScope.from_config(g) for g in groups]
        # a model saved before these options existed trained with the defaults of its time
        config.setdefault("metric", "euclidean")
        return cls(inner, groups=groups, **config)


@overload
def find_wgsef(obj: Any, required: Literal[True]) -> WGSEF: ...


@overload
def find_wgsef(obj: Any, required: bool = False) -> WGSEF | None: ...


def find_wgsef(obj: Any, required: bool = False) -> WGSEF | None:
    """The :class:`WGSEF` optimizer of a model (its compiled optimizer) or of an optimizer.

    Looks inside the wrappers Keras puts around an optimizer (``LossScaleOptimizer`` under
    ``mixed_float16``).

    Args:
      obj: a Keras model, an optimizer, or None.
      required: raise instead of returning None when there is no WGSEF optimizer.

    Raises:
      ValueError: ``required`` and ``obj`` is neither a WGSEF optimizer nor a model compiled with one.

    Example:
      >>> import keras
      >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="h"), keras.layers.Dense(1)])
      >>> m.compile(optimizer=WGSEF(keras.optimizers.SGD(0.1), k=1), loss="mse")
      >>> find_wgsef(m) is m.optimizer, find_wgsef(keras.optimizers.Adam())
      (True, None)
    """
    opt = obj if isinstance(obj, keras.optimizers.Optimizer) else getattr(obj, "optimizer", None)
    found = opt
    for _ in range(4):  # a wrapper of a wrapper at most
        if found is None or isinstance(found, WGSEF):
            break
        found = getattr(found, "inner_optimizer", None)
    if isinstance(found, WGSEF):
        return found
    if required:
        raise ValueError(
            "this needs a model compiled with keras_wgsef.WGSEF(...) as its optimizer "
            f"(found {type(opt).__name__}): compile it with optimizer=kw.WGSEF(inner_optimizer, ...)."
        )
    return None
