"""``Rewound``: a learning-rate schedule the controller can restart when it freezes the support.

Learning-rate rewinding (Renda, Frankle, Carbin, "Comparing Rewinding and Fine-tuning in Neural
Network Pruning", ICLR 2020): after pruning, fine-tune with the original schedule replayed from
its start instead of continuing at the small rate where training left off. :class:`Rewound`
wraps any schedule; after :meth:`Rewound.rewind` at step ``s0`` it returns

    lr(step) = base((step - s0) * S / (S - s0))

so the whole base schedule (warm-up, peak, decay over ``S = total_steps``) replays, compressed
into the steps that remain. ``s0`` and ``S`` are variables, so a compiled training step follows
them; ``offset`` may be a variable owned elsewhere (``WGSEF`` passes its checkpointed
``rewind_step``, so a run resumed from a checkpoint replays from the same step).

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

from typing import Any

import keras
from keras import ops

__all__ = ["Rewound"]


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
