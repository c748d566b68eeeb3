"""Channel graph of a Keras model: which channels must be removed together, and which are zero.

The model (Sequential or Functional, nested models flattened) is read from public data: the
Functional ``get_config()`` inbound nodes and ``model.get_layer``. Every tensor gets one channel
id per position of its last axis. Layer rules (:mod:`keras_wgsef.graph.rules`) create ids
(a producer's output channels), share them (passthrough layers, per-channel carriers) or tie them
together (residual ``Add``: input ``a`` channel ``c`` and input ``b`` channel ``c`` become one
class, via union-find). A *channel class* is a set of ids that can only be removed together.

The groups built from these classes (:mod:`keras_wgsef.groups.channel_groups`) and
``tflite_export.shrink`` read :func:`analyze`.

Example:
  >>> import keras
  >>> x = keras.Input((8, 8, 3))
  >>> h = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, name="a")(x))
  >>> h = keras.layers.Add(name="add")([h, keras.layers.Conv2D(4, 3, name="b")(x)])
  >>> a = analyze(keras.Model(x, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(h))))
  >>> bool((a.roots(a.out_ids["a"]) == a.roots(a.out_ids["b"])).all())   # tied by the Add
  True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

from keras_wgsef.graph import rules as cr
from keras_wgsef.graph.model_graph import (
    Graph,
    Node,
    flatten_model,
    layer_variables,
    matches,
    member_names,
    walk_back,
    weight_paths,
)

__all__ = [
    "ChannelAnalysis",
    "analyze",
    "droppable_inputs",
    "dropped_layers",
    "weight_values",
    "zero_channels",
]


@dataclasses.dataclass
class ChannelAnalysis:
    """Channel ids of every tensor and of every layer, with union-find classes and pins.

    Attributes:
      graph: the flat graph.
      rules: resolved rule per layer path (each rule owns its layer's channel behaviour).
      tensor_ids: channel ids along the last axis of each tensor.
      channels: per layer, the ids it owns (:class:`~keras_wgsef.graph.rules.LayerChannels`:
        a producer's output and input channels, a carrier's channels).
      param_ids: member path (``"layer/path/weight"``, :func:`~keras_wgsef.graph.model_graph.member_names`)
        -> (axis, channel ids along it) for every weight indexed by channel.
      pins: id -> why the channel can never be removed (:class:`~keras_wgsef.graph.rules.Pin`: its
        :class:`~keras_wgsef.graph.rules.PinKind` and the reason in words).
    """

    graph: Graph
    rules: dict[str, cr.ChannelRule]
    tensor_ids: list[np.ndarray]
    channels: dict[str, cr.LayerChannels]
    parent: list[int]
    pins: dict[int, cr.Pin]
    param_ids: dict[str, tuple[int, np.ndarray]] = dataclasses.field(default_factory=dict)

    def own(self, path: str) -> cr.LayerChannels:
        """The ids layer ``path`` owns (created empty on first use)."""
        return self.channels.setdefault(path, cr.LayerChannels())

    @property
    def out_ids(self) -> dict[str, np.ndarray]:
        """Producer path -> the output channels it makes."""
        return {p: c.out for p, c in self.channels.items() if c.out is not None}

    @property
    def in_ids(self) -> dict[str, np.ndarray]:
        """Producer path -> the input channels its kernel reads."""
        return {p: c.inp for p, c in self.channels.items() if c.inp is not None}

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def union(self, a: np.ndarray, b: np.ndarray, where: str) -> None:
        if len(a) != len(b):
            raise ValueError(f"{where}: cannot tie {len(a)} channels to {len(b)} channels.")
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def roots(self, ids: np.ndarray) -> np.ndarray:
        return np.array([self.find(int(i)) for i in ids], dtype=np.int64)

    def pin(self, ids: np.ndarray, reason: str, kind: cr.PinKind) -> None:
        """Marks channels that can never be removed, with the reason in words and its kind (the first pin stays).

        The rules pin through :class:`~keras_wgsef.graph.rules.ChannelBuilder`.
        """
        for i in ids.tolist():
            self.pins.setdefault(int(i), cr.Pin(kind, reason))

    def unpin(self, kind: cr.PinKind) -> None:
        """Drops every pin of one kind (e.g. the model outputs' pins, to group a head's channels)."""
        self.pins = {i: p for i, p in self.pins.items() if p.kind is not kind}

    def pinned_roots(self) -> dict[int, str]:
        """Class root -> the reason in words of one pin of the class, for every pinned class."""
        out: dict[int, str] = {}
        for i, p in self.pins.items():
            out.setdefault(self.find(i), p.message)
        return out

    def keep_mask(self, dead: set[int]) -> cr.Keep:
        """``ids -> bool mask`` of the channels that are not in the ``dead`` classes."""
        return lambda ids: np.array([r not in dead for r in self.roots(ids).tolist()], bool)


def analyze(model: Any, *, exclude: str | Iterable[str] | None = None) -> ChannelAnalysis:
    """Builds the channel classes of ``model``.

    Args:
      model: a Sequential or Functional Keras model (built), or its :func:`flatten_model` graph.
      exclude: regexes on layer paths; a matching layer without a rule (or refused) is treated as
        opaque (its input and output channels are kept).
    """
    g = model if isinstance(model, Graph) else flatten_model(model)
    a = ChannelAnalysis(g, {}, [np.zeros(0, np.int64)] * len(g.shapes), {}, [], {})
    for t in g.inputs:
        a.tensor_ids[t] = a.new(int(g.shapes[t][-1]) if g.shapes[t] else 1)
        a.pin(a.tensor_ids[t], "model input", cr.PinKind.INPUT)
    builder = _Builder(a)
    for node in g.nodes:
        rule = _resolve_rule(node, g, exclude)
        a.rules[node.path] = rule
        outs = rule.propagate(builder, node, [a.tensor_ids[t] for t in node.inputs])
        if len(outs) != len(node.outputs):
            raise ValueError(
                f"layer {node.path!r}: its channel rule {type(rule).__name__} gave ids for {len(outs)} outputs; "
                f"the call has {len(node.outputs)}. A rule's propagate returns one id array per output."
            )
        for t, ids in zip(node.outputs, outs):
            a.tensor_ids[t] = ids
    for t in g.outputs:
        a.pin(a.tensor_ids[t], "model output", cr.PinKind.OUTPUT)
    for path, layer in g.layers.items():
        layer_rule, own = a.rules.get(path), a.channels.get(path)
        if layer_rule is None or own is None:
            continue
        v, member = layer_variables(layer), member_names(path, layer)
        for name, axis, ids in layer_rule.weight_slices(own):
            ax = axis % len(v[name].shape)
            if int(v[name].shape[ax]) != len(ids):
                raise ValueError(f"{member[name]}: axis {ax} has {v[name].shape[ax]} entries, expected {len(ids)}.")
            a.param_ids[member[name]] = (ax, ids)
    return a


class _Builder:
    """The analysis as a rule sees it while it is built (:class:`~keras_wgsef.graph.rules.ChannelBuilder`)."""

    def __init__(self, a: ChannelAnalysis) -> None:
        self._a = a

    def shape(self, tensor: int) -> tuple:
        return tuple(self._a.graph.shapes[tensor])

    def new(self, n: int) -> np.ndarray:
        return self._a.new(n)

    def union(self, a: np.ndarray, b: np.ndarray, where: str) -> None:
        self._a.union(a, b, where)

    def pin(self, ids: np.ndarray, kind: cr.PinKind, message: str) -> None:
        self._a.pin(ids, message, kind)

    def own(self, path: str) -> cr.LayerChannels:
        return self._a.own(path)


def _resolve_rule(node: Node, g: Graph, exclude: Any) -> cr.ChannelRule:
    try:
        rule = cr.rule_for(node.layer, node.path)
    except cr.UnsupportedLayerError:
        if matches(exclude, node.path):
            return cr.Opaque(f"excluded {getattr(node.layer, 'class_name', type(node.layer).__name__)} layer")
        raise
    in_shape = g.shapes[node.inputs[0]] if node.inputs else ()
    rule = rule.resolve(node.layer, tuple(in_shape), tuple(g.shapes[node.outputs[0]]))
    if len(node.outputs) != 1 and not isinstance(rule, cr.Opaque):
        return cr.Opaque("layer with several outputs")
    if rule.accepts_inputs is not None and len(node.inputs) not in rule.accepts_inputs:
        return cr.Opaque(f"called with {len(node.inputs)} inputs (an initial state or a mask)")
    if rule.same_inputs and len(set(node.inputs)) > 1:
        return cr.Opaque("called with different query, key or value tensors (or a mask)")
    return rule


def weight_values(a: ChannelAnalysis) -> dict[str, np.ndarray]:
    """Member path (``"layer/path/weight"``) -> its value as NumPy, for every layer of the analysed graph."""
    import keras

    return {p: np.asarray(keras.ops.convert_to_numpy(w)) for p, w in weight_paths(a.graph).items()}


def zero_channels(
    a: ChannelAnalysis, zeroed: Iterable[str] = (), values: dict[str, np.ndarray] | None = None
) -> list[np.ndarray]:
    """Per tensor, which channels are exactly zero for every input (from the weights alone).

    ``zeroed``: weight paths (``"layer/path/weight"``) to take as all zero instead of their
    values: with a group's parameters there, the result says whether zeroing the group silences
    its channel wherever it is read (the group is zero-invariant). :mod:`tflite_export.shrink`
    calls it with the trained weights to find the dead channels. Each layer's rule decides
    (:meth:`~keras_wgsef.graph.rules.ChannelRule.zero`). ``values``: :func:`weight_values`, to
    read the weights once for several calls.
    """
    g = a.graph
    zeroed = set(zeroed)
    values = weight_values(a) if values is None else values
    zero: list[np.ndarray] = [np.zeros(len(ids), bool) for ids in a.tensor_ids]
    for node in g.nodes:
        rule = a.rules[node.path]
        if isinstance(rule, cr.Opaque):
            continue
        member = member_names(node.path, node.layer)
        v = {
            k: np.zeros(tuple(w.shape)) if member[k] in zeroed else values[member[k]]
            for k, w in layer_variables(node.layer).items()
        }
        out_n = len(a.tensor_ids[node.outputs[0]])
        zero[node.outputs[0]] = np.asarray(rule.zero(node.layer, v, [zero[t] for t in node.inputs], out_n), bool)
    return zero


def droppable_inputs(
    a: ChannelAnalysis, zeroed: Iterable[str] = (), values: dict[str, np.ndarray] | None = None
) -> dict[str, list[int]]:
    """Merge layer path -> the inputs that are exactly zero and may go (``Add(x, 0) = x``).

    ``zeroed``: weight paths taken as zero (as in :func:`zero_channels`): with a layer's weights
    there, a nonempty result says that zeroing the layer silences a whole residual branch. A merge
    layer called more than once is left alone (its other calls would change too); an input must
    have the output's shape (no broadcast) and every channel zero.
    """
    zero = zero_channels(a, zeroed, values)
    calls: dict[str, int] = {}
    for node in a.graph.nodes:
        calls[node.path] = calls.get(node.path, 0) + 1
    out: dict[str, list[int]] = {}
    for node in a.graph.nodes:
        if calls[node.path] != 1:
            continue
        shape = tuple(a.graph.shapes[node.outputs[0]][1:])
        all_zero = [bool(zero[t].all()) and tuple(a.graph.shapes[t][1:]) == shape for t in node.inputs]
        drop = a.rules[node.path].droppable(all_zero)
        if drop:
            out[node.path] = drop
    return out


def dropped_layers(a: ChannelAnalysis, drops: dict[str, list[int]]) -> set[str]:
    """Layer paths that no model output depends on once the ``drops`` merge inputs are gone.

    ``drops``: :func:`droppable_inputs`. These are the zero branches' layers; a merge left with one
    input is not counted (the surgery removes it and rewires its readers).
    """

    def follow(node: Node) -> list[int]:
        gone = drops.get(node.path, [])
        return [t for k, t in enumerate(node.inputs) if k not in gone]

    return {n.path for n in a.graph.nodes} - {n.path for n in walk_back(a.graph, follow)}
