"""Channel graph of a Keras model and its dependency-aware, zero-invariant channel groups.

The model (Sequential or Functional, nested models flattened) is read from public data: the
Functional ``get_config()`` inbound nodes and ``model.get_layer``. Every tensor gets one channel
id per position of its last axis. Layer rules (:mod:`keras_wgsef.graph.rules`) create ids
(a producer's output channels), share them (passthrough layers, per-channel carriers) or tie them
together (residual ``Add``: input ``a`` channel ``c`` and input ``b`` channel ``c`` become one
class, via union-find). A *channel class* is a set of ids that can only be removed together.

A class's **group** holds every trainable parameter that produces or carries it: the producers'
kernel slices ``kernel[..., c]`` and biases, BatchNorm ``gamma[c]``/``beta[c]``, a depthwise
kernel's ``[:, :, c, :]`` and bias. With the whole group at zero, the channel is exactly zero
wherever a later layer reads it (``relu(0*x + 0) = 0``), so it can be cut out: the group is
zero-invariant. The consumers' input slices are *not* in the group (they belong to the consumer's
own output groups; groups must partition the variables).

:func:`keras_wgsef.make_groups` (kinds ``"output_channel"`` and ``"block"``) is the public entry;
:func:`analyze` is what ``tflite_export.shrink`` reads.

Example:
  >>> import keras
  >>> x = keras.Input((8, 8, 3))
  >>> h = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, name="a")(x))
  >>> h = keras.layers.Add(name="add")([h, keras.layers.Conv2D(4, 3, name="b")(x)])
  >>> m = keras.Model(x, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(h)))
  >>> scopes, _ = channel_scopes(flatten_model(m), heads={"head"})
  >>> [(s.name, s.num_groups, s.paths) for s in scopes]
  [('a+b', 4, ('a/kernel', 'a/bias', 'bn/gamma', 'bn/beta', 'b/kernel', 'b/bias'))]
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
from keras_wgsef.groups.scope import GroupScope, Member

__all__ = [
    "ChannelAnalysis",
    "analyze",
    "channel_scopes",
    "droppable_inputs",
    "mac_weights",
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
      pins: id -> reason the channel can never be removed (model input/output, opaque layer, ...).
    """

    graph: Graph
    rules: dict[str, cr.ChannelRule]
    tensor_ids: list[np.ndarray]
    channels: dict[str, cr.LayerChannels]
    parent: list[int]
    pins: dict[int, str]
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

    def pin(self, ids: np.ndarray, reason: str) -> None:
        for i in ids.tolist():
            self.pins.setdefault(int(i), reason)

    def pinned_roots(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for i, why in self.pins.items():
            out.setdefault(self.find(i), why)
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
        a.pin(a.tensor_ids[t], "model input")
    for node in g.nodes:
        rule = _resolve_rule(node, g, exclude)
        a.rules[node.path] = rule
        ins = [a.tensor_ids[t] for t in node.inputs]
        a.tensor_ids[node.outputs[0]] = rule.propagate(a, node, ins)
    for t in g.outputs:
        a.pin(a.tensor_ids[t], "model output")
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


def _group_params(a: ChannelAnalysis) -> list[tuple[str, int, np.ndarray, int]]:
    """(weight path, axis, channel ids along the axis, weight size) for every trainable grouped weight."""
    weights = weight_paths(a.graph)
    out = []
    for wpath, (axis, ids) in a.param_ids.items():
        var = weights[wpath]
        if var.trainable:
            out.append((wpath, axis, ids, int(np.prod(var.shape))))
    return out


def channel_scopes(
    graph: Graph,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    heads: Iterable[str] = (),
    block: int = 1,
) -> tuple[list[GroupScope], ChannelAnalysis]:
    """Dependency-aware, zero-invariant output-channel groups of a model's graph.

    Each group holds, for one channel class, the producers' kernel slices ``kernel[..., c]`` and
    biases, and the per-channel parameters that carry it (BatchNorm gamma/beta, depthwise kernel
    slices and biases). Producers whose channels are tied (residual ``Add``, ``Multiply``) share
    group ids; producers whose channels meet in one variable (a BatchNorm after a ``Concatenate``)
    share a scope (with offsets). Scopes name their producers: ``"conv2d"``, ``"conv_a+conv_b"``.
    Weights are left as None (group sizes); :func:`mac_weights` sets MAC cost weights.

    Args:
      graph: the model's :func:`flatten_model` graph.
      include: regexes on layer paths; when given, only matching producers get groups.
      exclude: regexes on layer paths; matching producers get no groups, matching layers without a
        rule are treated as opaque.
      heads: paths of the layers whose channels are never grouped (the classifier heads).
      block: group runs of ``block`` consecutive channels (hardware blocks).

    Returns:
      ``(scopes, analysis)``.
    """
    if int(block) < 1:
        raise ValueError(f"block must be >= 1, got {block}.")
    a = analyze(graph, exclude=exclude)
    heads = set(heads)
    # the head's channels are the model's outputs; other output channels may be grouped when the
    # caller asked for the head too (the exporter still keeps every output channel)
    a.pins = {i: r for i, r in a.pins.items() if r != "model output"}
    producers = list(a.out_ids)
    for path in producers:
        if path in heads:
            a.pin(a.out_ids[path], f"{path} is a head (its channels are model outputs)")
    for path in producers:
        if (include is not None and not matches(include, path)) or matches(exclude, path):
            a.pin(a.out_ids[path], f"producer {path} is not included")
    pinned_now = set(a.pinned_roots())
    for path in producers:
        ids = a.out_ids[path]
        if block > 1 and not set(a.roots(ids).tolist()) <= pinned_now:
            if len(ids) % block:
                raise ValueError(f"layer {path!r} has {len(ids)} output channels, not a multiple of block={block}.")
            for s in range(0, len(ids), block):
                a.union(np.repeat(ids[s], block - 1), ids[s + 1 : s + block], path)
    params = _group_params(a)
    _pin_not_zero_invariant(a, params)
    pinned = set(a.pinned_roots())
    changed = True
    while changed:  # a variable touching any pinned class cannot be grouped: pin all its classes
        changed = False
        for _, _, ids, _ in params:
            r = set(a.roots(ids).tolist())
            if r & pinned and not r <= pinned:
                pinned |= r
                changed = True
    params = [(p, ax, a.roots(ids), n) for p, ax, ids, n in params]
    params = [q for q in params if not (set(q[2].tolist()) & pinned)]
    # scopes: classes linked by a shared variable
    scope_of = {int(r): int(r) for _, _, rr, _ in params for r in rr}

    def top(x: int) -> int:
        while scope_of[x] != x:
            x = scope_of[x]
        return x

    for _, _, rr, _ in params:
        t0 = top(int(rr[0]))
        for r in rr.tolist():
            t = top(r)
            if t != t0:
                scope_of[max(t, t0)] = min(t, t0)
                t0 = min(t, t0)
    label: dict[int, tuple[str, int, int]] = {}
    owner: dict[int, list[str]] = {}
    for path in producers:
        for c, r in enumerate(a.roots(a.out_ids[path]).tolist()):
            if r not in scope_of:
                continue
            paths = owner.setdefault(top(r), [])
            if path not in paths:
                paths.append(path)
            first = label.setdefault(r, (path, c, c))
            if first[0] == path:
                label[r] = (path, first[1], c)
    for path, own in a.channels.items():  # inner channels (attention heads): "mha:heads"
        if own.inner is not None:
            for c, r in enumerate(a.roots(own.inner).tolist()):
                if r in scope_of:
                    owner.setdefault(top(r), [f"{path}:{a.rules[path].inner_name}"])
                    label[r] = (f"{path}:{a.rules[path].inner_name}", c, c)
    scopes: list[GroupScope] = []
    by_scope: dict[int, list] = {}
    for q in params:
        by_scope.setdefault(top(int(q[2][0])), []).append(q)
    for s, qs in by_scope.items():
        order: dict[int, int] = {}
        for path in owner.get(s, []):
            for r in a.roots(a.out_ids.get(path, np.zeros(0, np.int64))).tolist():
                order.setdefault(r, len(order))
        for _, _, rr, _ in qs:
            for r in rr.tolist():
                order.setdefault(r, len(order))
        members = tuple(Member(p, ax, np.array([order[r] for r in rr.tolist()])) for p, ax, rr, _ in qs)
        labels = tuple(_label(label.get(r), r) for r in order)
        name = "+".join(owner.get(s, [])) or qs[0][0].rsplit("/", 1)[0]
        scopes.append(GroupScope(name, members, len(order), None, None, labels))
    return scopes, a


def _pin_not_zero_invariant(a: ChannelAnalysis, params: list[tuple[str, int, np.ndarray, int]]) -> None:
    """Pins the classes that zeroing their group would not silence where a kernel reads them.

    E.g. a convolution with ``activation="sigmoid"`` emits ``sigmoid(0) = 0.5`` from a zero filter,
    and a ``Rescaling`` with an offset after it does the same: such a group could be driven to zero
    and still never be removed. They get no group; a warning names the producers.
    """
    zero = zero_channels(a, zeroed={p for p, _, _, _ in params})
    pinned = a.pinned_roots()
    grouped = {int(r) for _, _, ids, _ in params for r in a.roots(ids).tolist()} - set(pinned)
    reasons: dict[int, str] = {}
    for node in a.graph.nodes:
        rule = a.rules.get(node.path)
        for t in [node.inputs[i] for i in (rule.read_inputs(len(node.inputs)) if rule is not None else ())]:
            for r, z in zip(a.roots(a.tensor_ids[t]).tolist(), zero[t].tolist()):
                if r in grouped and not z:
                    reasons.setdefault(r, f"its channel is nonzero where {node.path} reads it with the group at zero")
    for t in a.graph.outputs:  # a head left in the groups (exclude_outputs=False): read by the caller
        for r, z in zip(a.roots(a.tensor_ids[t]).tolist(), zero[t].tolist()):
            if r in grouped and not z:
                reasons.setdefault(r, "its channel is nonzero in the model output with the group at zero")
    if not reasons:
        return
    for r, why in reasons.items():
        a.pins.setdefault(r, f"not zero-invariant: {why}")
    producers = sorted({p for p, ids in a.out_ids.items() if set(a.roots(ids).tolist()) & set(reasons)})
    import warnings

    warnings.warn(
        f"channels of {producers} are left out of the groups: zeroing them would not remove them (an activation "
        f"or layer maps 0 to a nonzero value, e.g. {next(iter(reasons.values()))}); use a zero-preserving "
        "activation (relu, linear, tanh) there to make them prunable.",
        UserWarning,
        stacklevel=3,
    )


def mac_weights(scopes: list[GroupScope], a: ChannelAnalysis) -> list[GroupScope]:
    """The scopes with MAC cost weights ``d_j = |G_j| * M_j / mean(M)``.

    ``M_j`` is the MACs removed with the channel (producer MACs per output channel plus consumer
    MACs per input channel); the mean runs over every group of ``scopes``, so equal costs give the
    default weights (the group sizes).
    """
    from keras_wgsef.graph.costs import count_macs

    shapes = {p: tuple(w.shape) for p, w in weight_paths(a.graph).items()}
    macs = count_macs(a.graph)
    costs = [_mac_costs(s, macs, a) for s in scopes]
    mean = float(np.mean(np.concatenate(costs))) if scopes else 1.0
    return [s.replace(weights=s.sizes(shapes) * c / mean) for s, c in zip(scopes, costs)]


def _label(entry: tuple | None, root: int) -> str:
    if entry is None:
        return f"channel:{root}"
    path, c0, c1 = entry
    return f"{path}:{c0}" if c0 == c1 else f"{path}:{c0}-{c1}"


def _mac_costs(s: GroupScope, macs: dict[str, int], a: ChannelAnalysis) -> np.ndarray:
    """MACs removed with each group: producer MACs per output channel + consumer MACs per input channel
    (+ a layer's MACs per inner channel: an attention head)."""
    group_of_root: dict[int, int] = {}
    for mb in s.members:
        _, ids = a.param_ids[mb.path]
        for r, gid in zip(a.roots(ids).tolist(), mb.index.tolist()):
            group_of_root[r] = gid
    d = np.zeros(s.num_groups)
    for path, own in a.channels.items():
        for owned in (own.out, own.inp, own.carry, own.inner):
            if owned is None:
                continue
            per = macs.get(path, 0) / max(len(owned), 1)
            for r in a.roots(owned).tolist():
                if r in group_of_root:
                    d[group_of_root[r]] += per
    return np.maximum(d, 1.0)
