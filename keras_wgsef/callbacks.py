"""Controllers and loggers for WGSEF training: reach exactly k groups per scope, log the progress.

The prox alone keeps *at least* k groups; exactly k needs enough strength, and strength that
selects by itself also crushes the survivors (``anchors.md``: under Adam the loss went back to
chance for epochs). :class:`ReachK` therefore runs a schedule that worked on the anchor task:

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

Example:
  >>> import keras, keras_wgsef as kw
  >>> cbs = [kw.callbacks.ReachK(start_epoch=1, project_epoch=7), kw.callbacks.SparsityLogger(verbose=0)]
"""

from __future__ import annotations

import math

import keras
import numpy as np

from keras_wgsef.prox_ops import expand_scales
from keras_wgsef.stats import find_wgsef, scope_norms, scope_tau

__all__ = ["ReachK", "SparsityLogger", "freeze_scope", "top_k_support"]


def _wgsef_of(model: keras.Model):
    opt = find_wgsef(getattr(model, "optimizer", None))
    if opt is None:
        raise ValueError(
            "this callback needs a model compiled with keras_wgsef.WGSEF(...) as its optimizer "
            f"(found {type(getattr(model, 'optimizer', None)).__name__})."
        )
    return opt


def _values(opt, i: int) -> dict[str, np.ndarray]:
    return {v.path: v.numpy() for v in opt._scope_vars[i]}


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
            raise ValueError(f"a global budget of k = {k} groups cannot keep one group in each of {ids.size} layers; raise k.")
        for sid in ids:
            members = np.flatnonzero(segments == sid)
            keep[members[np.argmax(rank[members])]] = True
    rest = [j for j in np.argsort(-rank, kind="stable") if not keep[j]]
    keep[rest[: k - int(keep.sum())]] = True
    return keep


def freeze_scope(opt, i: int, undo_shrink: float = 1.0) -> np.ndarray:
    """Projects scope ``i`` of a built WGSEF optimizer to exactly its k groups and freezes it.

    Keeps the k groups with the largest ``||x_j|| / sqrt(d_j)`` (the prox's own ranking; in a
    merged global scope every layer first keeps its best group), zeroes the others, multiplies each kept group by ``min(1 / shrink_j, undo_shrink)`` (undoing the
    prox's accumulated shrink, never shrinking further), pins the support with the scope's mask
    and sets its strength to 0 (penalty off).

    Returns:
      the boolean support (length m, exactly k True).
    """
    scope, k = opt.scopes[i], opt.scope_k[i]
    values = _values(opt, i)
    d = opt.scope_weights[i]
    rank = scope_norms(scope, values) / np.sqrt(d)
    keep = top_k_support(rank, k, scope.segments)
    undo = np.ones(scope.num_groups)
    if undo_shrink > 1.0:
        shrink = np.asarray(opt.shrink[i].numpy(), dtype=np.float64)
        undo = np.clip(1.0 / np.maximum(shrink, 1e-30), 1.0, undo_shrink)
    factor = np.where(keep, undo, 0.0)
    for var, mb in zip(opt._scope_vars[i], scope.members):
        x = values[var.path]
        f = keras.ops.convert_to_numpy(expand_scales(factor, x.shape, mb.axis, mb.index))
        var.assign((x * f).astype(x.dtype))
    opt.mask[i].assign(keep.astype("float32"))
    opt.shrink[i].assign(np.ones(scope.num_groups, "float32"))
    opt.strength[i].assign(0.0)
    opt.nonzero[i].assign(int(k))
    return keep


