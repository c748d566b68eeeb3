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
from keras_wgsef.graph.model_graph import Graph, Node, flatten_model, layer_variables, matches
from keras_wgsef.groups.scope import GroupScope, Member

__all__ = ["ChannelAnalysis", "analyze", "channel_scopes", "mac_weights", "zero_channels"]


@dataclasses.dataclass
class ChannelAnalysis:
    """Channel ids of every tensor and of every weighted layer, with union-find classes and pins.

    Attributes:
      graph: the flat graph.
      rules: resolved rule per layer path.
      tensor_ids: channel ids along the last axis of each tensor.
      out_ids: a producer's (Produce/Separable) output channels; ``in_ids``: the input channels its
        kernel reads (Produce/Separable); ``carry_ids``: a carrier's channels.
      pins: id -> reason the channel can never be removed (model input/output, opaque layer, ...).
    """

    graph: Graph
    rules: dict[str, cr.ChannelRule]
    tensor_ids: list[np.ndarray]
    out_ids: dict[str, np.ndarray]
    in_ids: dict[str, np.ndarray]
    carry_ids: dict[str, np.ndarray]
    parent: list[int]
    pins: dict[int, str]

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


def analyze(model: Any, *, exclude: str | Iterable[str] | None = None) -> ChannelAnalysis:
    """Builds the channel classes of ``model``.

    Args:
      model: a Sequential or Functional Keras model (built), or its :func:`flatten_model` graph.
      exclude: regexes on layer paths; a matching layer without a rule is treated as opaque (its
        input and output channels are kept).
    """
    g = model if isinstance(model, Graph) else flatten_model(model)
    a = ChannelAnalysis(g, {}, [np.zeros(0, np.int64)] * len(g.shapes), {}, {}, {}, [], {})
    for t in g.inputs:
        a.tensor_ids[t] = a.new(int(g.shapes[t][-1]))
        a.pin(a.tensor_ids[t], "model input")
    for node in g.nodes:
        _apply(a, node, exclude)
    for t in g.outputs:
        a.pin(a.tensor_ids[t], "model output")
    return a


def _resolve_rule(node: Node, g: Graph, exclude: Any) -> cr.ChannelRule:
    try:
        rule = cr.rule_for(node.layer, node.path)
    except cr.UnsupportedLayerError:
        if matches(exclude, node.path):
            return cr.Opaque(f"excluded {type(node.layer).__name__} layer")
        raise
    in_shape = g.shapes[node.inputs[0]] if node.inputs else ()
    out_shape = g.shapes[node.outputs[0]]
    if isinstance(rule, cr.Reshape):
        if len(out_shape) == 2 and len(in_shape) > 2:
            return cr.Flatten(resize_key=rule.resize_key)
        if in_shape and in_shape[-1] == out_shape[-1]:
            return cr.Passthrough(resize_key=rule.resize_key)
        return cr.Opaque("Reshape that moves the channel axis")
    if isinstance(rule, cr.Carry) and rule.channel_axis not in (-1, len(in_shape) - 1):
        return cr.Opaque(f"per-channel axis {rule.channel_axis} is not the last axis")
    if len(node.outputs) != 1 and not isinstance(rule, cr.Opaque):
        return cr.Opaque("layer with several outputs")
    return rule


