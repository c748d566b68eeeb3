"""Rules of the layers without channel weights: they pass, merge, stack, flatten, keep or refuse channels.

:class:`Passthrough` (and :class:`InferenceIdentity`), :class:`Merge`, :class:`Concat`,
:class:`Flatten`, :class:`Reshape` / :class:`Permute` (resolved with the shapes), :class:`Opaque`
(works, channels kept) and :class:`Refuse` (an error with the way out); :class:`Elementwise`, the
rule of the ``keras.ops`` element-wise operations in a Functional graph (resolved with the call's
operands: a passthrough or a merge).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from keras_wgsef.graph.model_graph import Node

from keras_wgsef.graph.rule_base import ChannelBuilder, ChannelRule, Keep, LayerChannels, PinKind, value_at_zero, where

__all__ = [
    "Concat",
    "DotAttention",
    "Elementwise",
    "Flatten",
    "InferenceIdentity",
    "Merge",
    "Opaque",
    "Passthrough",
    "Permute",
    "Refuse",
    "Reshape",
]


@dataclasses.dataclass(frozen=True)
class Passthrough(ChannelRule):
    """Channel ``c`` in is channel ``c`` out, no weights; ``zero_preserving``: whether ``f(0) = 0``."""

    zero_preserving: bool = True
    resize_key: str | None = None  # config key (a shape tuple) whose last entry is the channel width

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        out_width = b.shape(node.outputs[0])[-1]
        if len(ins[0]) != out_width:
            raise ValueError(f"{where(node)}: a passthrough rule, but it changes the channel count.")
        return [ins[0]]

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        return ins[0].copy() if self.zero_preserving else np.zeros(out_n, bool)

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        if self.resize_key:
            config[self.resize_key] = [*list(config[self.resize_key])[:-1], kept]


@dataclasses.dataclass(frozen=True)
class InferenceIdentity(Passthrough):
    """The identity at inference (``training=False``): dropout, noise, random augmentation.

    In training these layers act per sample (flips, crops, noise, colour changes); some of them mix
    channels then (``RandomGrayscale``, ``RandomHue``) or add to every channel (``RandomBrightness``).
    The groups are about the exported, inference-time model, where they are the identity, so a
    channel that is zero in the trained weights is zero after them and removable.
    """


@dataclasses.dataclass(frozen=True)
class Merge(ChannelRule):
    """Element-wise over several inputs that share channels: channel ``c`` of each is one channel.

    ``op``: ``"sum"`` (zero where every input is zero), ``"extremum"`` (the same), ``"product"``
    (zero where any input is zero), ``"quotient"`` (``x / y``: zero where ``x`` is zero and ``y``
    is not known to be zero, since ``0 / 0`` is NaN). A one-channel input broadcast onto every
    channel pins the channels of a sum or extremum (removing one would not remove its share).
    """

    op: str = "sum"  # "sum" | "extremum" | "product" | "quotient"
    #: which inputs may be dropped when they are exactly zero (``x + 0 = x``): "any" (Add),
    #: "last" (Subtract: ``x - 0 = x``), "none" (Average, extrema, products)
    drops: str = "none"

    def droppable(self, all_zero: list[bool]) -> list[int]:
        """Indices of inputs that are exactly zero and can go without changing the output (one input stays)."""
        candidates = [i for i, z in enumerate(all_zero) if z and (self.drops == "any" or i == len(all_zero) - 1)]
        if self.drops == "none" or len(candidates) == len(all_zero):
            return []
        return candidates

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        out_width = b.shape(node.outputs[0])[-1]
        full = [ids for ids in ins if len(ids) == out_width]
        for ids in full[1:]:
            b.union(full[0], ids, where(node))
        if len(full) < len(ins) and self.op not in ("product", "quotient"):
            b.pin(full[0], PinKind.OPAQUE, f"{node.path}: a one-channel input is broadcast onto every channel")
        return [full[0]]

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        full = [z for z in ins if len(z) == out_n]
        bcast = [bool(z[0]) for z in ins if len(z) != out_n]
        if self.op == "quotient":
            num, den = (np.broadcast_to(z, (out_n,)) for z in ins[:2])
            return num & ~den
        if self.op == "product":
            return np.logical_or.reduce(full) | any(bcast)
        return np.logical_and.reduce(full) & all(bcast)


@dataclasses.dataclass(frozen=True)
class Elementwise(ChannelRule):
    """A ``keras.ops`` element-wise operation in a Functional graph (``x + 3.0``, ``keras.ops.relu(x)``).

    Resolved with the call (:class:`~keras_wgsef.graph.model_graph.OperationCall`): with one tensor
    operand and scalar constants (``x * 6``, ``x + 3``, ``clip(x, 0, 6)``) the operation is ``f``
    applied to each element, so channel ``c`` in is channel ``c`` out (a :class:`Passthrough`), and
    a zero channel stays zero only where ``f(0) = 0`` *with this call's constants*: ``x * 6`` keeps
    zeros, ``x + 3`` and ``hard_sigmoid(x)`` (``0.5``) do not. With two tensor operands it is the
    ``merge`` rule (``x + y``: ``Merge("sum")``; ``x * hard_sigmoid(x)`` is zero where ``x`` is);
    operations without one (``power(x, y)``), more operands, or a constant with several values
    (per-channel constants would have to be narrowed with the channels) are :class:`Opaque`.

    Example:
      >>> import keras
      >>> from keras_wgsef.graph.model_graph import flatten_model
      >>> x = keras.Input((4,))
      >>> nodes = flatten_model(keras.Model(x, keras.ops.add(x, 3.0) * keras.ops.multiply(x, 6.0))).nodes
      >>> rules = [Elementwise(Merge("product")).resolve(n.layer, (None, 4), (None, 4)) for n in nodes]
      >>> [type(r).__name__ for r in rules], [r.zero_preserving for r in rules[:2]]
      (['Passthrough', 'Passthrough', 'Merge'], [False, True])
    """

    merge: Merge | None = None  # the rule with two tensor operands (None: opaque then)

    def resolve(self, layer: Any, in_shape: tuple, out_shape: tuple) -> ChannelRule:
        n = layer.num_tensors
        if n == 2 and self.merge is not None:
            return self.merge
        if n != 1:
            return Opaque(f"{layer.class_name} with {n} tensor operands is not analysed as element-wise")
        sizes = [int(np.size(c)) for c in layer.constants()]
        if any(size != 1 for size in sizes):
            return Opaque(f"a constant operand with {max(sizes)} values (only scalar constants pass channels)")
        shape = tuple(1 if d is None else int(d) for d in in_shape) or (1,)
        return Passthrough(zero_preserving=bool(np.all(value_at_zero(lambda z: layer.apply([z]), shape) == 0)))


@dataclasses.dataclass(frozen=True)
class Concat(ChannelRule):
    """Concatenation; along the channel axis the inputs' channels are stacked with offsets."""

    axis: int = -1

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        if self.axis in (-1, len(b.shape(node.outputs[0])) - 1):
            return [np.concatenate(ins)]
        for ids in ins[1:]:
            b.union(ins[0], ids, where(node))
        return [ins[0]]

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        same = len(ins[0]) == out_n and len(ins) > 1 and sum(len(z) for z in ins) != out_n
        return np.logical_and.reduce(ins) if same else np.concatenate(ins)


