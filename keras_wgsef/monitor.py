"""``SparsityLogger``: per-scope nonzero groups, k, tau and strength, in Keras logs and TensorBoard.

Example:
  >>> import keras_wgsef as kw
  >>> logger = kw.callbacks.SparsityLogger(verbose=0)
  >>> logger.history
  []
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_wgsef.groups.norms import scope_tau
from keras_wgsef.optimizer import find_wgsef

__all__ = ["SparsityLogger"]


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
        self._writer: Any = None
        self._skipped_reported = 0

    def snapshot(self) -> dict[str, dict[str, float]]:
        """``{scope: {nonzero, k, tau, lam}}`` for the current weights."""
        opt = find_wgsef(self.model, required=True)
        rows = {}
        for s in opt.scopes:
            norms = s.group_norms()
            rows[s.name] = {
                "nonzero": int(np.count_nonzero(norms)),
                "k": s.k,
                "m": s.num_groups,
                "tau": scope_tau(norms, s.weights, s.k),
                "lam": s.strength,
            }
        return rows

    def on_epoch_end(self, epoch, logs=None) -> None:
        rows = self.snapshot()
        self.history.append(rows)
        skipped = find_wgsef(self.model, required=True).skipped_steps
        if logs is not None:
            logs["wgsef_nonzero"] = float(sum(r["nonzero"] for r in rows.values()))
            logs["wgsef_k"] = float(sum(r["k"] for r in rows.values()))
            if skipped:
                logs["wgsef_skipped_steps"] = float(skipped)
        if skipped > self._skipped_reported:
            print(
                f"\n[WGSEF] {skipped - self._skipped_reported} step(s) skipped this epoch: non-finite gradients "
                "(no inner step, no prox)."
            )
            self._skipped_reported = skipped
        if self.verbose:
            print(
                f"\n[WGSEF] epoch {epoch + 1}: "
                + "  ".join(
                    f"{n.split('/')[-1]} {r['nonzero']}/{r['m']} (k={r['k']}, tau={r['tau']:.3g}, lam={r['lam']:.3g})"
                    for n, r in rows.items()
                )
            )
        if self.log_dir is not None:
            if self._writer is None:
                self._writer = scalar_writer(self.log_dir)
            for name, r in rows.items():
                for key in ("nonzero", "tau", "lam"):
                    self._writer.scalar(f"wgsef/{name}/{key}", float(r[key]), epoch)
            self._writer.flush()

    def on_train_end(self, logs=None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _TFWriter:
    def __init__(self, log_dir: str) -> None:
        import tensorflow as tf

        self._tf = tf
        self._writer = tf.summary.create_file_writer(log_dir)

    def scalar(self, tag: str, value: float, step: int) -> None:
        with self._writer.as_default():
            self._tf.summary.scalar(tag, value, step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class _TensorboardXWriter:
    def __init__(self, log_dir: str) -> None:
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(log_dir)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def scalar_writer(log_dir: str) -> Any:
    """A TensorBoard scalar writer for ``log_dir``: ``tf.summary`` where TensorFlow is installed
    (any Keras backend), else tensorboardX; neither raises an ImportError that names the extra.

    The writer has ``scalar(tag, value, step)``, ``flush()`` and ``close()``.
    """
    import importlib.util

    if importlib.util.find_spec("tensorflow") is not None:
        return _TFWriter(log_dir)
    if importlib.util.find_spec("tensorboardX") is not None:
        return _TensorboardXWriter(log_dir)
    from keras_wgsef._install import install_hint

    raise ImportError(
        "SparsityLogger(log_dir=...) writes TensorBoard logs with tf.summary or tensorboardX, and neither is "
        f"installed: the `tensorboard` extra, {install_hint('tensorboard')} (or drop log_dir)."
    )