class ReachK(keras.callbacks.Callback):
    """Drives a WGSEF optimizer to exactly k groups per scope, then fine-tunes the survivors.

    Unset knobs come from a preset chosen by the inner optimizer (``preset="auto"``), each the
    recipe measured best on the anchor task:

    * ``"adaptive"`` (Adam & co.): mild ramp from 1e-4 growing by e^0.01 per step, projection at
      45 % of the epochs, kept groups de-biased up to 10x (Adam needs ~1000 steps to regrow a
      crushed BatchNorm gamma);
    * ``"sgd"``: a fixed strong prox (0.03 per step, no growth; use ``WGSEF(..., ridge=False)``),
      scopes freeze as they reach k, projection of the rest at 8/15 of the epochs, no de-biasing
      (undoing the shrink made the loss spike under SGD).

    Args:
      start_epoch: epochs trained dense before the penalty starts (may be fractional).
      project_epoch: epoch at which every scope not yet at k is projected to its top k and
        frozen (default from the preset). The rest is fine-tuning.
      preset: ``"auto"``, ``"adaptive"`` or ``"sgd"``.
      initial: per-step ridge rate ``learning_rate * lam * mean(d_j)`` of the scope when the
        penalty starts (scale-free: the same for a scope of 3x3x1 filters and of 3x3x64 ones).
      growth: log-growth of the strength per step while a scope is behind the cubic schedule.
      undo_shrink: cap of the de-biasing factor applied to kept groups at freeze; 1 disables.
      verbose: 1 prints each freeze.
    """

    #: Measured defaults per kind of inner optimizer (anchor task, 15 epochs; see README).
    PRESETS = {
        "adaptive": {"project_fraction": 0.45, "initial": 1e-4, "growth": 0.01, "undo_shrink": 10.0},
        "sgd": {"project_fraction": 8 / 15, "initial": 0.03, "growth": 0.0, "undo_shrink": 1.0},
    }

    def __init__(
        self,
        start_epoch: float = 1.0,
        project_epoch: float | None = None,
        initial: float | None = None,
        growth: float | None = None,
        undo_shrink: float | str | None = None,
        preset: str = "auto",
        verbose: int = 1,
    ) -> None:
        super().__init__()
        if preset not in ("auto", *self.PRESETS):
            raise ValueError(f"preset must be 'auto' or one of {sorted(self.PRESETS)}, got {preset!r}.")
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
        self.verbose = verbose
        self.frozen: set[int] = set()
        self.freeze_log: list[tuple[float, str, int]] = []

    def _resolve(self, opt, epochs: int) -> None:
        """Fills the unset knobs from the preset of the inner optimizer's kind."""
        kind = self.preset
        if kind == "auto":
            kind = "sgd" if isinstance(opt.inner_optimizer, keras.optimizers.SGD) else "adaptive"
        p = self.PRESETS[kind]
        self._initial = self.initial if self.initial is not None else p["initial"]
        self._growth = self.growth if self.growth is not None else p["growth"]
        undo = self.undo_shrink
        self._undo = p["undo_shrink"] if undo in (None, "auto") else float(undo)
        self._project = self.project_epoch if self.project_epoch is not None else p["project_fraction"] * epochs
        self.resolved = {"preset": kind, "initial": self._initial, "growth": self._growth,
                         "undo_shrink": self._undo, "project_epoch": self._project, "start_epoch": self.start_epoch}
        if self.verbose:
            print(f"[ReachK] {self.resolved}")

    def on_train_begin(self, logs=None) -> None:
        self.opt = _wgsef_of(self.model)
        self.steps = int(self.params.get("steps") or 0)
        if self.steps <= 0:
            raise ValueError("ReachK needs a known number of steps per epoch (pass arrays or a sized dataset / steps_per_epoch).")
        self._resolve(self.opt, int(self.params.get("epochs") or 1))
        if self._project <= self.start_epoch:
            raise ValueError(
                f"ReachK: the projection (epoch {self._project:g}) must come after the dense warm-up "
                f"(start_epoch {self.start_epoch:g}); train longer or lower start_epoch."
            )
        self.frozen = {i for i in range(len(self.opt.scopes)) if float(np.min(self.opt.mask[i].numpy())) == 0.0}
        self._started = False
        self._epoch = 0
        self._step = 0

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._epoch = epoch

    def _now(self, batch: int) -> float:
        return self._epoch + batch / self.steps

    def on_train_batch_begin(self, batch, logs=None) -> None:
        t = self._now(batch)
        opt = self.opt
        live = [i for i in range(len(opt.scopes)) if i not in self.frozen]
        if t < self.start_epoch:
            for i in live:
                opt.strength[i].assign(0.0)
            return
        if t >= self._project:
            for i in live:
                self._freeze(i, t, "projected")
            return
        if not self._started:
            lr = float(keras.ops.convert_to_numpy(opt.learning_rate))
            for i in live:
                mean_d = float(np.mean(opt.scope_weights[i]))
                opt.strength[i].assign(self._initial / max(lr * mean_d, 1e-30))
            self._started = True

    def on_train_batch_end(self, batch, logs=None) -> None:
        t = self._now(batch + 1)
        if not self._started or t >= self._project:
            return
        opt = self.opt
        frac = min(1.0, max(0.0, (t - self.start_epoch) / (self._project - self.start_epoch)))
        for i in range(len(opt.scopes)):
            if i in self.frozen:
                continue
            m, k = opt.scopes[i].num_groups, opt.scope_k[i]
            n = int(opt.nonzero[i].numpy())
            if n <= k and self._all_segments_alive(i):
                self._freeze(i, t, "reached k")
                continue
            target = k + (m - k) * (1.0 - frac) ** 3
            if n > target:
                opt.strength[i].assign(float(opt.strength[i].numpy()) * math.exp(self._growth))

    def _all_segments_alive(self, i: int) -> bool:
        """In a global scope, a layer with no nonzero group left is not a valid end point."""
        segments = self.opt.scopes[i].segments
        if segments is None:
            return True
        norms = scope_norms(self.opt.scopes[i], _values(self.opt, i))
        return bool(np.all([np.any(norms[segments == s] > 0) for s in np.unique(segments)]))

    def _freeze(self, i: int, t: float, why: str) -> None:
        freeze_scope(self.opt, i, self._undo)
        self.frozen.add(i)
        self.freeze_log.append((t, self.opt.scopes[i].name, self.opt.scope_k[i]))
        if self.verbose:
            print(f"\n[ReachK] epoch {t:.2f}: {self.opt.scopes[i].name} {why}, frozen at k = {self.opt.scope_k[i]}")


