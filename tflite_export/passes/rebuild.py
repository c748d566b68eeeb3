"""Rebuild a Keras model from its edited config, weights copied by layer path (one way to do it).

Every pass of :mod:`tflite_export.passes` makes its new model the same way: serialize the model,
edit the Functional/Sequential config (with :mod:`tflite_export.passes.config`), deserialize it
(the classes of the model's own layers given as custom objects), then copy each layer's weights
by its path in the model (nested models included), and let preprocessing layers recompute their
cached state. The pass runner checks the new model's outputs.

Example (``model`` the doctest CNN; an edit that changes nothing gives an equal copy):
  >>> copy_ = rebuild(model, lambda config: None)
  >>> copy_ is model, [w.shape for w in copy_.get_weights()] == [w.shape for w in model.get_weights()]
  (False, True)
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from keras_wgsef.graph.model_graph import flatten_model
from tflite_export.passes.config import model_configs

__all__ = ["rebuild"]


def rebuild(
    model: Any,
    edit: Callable[[dict], None],
    weights: Callable[[str, Any], list[np.ndarray] | None] | None = None,
) -> Any:
    """A new model from ``model``'s config after ``edit(config)``; ``model`` is not modified.

    Args:
      model: a built Sequential or Functional model.
      edit: edits the serialized ``config`` (the model's ``"config"`` entry) in place.
      weights: ``(layer path, old layer) -> values`` for a layer of the new model; None (or a
        None result) copies the old layer's weights unchanged. Layers the edit added keep their
        own (initial) weights.

    Returns:
      The new model, uncompiled.
    """
    import keras

    serialized = copy.deepcopy(keras.saving.serialize_keras_object(model))
    serialized.pop("compile_config", None)
    edit(serialized["config"])
    _repair_round_trip(serialized["config"])
    old_layers = flatten_model(model).layers
    # the model's own layer classes (Keras' own are found by their module: given here, a layer class
    # would shadow the keras.ops operation of the same name, e.g. layers.Add and ops.numpy.Add)
    classes = {
        type(layer).__name__: type(layer)
        for layer in old_layers.values()
        if isinstance(layer, keras.layers.Layer) and not type(layer).__module__.startswith("keras.")
    }
    # safe_mode=False: the config comes from the caller's own in-memory model (Lambda layers included)
    new = keras.saving.deserialize_keras_object(serialized, custom_objects=classes, safe_mode=False)
    for path, layer in flatten_model(new).layers.items():
        old = old_layers.get(path)
        if old is None:  # a layer the edit added (padding, cropping): no weights to carry over
            continue
        values = weights(path, old) if weights is not None else None
        if values is None:
            values = [np.asarray(keras.ops.convert_to_numpy(w)) for w in old.weights]
        if values:
            layer.set_weights(values)
            if hasattr(layer, "finalize_state"):  # preprocessing layers cache their state
                layer.finalize_state()
        elif not old.weights:
            _copy_saved_state(old, layer)
    return new


def _copy_saved_state(old: Any, new: Any) -> None:
    """State a layer keeps outside its weights (a lookup's vocabulary), copied the way Keras saves it."""
    import keras

    if not isinstance(old, keras.layers.Layer):  # a keras.ops call: no state
        return
    store: dict[str, Any] = {}
    old.save_own_variables(store)
    if store:
        new.load_own_variables(store)
    if hasattr(old, "save_assets") and hasattr(new, "load_assets"):
        with tempfile.TemporaryDirectory() as assets:
            old.save_assets(assets)
            new.load_assets(assets)


def _repair_round_trip(config: dict) -> None:
    """Layer configs that Keras writes but cannot read back, rewritten to the equal form it reads.

    ``RandomShear(0.2)`` stores ``x_factor=(-0.2, 0.2)``, which its constructor refuses (factors
    must lie in ``[0, 1]``); ``0.2`` builds the same layer.
    """
    for cfg, _ in model_configs(config):
        for lc in cfg.get("layers", []):
            if lc.get("class_name") != "RandomShear":
                continue
            for key in ("x_factor", "y_factor"):
                value = lc["config"].get(key)
                if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == -value[1]:
                    lc["config"][key] = abs(value[1])
