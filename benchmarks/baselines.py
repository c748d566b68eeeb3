"""Baseline machinery for the benchmark, built on the library's group data (the library is not edited).

* :class:`GroupLassoProx` -- the classic group lasso ``lam * sum_j sqrt(d_j) ||x_j||`` as a proximal
  step after every optimizer step: block soft-thresholding
  ``x_j <- x_j * max(0, 1 - eta_t * lam * sqrt(d_j) / ||x_j||)`` on exactly the groups WGSEF uses
  (``GroupScope`` members, ``keras_wgsef.prox_ops.group_sq_norms`` / ``expand_scales``).
  Note: WGSEF with ``k = 1`` is the *squared* group lasso ``(sum_j sqrt(d_j) ||x_j||)^2``, not this.
* :func:`project_topk` -- keep the top-k groups per scope by a ranking (group norm: the
  no-penalty control and group lasso; L1 norm of the kernels: Li et al. 2017; |BN gamma|:
  Network Slimming), zero the rest of every member (kernel slice, bias, BN gamma/beta, ...), so
  ``tflite_export.shrink`` removes them.
* :class:`OffsetCosine` -- the same cosine decay continued from a step offset (fine-tuning a
  physically thinned copy keeps the schedule of the run it was cut from).
* :class:`EpochTimer` -- wall seconds per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
from keras import ops

from keras_wgsef import prox_ops
from keras_wgsef.graph.model_graph import model_weights
from keras_wgsef.groups.norms import scope_norms
from keras_wgsef.groups.scope import GroupScope

__all__ = [
    "EpochTimer",
    "GroupLassoProx",
    "OffsetCosine",
    "project_topk",
    "rank_bn_gamma",
    "rank_group_norm",
    "rank_kernel_l1",
    "scope_widths",
]


def _learning_rate(optimizer) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate or schedule, read from its public config."""
    lr = optimizer.get_config()["learning_rate"]
    return keras.optimizers.schedules.deserialize(lr) if isinstance(lr, dict) else float(lr)


def _rate_at(lr, step: int) -> float:
    return float(keras.ops.convert_to_numpy(lr(step))) if callable(lr) else float(lr)


class GroupLassoProx(keras.callbacks.Callback):
    """Block soft-thresholding after each training step between ``start_epoch`` and ``stop_epoch``.

    Args:
      scopes: the groups (e.g. ``keras_wgsef.make_groups(model)``); weights ``d_j`` as resolved by
        the scope (group sizes by default: the classic ``sqrt(d_j)`` group-lasso weights).
      lam: penalty strength; the threshold of step t is ``eta_t * lam * sqrt(d_j)``.
      start_epoch / stop_epoch: the penalty is active for ``start_epoch <= t < stop_epoch``
        (t in epochs, fractional).
    """

    def __init__(
        self, scopes: Sequence[GroupScope], lam: float, start_epoch: float = 0.0, stop_epoch: float = math.inf
    ) -> None:
        super().__init__()
        self.scopes = list(scopes)
        self.lam = float(lam)
        self.start_epoch = start_epoch
        self.stop_epoch = stop_epoch
        self._epoch = 0

    def on_train_begin(self, logs=None) -> None:
        self.steps = int(self.params.get("steps") or 1)
        by_path = model_weights(self.model)
        self._vars = [[by_path[p] for p in s.paths] for s in self.scopes]
        shapes = {p: tuple(v.shape) for p, v in by_path.items()}
        self._sqrt_d = [np.sqrt(s.resolved_weights(shapes)) for s in self.scopes]
        self._lr = _learning_rate(self.model.optimizer)

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None) -> None:
        t = self._epoch + (batch + 1) / self.steps
        if not (self.start_epoch <= t < self.stop_epoch):
            return
        opt = self.model.optimizer
        eta = _rate_at(self._lr, int(opt.iterations.numpy()) - 1)  # the rate of the step just taken
        for s, variables, sqrt_d in zip(self.scopes, self._vars, self._sqrt_d):
            values = [ops.convert_to_tensor(v) for v in variables]
            sq = prox_ops.group_sq_norms(
                values, [mb.axis for mb in s.members], [mb.index for mb in s.members], s.num_groups
            )
            a = ops.sqrt(sq)
            thr = ops.convert_to_tensor(eta * self.lam * sqrt_d, "float64")
            scales = ops.where(a > thr, 1.0 - thr / ops.where(a > 0, a, ops.ones_like(a)), ops.zeros_like(a))
            for var, mb in zip(variables, s.members):
                f = prox_ops.expand_scales(scales, tuple(var.shape), mb.axis, mb.index)
                var.assign(var * ops.cast(f, var.dtype))


