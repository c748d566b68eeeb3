"""``Distiller``: train a student (the model being sparsified) against a trained teacher's logits.

What a budgeted run has and a thin model trained from scratch does not is the trained dense
network. :class:`Distiller` wraps the student and a copy of the teacher; its loss is

    L = (1 - alpha) * L_task(y, s)  +  alpha * T^2 * KL( softmax(t / T) || softmax(s / T) )

with ``s`` and ``t`` the student's and teacher's logits (Hinton, Vinyals, Dean, "Distilling the
Knowledge in a Neural Network", 2015). Compile the Distiller, not the student, with the WGSEF
optimizer built on the student's groups; :class:`keras_wgsef.callbacks.ReachK` and the budget
plan read the student through :func:`student_of`. Export the student.

Both models must output logits (no softmax layer). Recalibrate the teacher's BatchNorm
(:func:`keras_wgsef.recalibrate_batchnorm`) before distilling: it runs in inference mode.

Example:
  >>> import keras, numpy as np, keras_wgsef as kw
  >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="h"), keras.layers.Dense(3)])
  >>> student = keras.models.clone_model(teacher)
  >>> d = kw.Distiller(student, teacher, alpha=0.5, temperature=2.0)
  >>> d.compile(optimizer=keras.optimizers.SGD(0.01),
  ...           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  >>> _ = d.fit(np.zeros((8, 4)), np.zeros(8), epochs=1, verbose=0)
  >>> student_of(d) is student, len(d.trainable_variables) == len(student.trainable_variables)
  (True, True)
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["Distiller", "student_of"]


class Distiller(keras.Model):
    """A student trained on the task loss plus the KL divergence to a frozen teacher's softened logits.

    Args:
      student: the model to train (its weights are trained in place).
      teacher: a trained model with the same inputs and logits; a frozen copy is used (the
        argument is never changed).
      alpha: weight of the distillation term in [0, 1] (0 is plain training).
      temperature: softening temperature ``T > 0`` of both softmaxes.
    """

    def __init__(
        self, student: keras.Model, teacher: keras.Model, alpha: float = 0.5, temperature: float = 4.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.student = student
        frozen = keras.models.clone_model(teacher)
        frozen.set_weights(teacher.get_weights())
        frozen.trainable = False
        self.teacher = frozen
        self.alpha = float(alpha)
        self.temperature = float(temperature)

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        task = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if self.alpha == 0.0:
            return task
        t = self.temperature
        teacher = ops.stop_gradient(self.teacher(x, training=False))
        p_teacher = ops.softmax(ops.cast(teacher, "float32") / t, axis=-1)
        log_student = ops.log_softmax(ops.cast(y_pred, "float32") / t, axis=-1)
        log_teacher = ops.log_softmax(ops.cast(teacher, "float32") / t, axis=-1)
        kl = ops.mean(ops.sum(p_teacher * (log_teacher - log_student), axis=-1))
        return (1.0 - self.alpha) * task + self.alpha * (t * t) * kl


def student_of(model: Any) -> Any:
    """The student of a :class:`Distiller`, or ``model`` itself."""
    return model.student if isinstance(model, Distiller) else model
