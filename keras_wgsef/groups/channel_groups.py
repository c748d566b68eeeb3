"""Dependency-aware, zero-invariant output-channel groups, built from the channel analysis.

A class's **group** (:mod:`keras_wgsef.graph.channels`: the channels that can only be removed
together) holds every trainable parameter that produces or carries it: the producers' kernel
slices ``kernel[..., c]`` and biases, BatchNorm ``gamma[c]``/``beta[c]``, a depthwise kernel's
``[:, :, c, :]`` and bias. With the whole group at zero, the channel is exactly zero wherever a
later layer reads it (``relu(0*x + 0) = 0``), so it can be cut out: the group is zero-invariant.
The consumers' input slices are *not* in the group (they belong to the consumer's own output
groups; groups must partition the variables).

:func:`keras_wgsef.make_groups` (kinds ``"output_channel"`` and ``"block"``) is the public entry.

Example:
  >>> import keras
  >>> from keras_wgsef.graph.model_graph import flatten_model
  >>> x = keras.Input((8, 8, 3))
  >>> h = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, name="a")(x))
  >>> h = keras.layers.Add(name="add")([h, keras.layers.Conv2D(4, 3, name="b")(x)])
  >>> m = keras.Model(x, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(h)))
  >>> scopes, _ = channel_scopes(flatten_model(m), heads={"head"})
  >>> [(s.name, s.num_groups, s.paths) for s in scopes]
  [('a+b', 4, ('a/kernel', 'a/bias', 'bn/gamma', 'bn/beta', 'b/kernel', 'b/bias'))]
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np

from keras_wgsef.graph.channels import ChannelAnalysis, analyze, zero_channels
from keras_wgsef.graph.costs import count_macs
from keras_wgsef.graph.model_graph import Graph, matches, weight_paths
from keras_wgsef.graph.rules import Pin, PinKind
from keras_wgsef.groups.scope import GroupScope, Member

__all__ = ["channel_scopes", "mac_weights"]


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
    a.unpin(PinKind.OUTPUT)
    producers = list(a.out_ids)
    for path in producers:
        if path in heads:
            a.pin(a.out_ids[path], f"{path} is a head (its channels are model outputs)", PinKind.HEAD)
    for path in producers:
        if (include is not None and not matches(include, path)) or matches(exclude, path):
            a.pin(a.out_ids[path], f"producer {path} is not included", PinKind.EXCLUDED)
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
        a.pins.setdefault(r, Pin(PinKind.NOT_ZERO_INVARIANT, f"not zero-invariant: {why}"))
    producers = sorted({p for p, ids in a.out_ids.items() if set(a.roots(ids).tolist()) & set(reasons)})
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
