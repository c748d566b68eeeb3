"""The one toolkit for editing a saved Keras model config: every pass edits configs with it.

A Sequential or Functional model serializes to ``{"layers": [entry, ...], ...}``; each layer entry
is ``{"class_name", "config", "inbound_nodes", ...}`` and a nested model is an entry whose
``config`` has ``"layers"`` itself. A Functional config names the tensors between layers by
``keras_history = [layer name, node index, tensor index]`` inside ``__keras_tensor__`` dicts.

* :func:`model_configs` walks the top config and every nested one (with the layer-path prefix of
  :func:`keras_wgsef.graph.model_graph.flatten_model`);
* :func:`history_refs`, :func:`remove_tensors`, :func:`tensor_ref`, :func:`output_refs` read and
  write tensor references;
* :func:`layer_entry`, :func:`unique_name` and :func:`insert_before` add layers.

Example (a Sequential inside a Functional model: both configs, the nested one first):
  >>> import keras
  >>> inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")], name="inner")
  >>> x = keras.Input((4,))
  >>> outer = keras.Model(x, inner(x))
  >>> config = keras.saving.serialize_keras_object(outer)["config"]
  >>> [prefix for _, prefix in model_configs(config)]
  ['inner/', '']
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

__all__ = [
    "history_refs",
    "insert_before",
    "is_functional",
    "layer_entry",
    "model_configs",
    "output_refs",
    "remove_tensors",
    "tensor_ref",
    "unique_name",
]


def is_functional(config: dict) -> bool:
    """Whether a model config is a Functional one (its layers are linked by tensor references)."""
    return "input_layers" in config


def model_configs(config: dict, prefix: str = "") -> Iterator[tuple[dict, str]]:
    """Every model config inside ``config`` and ``config`` itself, nested ones first, with their prefix.

    The prefix is the layer-path prefix of the config's layers (``"block/"`` for the layers of a
    nested model named ``block``), so ``prefix + entry["config"]["name"]`` is a layer's path.
    The nested configs are listed before the walk starts: an editor may change ``layers``.
    """
    nested = [lc["config"] for lc in config.get("layers", []) if "layers" in lc.get("config", {})]
    for inner in nested:
        yield from model_configs(inner, prefix + inner["name"] + "/")
    yield config, prefix


def history_refs(obj: Any) -> list[dict]:
    """Every Keras tensor config (holding its ``keras_history``) inside an inbound-node structure."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return [obj["config"]]
        return [t for v in obj.values() for t in history_refs(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in history_refs(v)]
    return []


def remove_tensors(obj: Any, doomed: list[dict]) -> Any:
    """``obj`` without the Keras tensors whose configs are in ``doomed`` (compared by identity)."""
    if isinstance(obj, (list, tuple)):
        return [remove_tensors(v, doomed) for v in obj if not (isinstance(v, dict) and v.get("config") in doomed)]
    if isinstance(obj, dict) and obj.get("class_name") != "__keras_tensor__":
        return {k: remove_tensors(v, doomed) for k, v in obj.items()}
    return obj


def tensor_ref(layer: str, shape: list, dtype: Any = "float32") -> dict:
    """A reference to the first output of the layer named ``layer`` (shape with the batch axis)."""
    config = {"shape": list(shape), "dtype": dtype, "keras_history": [layer, 0, 0]}
    return {"class_name": "__keras_tensor__", "config": config}


def output_refs(config: dict, key: str = "output_layers") -> list[list]:
    """A Functional config's ``output_layers`` (or ``input_layers``) as a list of ``[name, node, index]``."""
    refs = config[key]
    return [list(refs)] if refs and isinstance(refs[0], str) else [list(r) for r in refs]


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``, ... the first not in ``taken`` (which it joins)."""
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out


def layer_entry(layer: Any, template: dict) -> dict:
    """The config entry of a new layer object, with the ``dtype`` and ``trainable`` of ``template``'s layer."""
    import keras

    entry = keras.saving.serialize_keras_object(layer)
    entry["config"]["dtype"] = copy.deepcopy(template["config"].get("dtype", entry["config"]["dtype"]))
    entry["config"]["trainable"] = template["config"].get("trainable", True)
    entry["name"] = entry["config"]["name"]
    return entry


def insert_before(config: dict, target: dict, entries: list[dict], shapes: list[list]) -> None:
    """Inserts ``entries`` (a chain) before the layer entry ``target``, which then reads the last one.

    Args:
      config: the model config holding ``target``.
      target: a layer entry called once.
      entries: new layer entries (:func:`layer_entry`); the first reads what ``target`` read.
      shapes: the output shape of each entry (with the batch axis), for the Functional references.
    """
    at = config["layers"].index(target)
    if is_functional(config):
        inbound = target["inbound_nodes"]
        args = history_refs(inbound[0]["args"])
        dtype = args[0].get("dtype", "float32") if args else "float32"
        for entry, shape in zip(entries, shapes, strict=True):
            entry["inbound_nodes"] = inbound
            inbound = [{"args": [tensor_ref(entry["config"]["name"], shape, dtype)], "kwargs": {}}]
        target["inbound_nodes"] = inbound
    config["layers"][at:at] = entries