def _apply(a: ChannelAnalysis, node: Node, exclude: Any) -> None:
    g, path, layer = a.graph, node.path, node.layer
    rule = _resolve_rule(node, g, exclude)
    a.rules[path] = rule
    ins = [a.tensor_ids[t] for t in node.inputs]
    where = f"layer {path!r} ({type(layer).__name__})"
    out_width = g.shapes[node.outputs[0]][-1] if g.shapes[node.outputs[0]] else None
    if isinstance(rule, cr.Opaque):
        for ids in ins:
            a.pin(ids, f"read by {path} ({type(layer).__name__}: {rule.reason})")
        for t in node.outputs:
            a.tensor_ids[t] = a.new(int(g.shapes[t][-1]) if g.shapes[t] else 1)
            a.pin(a.tensor_ids[t], f"made by {path} ({type(layer).__name__}: {rule.reason})")
        return
    out = node.outputs[0]
    if isinstance(rule, (cr.Produce, cr.Separable)):
        v = layer_variables(layer)
        if isinstance(rule, cr.Produce):
            shape = v[rule.kernel].shape
            n_out, n_in = int(shape[rule.out_axis]), int(shape[rule.in_axis])
        else:
            n_out, n_in = int(v[rule.pointwise].shape[-1]), int(v[rule.depthwise].shape[-2])
        if path not in a.out_ids:
            a.out_ids[path], a.in_ids[path] = a.new(n_out), a.new(n_in)
        a.union(ins[0], a.in_ids[path], where)
        a.tensor_ids[out] = a.out_ids[path]
        if getattr(rule, "mixes_output", False):
            a.pin(a.out_ids[path], f"made by {path} (its activation mixes channels)")
    elif isinstance(rule, cr.Carry):
        if path not in a.carry_ids:
            a.carry_ids[path] = a.new(len(ins[0]))
        a.union(ins[0], a.carry_ids[path], where)
        a.tensor_ids[out] = a.carry_ids[path]
    elif isinstance(rule, cr.Passthrough):
        if len(ins[0]) != out_width:
            raise ValueError(f"{where}: a passthrough rule, but it changes the channel count.")
        a.tensor_ids[out] = ins[0]
    elif isinstance(rule, cr.Merge):
        full = [ids for ids in ins if len(ids) == out_width]
        for ids in full[1:]:
            a.union(full[0], ids, where)
        if len(full) < len(ins) and rule.op != "product":
            a.pin(full[0], f"{path}: a one-channel input is broadcast onto every channel")
        a.tensor_ids[out] = full[0]
    elif isinstance(rule, cr.Concat):
        rank = len(g.shapes[out])
        if rule.axis in (-1, rank - 1):
            a.tensor_ids[out] = np.concatenate(ins)
        else:
            for ids in ins[1:]:
                a.union(ins[0], ids, where)
            a.tensor_ids[out] = ins[0]
    elif isinstance(rule, cr.Flatten):
        in_shape = g.shapes[node.inputs[0]]
        reps = int(np.prod(in_shape[1:-1])) if len(in_shape) > 2 else 1
        a.tensor_ids[out] = np.tile(ins[0], reps)
    else:
        raise TypeError(f"{where}: unknown rule type {type(rule).__name__}.")


def _act_zero(layer: Any) -> bool:
    """``activation(0) == 0`` for the layer's activation (True without one)."""
    fn = getattr(layer, "activation", None)
    return True if fn is None else bool(np.all(cr.value_at_zero(fn) == 0))


