"""Controllers and loggers for WGSEF training: reach exactly k groups per scope, log the progress.

The prox alone keeps *at least* k groups; exactly k needs enough strength, and strength that
selects by itself also crushes the survivors (measured on the anchor task of the benchmarks: under
Adam the loss went back to chance for epochs). :class:`ReachK` therefore runs a schedule that worked on the anchor task:

1. ``start_epoch`` epochs dense (penalty off);
2. a mild prox whose per-step strength ``eta_t * lam_s * mean(d)`` starts at ``initial`` and grows by
   ``exp(growth)`` per step while scope s has more nonzero groups than a cubic schedule
   ``k + (m - k) (1 - t)^3`` allows (``t`` from 0 at the start to 1 at the projection), so the
   strength cannot wind up faster than the schedule;
3. a scope that reaches exactly k groups is frozen at once; at ``project_epoch`` every other
   scope is projected to its top k groups by ``||x_j|| / sqrt(d_j)``;
4. at each freeze the kept groups are de-biased (the accumulated prox shrink is undone, capped at
   ``undo_shrink``), the support is pinned with a mask and the penalty is turned off: the rest of
   the run fine-tunes the k survivors.

With a budget (``WGSEF(inner, budget=kw.Budget(...), groups=...)``) the same schedule runs on the
one global envelope whose ``k`` the budget's plan set, and "reached" means *the predicted costs
of the groups still nonzero meet every bound* (or the envelope is down to k): the support frozen
then, and at the projection, is :meth:`keras_wgsef.BudgetPlan.select`'s (the nonzero groups minus
the lowest rank per unit cost until every bound holds, then refilled while they still hold).

Resuming: the strengths, masks, attenuations and the step of the learning-rate rewind are
optimizer variables, so a checkpoint keeps them; ``ReachK`` reads them when the first epoch
begins (after every callback's ``on_train_begin``, so ``BackupAndRestore`` may sit anywhere in
the list) and restarts the ramp only when the optimizer has not passed the warm-up yet.
Guaranteed granularity: the epoch. A run killed at any step and resumed in a fresh process with
``keras.callbacks.BackupAndRestore(dir)`` (``save_freq="epoch"``, the default) restarts the
interrupted epoch from its saved start and ends with the same support and the same weights as the
uninterrupted run, for both presets, with a learning-rate schedule and with rewinding (tested
with deterministic ops). With ``save_freq=N`` Keras restores the weights saved mid-epoch but
replays that epoch from its first batch, so the run is a different (valid) run: the controller
keeps its state (no new ramp; frozen scopes stay frozen; exactly k) but the weights differ.
Not restored: the freeze log (it does not change the result).

The controller drives the optimizer only through its :class:`keras_wgsef.scope_state.ScopeState`
methods (``set_strength``, ``nonzero_count``, ``group_norms``, ``freeze``).

Example:
  >>> import keras_wgsef as kw
  >>> ctl = kw.callbacks.ReachK(start_epoch=1, project_epoch=7)
  >>> ctl.start_epoch, ctl.project_epoch
  (1, 7)
"""

from __future__ import annotations

import math

import keras
import numpy as np

from keras_wgsef.optimizer import find_wgsef
from keras_wgsef.schedules import rewindable_schedule

__all__ = ["ReachK", "sync_jax_state"]


def sync_jax_state(model: keras.Model) -> None:
    """Attaches the JAX trainer's current state to the variables (a no-op on other backends).

    Under JAX, ``fit`` keeps the variables' values in its own state between steps and writes them
    back at the end of each epoch. A callback that reads or assigns optimizer variables in the
    middle of an epoch calls this first; the trainer then takes its next step from the variables,
    including what the callback assigned (Keras' ``jax_state_sync`` contract).
    """
    if keras.backend.backend() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


