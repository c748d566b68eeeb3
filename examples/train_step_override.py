"""WGSEF from a ``Model.train_step`` override: the prox runs inside ``self.optimizer.apply``.

Use this pattern when your model already customizes its training step (extra losses, several
optimizers, teacher-student...). The WGSEF optimizer does the inner step and the prox in ``apply``.

    python examples/train_step_override.py
"""

from __future__ import annotations

import keras
import tensorflow as tf

import keras_wgsef as kw


class ProxModel(keras.Model):
    """A functional model whose train_step computes the loss by hand and calls optimizer.apply."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)  # inner step + WGSEF prox
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


def build(cls=ProxModel) -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return cls(inp, keras.layers.Dense(10, name="head")(h))


def main() -> None:
    (x, y), (xt, yt) = kw.datasets.load_digits8x8()
    model = build()
    opt = kw.WGSEF(keras.optimizers.Adam(1e-2), k=4, groups=kw.make_groups(model))
    model.compile(
        optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    model.fit(x, y, epochs=10, batch_size=32, verbose=2, callbacks=[kw.callbacks.ReachK(project_epoch=5)])
    kw.recalibrate_batchnorm(model, x)
    print("nonzero groups:", kw.nonzero_groups(model), "test accuracy:", model.evaluate(xt, yt, verbose=0)[1])


if __name__ == "__main__":
    main()