def zero_channels(a: ChannelAnalysis, zeroed: Iterable[str] = ()) -> list[np.ndarray]:
    """Per tensor, which channels are exactly zero for every input (from the weights alone).

    ``zeroed``: weight paths (``"layer/path/weight"``) to take as all zero instead of their
    values: with a group's parameters there, the result says whether zeroing the group silences
    its channel wherever it is read (the group is zero-invariant). :mod:`tflite_export.shrink`
    calls it with the trained weights to find the dead channels.
    """
    import keras

    g = a.graph
    zeroed = set(zeroed)
    zero: list[np.ndarray] = [np.zeros(len(ids), bool) for ids in a.tensor_ids]
    for node in g.nodes:
        rule, layer = a.rules[node.path], node.layer
        v = {
            k: np.zeros(tuple(w.shape)) if f"{node.path}/{k}" in zeroed else np.asarray(keras.ops.convert_to_numpy(w))
            for k, w in layer_variables(layer).items()
        }
        ins = [zero[t] for t in node.inputs]
        out_n = len(a.tensor_ids[node.outputs[0]])
        if isinstance(rule, cr.Opaque):
            continue
        if isinstance(rule, (cr.Produce, cr.Separable)):
            if isinstance(rule, cr.Produce):
                w = np.moveaxis(
                    v[rule.kernel], [rule.in_axis % v[rule.kernel].ndim, rule.out_axis % v[rule.kernel].ndim], [-2, -1]
                )
                live = ~ins[0]
            else:
                dw, dm = v[rule.depthwise], rule.depth_multiplier
                mid_zero = np.repeat(ins[0], dm) | np.all(dw == 0, axis=tuple(range(dw.ndim - 2))).reshape(-1)
                w, live = v[rule.pointwise], ~mid_zero
            out = np.all(w[..., live, :] == 0, axis=tuple(range(w.ndim - 1)))
            if rule.bias:
                out &= v[rule.bias] == 0
            out &= _act_zero(layer)
        elif isinstance(rule, cr.Carry):
            if isinstance(layer, keras.layers.BatchNormalization):
                n = len(ins[0])
                gamma, beta = v.get("gamma", np.ones(n)), v.get("beta", np.zeros(n))
                mean = v.get("moving_mean", np.zeros(n))
                out = ((gamma == 0) & (beta == 0)) | (ins[0] & (beta == 0) & ((gamma == 0) | (mean == 0)))
            else:
                out = ins[0].copy()
                if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
                    k = v["kernel"]
                    out |= np.all(np.moveaxis(k, -2, -1) == 0, axis=tuple(range(k.ndim - 1)))
                    out &= _act_zero(layer)
                if rule.bias:
                    out &= v[rule.bias] == 0
        elif isinstance(rule, cr.Passthrough):
            out = ins[0] if rule.zero_preserving else np.zeros(out_n, bool)
        elif isinstance(rule, cr.Merge):
            full = [z for z in ins if len(z) == out_n]
            bcast = [bool(z[0]) for z in ins if len(z) != out_n]
            if rule.op == "product":
                out = np.logical_or.reduce(full) | any(bcast)
            else:
                out = np.logical_and.reduce(full) & all(bcast)
        elif isinstance(rule, cr.Concat):
            same = len(ins[0]) == out_n and len(ins) > 1 and sum(len(z) for z in ins) != out_n
            out = np.logical_and.reduce(ins) if same else np.concatenate(ins)
        elif isinstance(rule, cr.Flatten):
            out = np.tile(ins[0], out_n // max(len(ins[0]), 1))
        else:
            raise TypeError(f"{node.path}: unknown rule {type(rule).__name__}")
        zero[node.outputs[0]] = np.asarray(out, bool)
    return zero


def _group_params(a: ChannelAnalysis) -> list[tuple[str, int, np.ndarray, int]]:
    """(variable path, axis, channel ids along the axis, variable size) for every grouped parameter."""
    out = []
    for path, layer in a.graph.layers.items():
        rule, v = a.rules.get(path), layer_variables(layer)
        entries: list[tuple[str, int, np.ndarray]] = []
        if isinstance(rule, cr.Produce):
            entries = [(rule.kernel, rule.out_axis, a.out_ids[path])]
            if rule.bias:
                entries.append((rule.bias, 0, a.out_ids[path]))
        elif isinstance(rule, cr.Separable):
            entries = [(rule.pointwise, -1, a.out_ids[path])]
            if rule.bias:
                entries.append((rule.bias, 0, a.out_ids[path]))
            entries.append((rule.depthwise, -2, a.in_ids[path]))
        elif isinstance(rule, cr.Carry):
            entries = [(n, ax, a.carry_ids[path]) for n, ax in rule.params]
            if rule.bias:
                entries.append((rule.bias, 0, a.carry_ids[path]))
        for name, axis, ids in entries:
            var = v[name]
            if var.trainable:
                ax = axis % len(var.shape)
                if int(var.shape[ax]) != len(ids):
                    raise ValueError(f"{var.path}: axis {ax} has {var.shape[ax]} entries, expected {len(ids)}.")
                out.append((f"{path}/{name}", ax, ids, int(np.prod(var.shape))))
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
    scopes: list[GroupScope] = []
    by_scope: dict[int, list] = {}
    for q in params:
        by_scope.setdefault(top(int(q[2][0])), []).append(q)
    for s, qs in by_scope.items():
        order: dict[int, int] = {}
        for path in owner.get(s, []):
            for r in a.roots(a.out_ids[path]).tolist():
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
        if isinstance(a.rules.get(node.path), (cr.Produce, cr.Separable)):
            t = node.inputs[0]
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
    from keras_wgsef.graph.model_graph import weight_paths

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
    """MACs removed with each group: producer MACs per output channel + consumer MACs per input channel."""
    group_of_root: dict[int, int] = {}
    for mb in s.members:
        layer_path = mb.path.rpartition("/")[0]
        if mb.path.endswith("depthwise_kernel"):
            ids = a.in_ids[layer_path]
        else:
            ids = a.out_ids[layer_path] if layer_path in a.out_ids else a.carry_ids[layer_path]
        for r, gid in zip(a.roots(ids).tolist(), mb.index.tolist()):
            group_of_root[r] = gid
    d = np.zeros(s.num_groups)
    for table in (a.out_ids, a.in_ids, a.carry_ids):
        for path, ids in table.items():
            per = macs.get(path, 0) / max(len(ids), 1)
            for r in a.roots(ids).tolist():
                if r in group_of_root:
                    d[group_of_root[r]] += per
    return np.maximum(d, 1.0)