@dataclasses.dataclass(frozen=True)
class Flatten(ChannelRule):
    """channels_last flattening: channel ``c`` of an ``(H, W, C)`` map sits at positions ``s*C + c``."""

    resize_key: str | None = None  # Reshape((n,)) used as a flatten: config key to update

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        in_shape = b.shape(node.inputs[0])
        reps = int(np.prod(in_shape[1:-1])) if len(in_shape) > 2 else 1
        return [np.tile(ins[0], reps)]

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        return np.tile(ins[0], out_n // max(len(ins[0]), 1))

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        if self.resize_key:
            config[self.resize_key] = [kept]


@dataclasses.dataclass(frozen=True)
class Reshape(ChannelRule):
    """Resolved with the shapes: same last axis -> passthrough; ``(batch, n)`` -> flatten; else opaque."""

    resize_key: str = "target_shape"

    def resolve(self, layer: Any, in_shape: tuple, out_shape: tuple) -> ChannelRule:
        if len(out_shape) == 2 and len(in_shape) > 2:
            return Flatten(resize_key=self.resize_key)
        if in_shape and in_shape[-1] == out_shape[-1]:
            return Passthrough(resize_key=self.resize_key)
        return Opaque("Reshape that moves the channel axis")


@dataclasses.dataclass(frozen=True)
class Permute(ChannelRule):
    """``Permute(dims)``: passthrough when the channel axis stays last, opaque when it moves."""

    def resolve(self, layer: Any, in_shape: tuple, out_shape: tuple) -> ChannelRule:
        dims = tuple(layer.get_config()["dims"])
        if dims and dims[-1] == len(dims):
            return Passthrough()
        return Opaque(f"Permute{dims} moves the channel axis (the analysis follows the last axis)")


@dataclasses.dataclass(frozen=True)
class Opaque(ChannelRule):
    """Works, but its input and output channels are never removed; ``reason`` says why (reported)."""

    reason: str = "opaque layer"

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        what = f"{type(node.layer).__name__}: {self.reason}"
        for ids in ins:
            b.pin(ids, PinKind.OPAQUE, f"read by {node.path} ({what})")
        outs = [b.new(int(b.shape(t)[-1]) if b.shape(t) else 1) for t in node.outputs]
        for ids in outs:
            b.pin(ids, PinKind.OPAQUE, f"made by {node.path} ({what})")
        return outs

    def slice_weights(self, v: dict[str, np.ndarray], keep: Keep, own: LayerChannels) -> dict[str, np.ndarray]:
        return v


@dataclasses.dataclass(frozen=True)
class Refuse(ChannelRule):
    """A layer with no channel meaning for this purpose; :func:`rule_for` raises with the reason."""

    reason: str = "no channel semantics"


@dataclasses.dataclass(frozen=True)
class DotAttention(ChannelRule):
    """``Attention([query, value(, key)])`` with dot scores: ``softmax(q k^T) v``, no channel weights.

    Query channel ``c`` meets key channel ``c`` in every score (``q_c * k_c``): they are tied, and a
    channel that is zero in the query adds nothing to any score, so it can go from both. The output
    is a convex combination of the value rows: its channels are the value's (zero where the value
    is zero).
    """

    reads_channels: ClassVar[bool] = True  # the scores read the query's channels together
    accepts_inputs: ClassVar[tuple[int, ...] | None] = (2, 3)  # masks would be more

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        query, value = ins[0], ins[1]
        b.union(query, ins[2] if len(ins) > 2 else value, where(node))
        return [value]

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        return ins[1].copy()


@dataclasses.dataclass(frozen=True)
class AdditiveAttention(DotAttention):
    """``AdditiveAttention``: scores ``sum_c scale_c * tanh(q_c + k_c)``; the value's channels pass.

    Query and key channel ``c`` are tied; the channel adds nothing to the scores only where both
    are zero (``tanh(0) = 0``) or its ``scale`` is zero, so both inputs are read.
    """

    scale: bool = True

    def read_inputs(self, n_inputs: int) -> tuple[int, ...]:
        return (0, 2) if n_inputs == 3 else (0, 1)

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        own = b.own(node.path)
        own.carry = ins[0]  # the scale is indexed by the query/key channels
        return super().propagate(b, node, ins)

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        return [("scale", 0, own.carry)] if self.scale else []

    def unread_inputs(self, v: dict[str, np.ndarray], n_in: int) -> np.ndarray:
        return v["scale"] == 0 if self.scale else np.zeros(n_in, bool)


@dataclasses.dataclass(frozen=True)
class DotProduct(ChannelRule):
    """``Dot(axes=-1)`` of two inputs: channel ``c`` of one meets channel ``c`` of the other.

    The channels are tied and read by both inputs; the output (the products' sums: positions or a
    single value, not channels) is new and kept. ``normalize=True`` (cosine) is exact too: a zero
    channel adds nothing to either norm.
    """

    reads_channels: ClassVar[bool] = True
    accepts_inputs: ClassVar[tuple[int, ...] | None] = (2,)

    def read_inputs(self, n_inputs: int) -> tuple[int, ...]:
        return (0, 1)

    def resolve(self, layer: Any, in_shape: tuple, out_shape: tuple) -> ChannelRule:
        axes = layer.get_config()["axes"]
        axes = list(axes) if isinstance(axes, (list, tuple)) else [axes, axes]
        if any(ax not in (-1, len(in_shape) - 1) for ax in axes):
            return Opaque(f"Dot over axes {axes}, not the channel axis")
        return self

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        b.union(ins[0], ins[1], where(node))
        out = b.new(int(b.shape(node.outputs[0])[-1] or 1))
        b.pin(out, PinKind.OPAQUE, f"made by {node.path} (Dot: products summed over the channels)")
        return [out]

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        return np.full(out_n, bool(np.all(ins[0] | ins[1])))