class SparsityLogger(keras.callbacks.Callback):
    """Logs per scope, at each epoch end: nonzero groups, k, tau and lam (and TensorBoard).

    Adds ``wgsef_nonzero`` (total nonzero groups) and ``wgsef_k`` (total k) to the epoch logs so
    Keras' progress bar and ``History`` show them, and reports steps the optimizer skipped for
    non-finite gradients (``wgsef_skipped_steps``).

    Args:
      log_dir: a TensorBoard directory; scalars ``wgsef/<scope>/{nonzero,tau,lam}`` are written.
      verbose: 1 prints a per-scope table each epoch.
    """

    def __init__(self, log_dir: str | None = None, verbose: int = 1) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.verbose = verbose
        self.history: list[dict[str, dict[str, float]]] = []
        self._writer = None
        self._skipped_reported = 0

    def snapshot(self) -> dict[str, dict[str, float]]:
        """``{scope: {nonzero, k, tau, lam}}`` for the current weights."""
        opt = _wgsef_of(self.model)
        rows = {}
        for i, s in enumerate(opt.scopes):
            norms = scope_norms(s, _values(opt, i))
            rows[s.name] = {
                "nonzero": int(np.count_nonzero(norms)),
                "k": int(opt.scope_k[i]),
                "m": int(s.num_groups),
                "tau": scope_tau(norms, opt.scope_weights[i], opt.scope_k[i]),
                "lam": float(opt.strength[i].numpy()),
            }
        return rows

    def on_epoch_end(self, epoch, logs=None) -> None:
        rows = self.snapshot()
        self.history.append(rows)
        skipped = int(_wgsef_of(self.model).skipped_steps.numpy())
        if logs is not None:
            logs["wgsef_nonzero"] = float(sum(r["nonzero"] for r in rows.values()))
            logs["wgsef_k"] = float(sum(r["k"] for r in rows.values()))
            if skipped:
                logs["wgsef_skipped_steps"] = float(skipped)
        if skipped > self._skipped_reported:
            print(f"\n[WGSEF] {skipped - self._skipped_reported} step(s) skipped this epoch: non-finite gradients "
                  "(no inner step, no prox).")
            self._skipped_reported = skipped
        if self.verbose:
            print(f"\n[WGSEF] epoch {epoch + 1}: " + "  ".join(f"{n.split('/')[-1]} {r['nonzero']}/{r['m']} (k={r['k']}, tau={r['tau']:.3g}, lam={r['lam']:.3g})" for n, r in rows.items()))
        if self.log_dir is not None:
            import tensorflow as tf

            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            with self._writer.as_default():
                for name, r in rows.items():
                    for key in ("nonzero", "tau", "lam"):
                        tf.summary.scalar(f"wgsef/{name}/{key}", r[key], step=epoch)
            self._writer.flush()

    def on_train_end(self, logs=None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
