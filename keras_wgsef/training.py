"""The WGSEF training step for custom loops (``tf.GradientTape``) and distribution strategies.

``WGSEF.apply(grads, variables)`` is the whole algorithm (inner step, then the prox), so a custom
loop only has to compute gradients and call it. :func:`make_train_step` builds that step as a
``tf.function``; with a ``tf.distribute`` strategy it runs the replica step with ``strategy.run``,
averages the loss over the global batch (``tf.nn.compute_average_loss``) and lets the optimizer
all-reduce the gradients, so the prox acts on the synchronized weights and every replica (and
every worker of a ``MultiWorkerMirroredStrategy``) keeps the same support.

For a ``Model.train_step`` override, call ``self.optimizer.apply(grads, self.trainable_variables)``
in it: see ``examples/train_step_override.py``.

Example:
  >>> import keras, numpy as np, keras_wgsef as kw
  >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(2)])
  >>> opt = kw.WGSEF(keras.optimizers.SGD(0.1), k=2, lam=1.0)
  >>> step = make_train_step(model, keras.losses.MeanSquaredError(), opt)
  >>> loss = step(np.ones((4, 4), "float32"), np.zeros((4, 2), "float32"))
"""

from __future__ import annotations

from collections.abc import Callable

import keras

__all__ = ["make_train_step"]


def make_train_step(
    model: keras.Model,
    loss_fn: Callable,
    optimizer: keras.optimizers.Optimizer,
    *,
    strategy=None,
    global_batch_size: int | None = None,
    jit_compile: bool = False,
) -> Callable:
    """Returns ``step(x, y) -> loss``: gradients by ``tf.GradientTape``, then ``optimizer.apply``.

    Args:
      model: the Keras model (built, or buildable by calling it).
      loss_fn: a Keras loss; under a strategy its reduction must be ``"none"`` (per-example
        losses, averaged over the global batch here). Without one, any reduction works.
      optimizer: usually ``keras_wgsef.WGSEF(...)``; any Keras optimizer works.
      strategy: a ``tf.distribute.Strategy``; ``step`` then takes distributed batches
        (``strategy.experimental_distribute_dataset``) and returns the reduced loss.
      global_batch_size: the global batch size for loss averaging under a strategy (default:
        the per-replica batch times the number of replicas).
      jit_compile: compile the step with XLA (single-device steps only).
    """
    import tensorflow as tf

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            per_example = loss_fn(y, pred)
            if strategy is None:
                loss = tf.reduce_mean(per_example)
            else:
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            if model.losses:
                reg = tf.add_n(model.losses)
                loss = loss + (reg if strategy is None else tf.nn.scale_regularization_loss(reg))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    if strategy is None:
        return tf.function(replica_step, jit_compile=jit_compile)

    reduction = getattr(loss_fn, "reduction", "none")
    if reduction not in ("none", None):
        raise ValueError(
            f"under a distribution strategy the loss must return per-example values: create it with "
            f"reduction='none' (got reduction={reduction!r})."
        )

    @tf.function
    def distributed_step(x, y):
        per_replica = strategy.run(replica_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return distributed_step