class ReachK(keras.callbacks.Callback):
    """Drives a WGSEF optimizer to exactly k groups per scope, then fine-tunes the survivors.

    Unset knobs come from a preset (``preset="auto"`` picks it from the optimizer), each the
    recipe measured best on the benchmarks' anchor task:

    * ``"fixed"`` (``"sgd"`` is the same preset; ``"auto"`` picks it for ``WGSEF(...,
      ridge=False)`` and for SGD): a fixed strong prox (0.03 per step, no growth)
      on the groups the envelope drops, scopes freeze as they reach k, projection of the rest at
      8/15 of the epochs, no de-biasing (undoing the shrink made the loss spike under SGD). With
      SGD (0.1, cosine) and with Adam (2e-2, cosine, ``metric="auto"``) it matched or beat the
      thin model trained the same way (``benchmarks/OPTIMIZERS.md``);
    * ``"adaptive"`` (``"auto"`` picks it for ``WGSEF(..., ridge=True)`` under an adaptive
      optimizer): a mild ramp from 1e-4 growing by e^0.01 per step, projection at 45 % of the
      epochs, kept groups de-biased up to 10x, since the exact prox's ridge shrinks them too
      (Adam needs ~1000 steps to regrow a crushed BatchNorm gamma).

    Learning rate: the presets assume the inner optimizer trains the dense model well in the
    epochs given. Adam's default 1e-3 under-trains small CNNs in 10-20 epochs (its training loss
    ends 5-10x SGD's); 1e-2 to 2e-2 with cosine decay was best on the validation split of the
    benchmarks (``benchmarks/adam_recipes.py``). The callback never changes the rate itself.

    Args:
      start_epoch: epochs trained dense before the penalty starts (may be fractional).
      project_epoch: epoch at which every scope not yet at k is projected to its top k and
        frozen (default from the preset). The rest is fine-tuning.
      preset: ``"auto"``, ``"fixed"`` (alias ``"sgd"``) or ``"adaptive"``.
      initial: per-step ridge rate ``learning_rate * lam * mean(d_j)`` of the scope when the
        penalty starts (scale-free: the same for a scope of 3x3x1 filters and of 3x3x64 ones).
      growth: log-growth of the strength per step while a scope is behind the cubic schedule.
      undo_shrink: cap of the de-biasing factor applied to kept groups at freeze; 1 disables.
      rewind: learning-rate rewinding (:class:`keras_wgsef.schedules.Rewound`): when the last
        scope freezes, the inner optimizer's learning-rate *schedule* replays from its start over
        the remaining steps instead of continuing at its decayed rate (no effect with a constant
        rate).
      verbose: 1 prints each freeze.
    """

    #: Measured defaults per kind of inner optimizer (the benchmarks' anchor task, 15 epochs).
    PRESETS = {
        "adaptive": {"project_fraction": 0.45, "initial": 1e-4, "growth": 0.01, "undo_shrink": 10.0},
        "fixed": {"project_fraction": 8 / 15, "initial": 0.03, "growth": 0.0, "undo_shrink": 1.0},
    }
    #: other names of the presets
    ALIASES = {"sgd": "fixed"}

    def __init__(
        self,
        start_epoch: float = 1.0,
        project_epoch: float | None = None,
        initial: float | None = None,
        growth: float | None = None,
        undo_shrink: float | str | None = None,
        preset: str = "auto",
        rewind: bool = False,
        verbose: int = 1,
    ) -> None:
        super().__init__()
        if preset not in ("auto", *self.PRESETS, *self.ALIASES):
            raise ValueError(
                f"preset must be 'auto' or one of {sorted([*self.PRESETS, *self.ALIASES])}, got {preset!r}."
            )
        if project_epoch is not None and project_epoch <= start_epoch:
            raise ValueError(f"project_epoch ({project_epoch}) must come after start_epoch ({start_epoch}).")
        if (initial is not None and not initial > 0) or (growth is not None and growth < 0):
            raise ValueError(f"initial must be > 0 and growth >= 0, got initial={initial}, growth={growth}.")
        if undo_shrink not in (None, "auto") and not (isinstance(undo_shrink, (int, float)) and undo_shrink >= 1):
            raise ValueError(f"undo_shrink must be 'auto' or a number >= 1, got {undo_shrink!r}.")
        self.preset = preset
        self.start_epoch = start_epoch
        self.project_epoch = project_epoch
        self.initial = initial
        self.growth = growth
        self.undo_shrink = undo_shrink
        self.rewind = bool(rewind)
        self.verbose = verbose
        self.frozen: set[int] = set()
        self.freeze_log: list[tuple[float, str, int]] = []

    def _resolve(self, opt, epochs: int) -> None:
        """Fills the unset knobs from the preset of the inner optimizer's kind."""
        kind = self.ALIASES.get(self.preset, self.preset)
        if kind == "auto":
            sgd = isinstance(opt.inner_optimizer, keras.optimizers.SGD)
            kind = "fixed" if sgd or not opt.ridge else "adaptive"
        p = self.PRESETS[kind]
        self._initial = self.initial if self.initial is not None else p["initial"]
        self._growth = self.growth if self.growth is not None else p["growth"]
        undo = self.undo_shrink
        self._undo = p["undo_shrink"] if undo in (None, "auto") else float(undo)
        self._project = self.project_epoch if self.project_epoch is not None else p["project_fraction"] * epochs
        self.resolved = {
            "preset": kind,
            "initial": self._initial,
            "growth": self._growth,
            "undo_shrink": self._undo,
            "project_epoch": self._project,
            "start_epoch": self.start_epoch,
        }
        if self.verbose:
            print(f"[ReachK] {self.resolved}")

    def on_train_begin(self, logs=None) -> None:
        self.opt = find_wgsef(self.model, required=True)
        self.steps = int(self.params.get("steps") or 0)
        if self.steps <= 0:
            raise ValueError(
                "ReachK needs a known number of steps per epoch (pass arrays or a sized dataset / steps_per_epoch)."
            )
        from keras_wgsef.distill import student_of

        self.plan = self.opt.bind(student_of(self.model))  # None without a budget
        self._last_count = -1
        self._resolve(self.opt, int(self.params.get("epochs") or 1))
        if self._project <= self.start_epoch:
            raise ValueError(
                f"ReachK: the projection (epoch {self._project:g}) must come after the dense warm-up "
                f"(start_epoch {self.start_epoch:g}); train longer or lower start_epoch."
            )
        self._epoch = 0
        self._resumed = False  # the optimizer's state is read at the first epoch, after every on_train_begin

    def _resume(self, epoch: int) -> None:
        """Reads the controller's state from the optimizer, once every callback's ``on_train_begin`` ran.

        A ``BackupAndRestore`` anywhere in the callback list has then restored the optimizer
        variables: the grown strengths, the frozen masks and the step of the learning-rate rewind.
        Only a run whose optimizer has not yet passed the warm-up starts the ramp afresh.
        """
        opt = self.opt
        if not opt.built:  # as BackupAndRestore does: the first train step would build it the same way
            opt.build(self.model.trainable_variables)
        done_steps = int(keras.ops.convert_to_numpy(opt.iterations))
        self.frozen = {i for i, state in enumerate(opt.scopes) if state.frozen}
        # the ramp starts (strengths set to `initial`) at the first step with t >= start_epoch
        self._started = done_steps > math.ceil(self.start_epoch * self.steps - 1e-9)
        self._schedule = None
        if self.rewind:  # the schedule runs on the inner optimizer's steps: S = done + still to run
            epochs = int(self.params.get("epochs") or 1)
            inner_done = int(keras.ops.convert_to_numpy(opt.inner_optimizer.iterations))
            self._schedule = rewindable_schedule(opt, inner_done + (epochs - epoch) * self.steps)
        self._dense = False  # strengths not yet zeroed for the dense warm-up of this run
        self._resumed = True

    def on_epoch_begin(self, epoch, logs=None) -> None:
        if not self._resumed:
            self._resume(epoch)
        self._epoch = epoch

    def _now(self, batch: int) -> float:
        return self._epoch + batch / self.steps

    def on_train_batch_begin(self, batch, logs=None) -> None:
        t = self._now(batch)
        opt = self.opt
        live = [i for i in range(len(opt.scopes)) if i not in self.frozen]
        if not live:
            return
        if t < self.start_epoch:
            if not self._dense:  # once: nothing else changes a strength before the ramp sets it
                sync_jax_state(self.model)
                for i in live:
                    opt.scopes[i].set_strength(0.0)
                self._dense = True
            return
        sync_jax_state(self.model)
        if t >= self._project:
            for i in live:
                self._freeze(i, t, "projected")
            return
        if not self._started:
            lr = float(keras.ops.convert_to_numpy(opt.learning_rate))
            for i in live:
                mean_d = float(np.mean(opt.scopes[i].weights))
                opt.scopes[i].set_strength(self._initial / max(lr * mean_d, 1e-30))
            self._started = True

    def on_train_batch_end(self, batch, logs=None) -> None:
        t = self._now(batch + 1)
        if not self._started or t >= self._project or len(self.frozen) == len(self.opt.scopes):
            return
        sync_jax_state(self.model)
        opt = self.opt
        frac = min(1.0, max(0.0, (t - self.start_epoch) / (self._project - self.start_epoch)))
        for i, state in enumerate(opt.scopes):
            if i in self.frozen:
                continue
            m, k = state.num_groups, state.k
            n = state.nonzero_count()
            if self.plan is not None:
                if n != self._last_count:
                    self._last_count = n
                    if n <= k or self.plan.fits(self.plan.predict(state.group_norms() > 0, tuple(self.plan.bounds))):
                        self._freeze(i, t, "reached the budget")
                        continue
            elif n <= k and self._all_segments_alive(i):
                self._freeze(i, t, "reached k")
                continue
            target = k + (m - k) * (1.0 - frac) ** 3
            if n > target:
                state.set_strength(state.strength * math.exp(self._growth))

    def _all_segments_alive(self, i: int) -> bool:
        """In a global scope, a layer with no nonzero group left is not a valid end point."""
        state = self.opt.scopes[i]
        if state.segments is None:
            return True
        norms = state.group_norms()
        return bool(np.all([np.any(norms[state.segments == s] > 0) for s in np.unique(state.segments)]))

    def _support(self, i: int) -> np.ndarray:
        state = self.opt.scopes[i]
        if self.plan is None:
            return state.top_k_support()
        norms = state.group_norms()  # RMS per group; select() weighs it by the cost of each group
        return self.plan.select(norms / np.sqrt(self.plan.sizes), candidates=norms > 0)

    def _freeze(self, i: int, t: float, why: str) -> None:
        state = self.opt.scopes[i]
        state.freeze(self._support(i), self._undo)
        self.frozen.add(i)
        if self._schedule is not None and len(self.frozen) == len(self.opt.scopes):
            self._schedule.rewind(int(keras.ops.convert_to_numpy(self.opt.inner_optimizer.iterations)))
        self.freeze_log.append((t, state.name, state.k))
        if self.verbose:
            extra = ""
            if self.plan is not None:
                costs = self.plan.predict(state.mask > 0)
                extra = (
                    " (predicted " + ", ".join(f"{c} {costs[c]:,} of {b:,}" for c, b in self.plan.bounds.items()) + ")"
                )
            print(f"\n[ReachK] epoch {t:.2f}: {state.name} {why}, frozen at k = {state.k}{extra}")