def _values(model: keras.Model) -> dict[str, np.ndarray]:
    return {p: v.numpy() for p, v in model_weights(model).items()}


def rank_group_norm(scope: GroupScope, values: dict[str, np.ndarray], shapes) -> np.ndarray:
    """``||x_j|| / sqrt(d_j)``: the ranking of WGSEF's projection (and of the no-penalty control)."""
    return scope_norms(scope, values) / np.sqrt(scope.resolved_weights(shapes))


def _member_sum(scope: GroupScope, values: dict[str, np.ndarray], keep: Callable[[str], bool], fn) -> np.ndarray:
    total = np.zeros(scope.num_groups)
    for mb in scope.members:
        if not keep(mb.path):
            continue
        x = fn(np.asarray(values[mb.path], np.float64))
        ax = mb.axis % x.ndim
        np.add.at(total, mb.index, x.sum(axis=tuple(i for i in range(x.ndim) if i != ax)))
    return total


def rank_kernel_l1(scope: GroupScope, values, shapes) -> np.ndarray:
    """Li et al. 2017: sum of |w| of the filter's conv kernel(s) (per output channel)."""
    return _member_sum(scope, values, lambda p: p.endswith("/kernel") and "dw" not in p.split("/")[0], np.abs)


def rank_bn_gamma(scope: GroupScope, values, shapes) -> np.ndarray:
    """Network Slimming: |gamma| of the BatchNorm(s) that scale the channel."""
    return _member_sum(scope, values, lambda p: p.endswith("/gamma") and "dw" not in p.split("/")[0], np.abs)


def project_topk(model: keras.Model, scopes: Sequence[GroupScope], ks: Sequence[int], rank) -> list[np.ndarray]:
    """Zeroes all but the top ``ks[i]`` groups of each scope (every member), in place.

    Returns the boolean supports.
    """
    values = _values(model)
    shapes = {p: v.shape for p, v in values.items()}
    by_path = model_weights(model)
    supports = []
    for s, k in zip(scopes, ks):
        r = rank(s, values, shapes)
        keep = np.zeros(s.num_groups, bool)
        keep[np.argsort(-r, kind="stable")[:k]] = True
        for mb in s.members:
            x = values[mb.path]
            shape = [1] * x.ndim
            shape[mb.axis % x.ndim] = x.shape[mb.axis]
            by_path[mb.path].assign((x * keep[mb.index].reshape(shape)).astype(x.dtype))
        supports.append(keep)
    return supports


@keras.saving.register_keras_serializable(package="wgsef_bench")
class OffsetCosine(keras.optimizers.schedules.LearningRateSchedule):
    """``CosineDecay(initial, decay_steps)`` evaluated at ``step + offset``."""

    def __init__(self, initial: float, decay_steps: int, offset: int) -> None:
        self.initial, self.decay_steps, self.offset = float(initial), int(decay_steps), int(offset)

    def __call__(self, step):
        t = ops.minimum(ops.cast(step, "float32") + self.offset, float(self.decay_steps)) / float(self.decay_steps)
        return self.initial * 0.5 * (1.0 + ops.cos(math.pi * t))

    def get_config(self):
        return {"initial": self.initial, "decay_steps": self.decay_steps, "offset": self.offset}


class EpochTimer(keras.callbacks.Callback):
    """Records the wall seconds of every epoch in ``self.seconds``."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.seconds.append(time.perf_counter() - self._t)


def scope_widths(model: keras.Model) -> list[int]:
    """Channels per scope of a (shrunk) model, in ``make_groups`` order."""
    from keras_wgsef import make_groups

    return [s.num_groups for s in make_groups(model)]
