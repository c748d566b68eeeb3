"""Learning-rate rewinding: ``Rewound``, a schedule the controller can restart when it freezes the support.

Learning-rate rewinding (Renda, Frankle, Carbin, "Comparing Rewinding and Fine-tuning in Neural
Network Pruning", ICLR 2020): after pruning, fine-tune with the original schedule replayed from
its start instead of continuing at the small rate where training left off. :class:`Rewound`
wraps any schedule; after :meth:`Rewound.rewind` at step ``s0`` it returns

    lr(step) = base((step - s0) * S / (S - s0))

so the whole base schedule (warm-up, peak, decay over ``S = total_steps``) replays, compressed
into the steps that remain. ``s0`` and ``S`` are variables, so a compiled training step follows
them; ``offset`` may be a variable owned elsewhere: :func:`rewindable_schedule` passes the
``WGSEF`` optimizer's checkpointed ``rewind_step``, so a run resumed from a checkpoint replays from
the same step.

Example:
  >>> import keras
  >>> r = Rewound(keras.optimizers.schedules.CosineDecay(0.1, decay_steps=100), total_steps=100)
  >>> round(float(r(50)), 4)
  0.05
  >>> r.rewind(50)
  >>> round(float(r(50)), 4), round(float(r(75)), 4)
  (0.1, 0.05)
"""

from __future__ import annotations

import weakref
from typing import Any

import keras
from keras import ops

__all__ = ["Rewound", "rewindable_schedule"]

#: per WGSEF optimizer, the Rewound schedule :func:`rewindable_schedule` gave its inner optimizer
#: (kept off the optimizer: TensorFlow would track an attribute as part of the object)
_REWOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@keras.saving.register_keras_serializable(package="keras_wgsef")
class Rewound(keras.optimizers.schedules.LearningRateSchedule):
    """Wraps ``base`` so that :meth:`rewind` replays it over the remaining steps.

    Args:
      base: the schedule to replay (e.g. ``CosineDecay``).
      total_steps: the steps of the whole run ``S`` (settable: a resumed run recomputes it).
      offset: the step of the last rewind (0: none), or an int32 variable holding it.
    """

    def __init__(
        self,
        base: keras.optimizers.schedules.LearningRateSchedule,
        total_steps: int,
        offset: int | keras.Variable = 0,
    ):
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
        self.base = base
        self._total = keras.Variable(int(total_steps), dtype="int32", trainable=False, name="rewind_total")
        if isinstance(offset, keras.Variable):
            self.offset = offset
        else:
            self.offset = keras.Variable(int(offset), dtype="int32", trainable=False, name="rewind_offset")

    @property
    def total_steps(self) -> int:
        """The steps of the whole run ``S``."""
        return int(keras.ops.convert_to_numpy(self._total))

    @total_steps.setter
    def total_steps(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"total_steps must be >= 1, got {value}.")
        self._total.assign(int(value))

    def rewind(self, step: int) -> None:
        """Replays the base schedule from its start, from ``step`` to ``total_steps``."""
        if not 0 <= int(step) < self.total_steps:
            raise ValueError(f"rewind step must be in [0, {self.total_steps}), got {step}.")
        self.offset.assign(int(step))

    def __call__(self, step: Any) -> Any:
        s0 = ops.cast(ops.convert_to_tensor(self.offset), "float32")
        total = ops.cast(ops.convert_to_tensor(self._total), "float32")
        local = (ops.cast(step, "float32") - s0) * total / ops.maximum(total - s0, 1.0)
        return self.base(ops.maximum(local, 0.0))

    def get_config(self) -> dict[str, Any]:
        return {
            "base": keras.saving.serialize_keras_object(self.base),
            "total_steps": self.total_steps,
            "offset": int(float(keras.ops.convert_to_numpy(self.offset))),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Rewound:
        config = dict(config)
        config["base"] = keras.saving.deserialize_keras_object(config["base"])
        return cls(**config)


def rewindable_schedule(optimizer: Any, total_steps: int) -> Rewound | None:
    """The learning-rate schedule of a WGSEF optimizer's inner optimizer, wrapped once in a :class:`Rewound`.

    The wrapper's offset is the optimizer's ``rewind_step`` variable, so a checkpoint of the
    optimizer (``BackupAndRestore``, ``save_weights``) keeps the step of the rewind; later calls
    return the same schedule with ``total_steps`` updated (a compiled step keeps following it).
    A schedule restored from a saved model that was already a :class:`Rewound` is unwrapped first.

    Args:
      optimizer: a built :class:`keras_wgsef.WGSEF`.
      total_steps: the inner optimizer's steps of the whole run.

    Returns:
      The :class:`Rewound` schedule, now the inner optimizer's learning rate; None for a constant
      learning rate (nothing to rewind).

    Example:
      >>> import keras, keras_wgsef as kw
      >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="h"), keras.layers.Dense(1)])
      >>> cosine = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=10)
      >>> opt = kw.WGSEF(keras.optimizers.SGD(cosine), k=1)
      >>> opt.build(m.trainable_variables)
      >>> r = rewindable_schedule(opt, 10)
      >>> r.rewind(5)
      >>> int(keras.ops.convert_to_numpy(opt.rewind_step)), rewindable_schedule(opt, 20) is r, r.total_steps
      (5, True, 20)
    """
    rewound = _REWOUND.get(optimizer)
    if rewound is not None:
        rewound.total_steps = total_steps
        return rewound
    config = optimizer.inner_optimizer.get_config()["learning_rate"]  # the public getter evaluates it
    if not isinstance(config, dict):
        return None
    base = keras.saving.deserialize_keras_object(config)
    if isinstance(base, Rewound):
        base = base.base
    rewound = Rewound(base, total_steps, offset=optimizer.rewind_step)
    optimizer.inner_optimizer.learning_rate = rewound
    _REWOUND[optimizer] = rewound
    return rewound
