"""How each Keras layer class treats channels: one rule class per behaviour, one registry.

Channels are the last axis of a tensor (Keras ``channels_last``). Every layer class of
``keras.layers`` has a rule here (``tests/test_layer_rules.py`` enumerates them); a class
without one raises :class:`UnsupportedLayerError`. A rule owns everything the analysis
(:mod:`keras_wgsef.graph.channels`) and the surgery (``tflite_export.shrink``) need to know about
its layer, so adding a layer means adding one rule class (or one registry entry) and its test:

* :meth:`ChannelRule.resolve` -- the rule for the shapes the layer is called with (a ``Reshape``
  keeps the channel axis or flattens it);
* :meth:`ChannelRule.propagate` -- the channel ids of the output from those of the inputs (new
  ids, shared ids, ids tied together with ``union``, or ids pinned with the reason);
* :meth:`ChannelRule.weight_slices` -- which weight slices belong to a channel (its group);
* :meth:`ChannelRule.zero` -- which output channels are provably zero for every input, from
  the weights and the zero channels of the inputs (zero-invariance);
* :meth:`ChannelRule.slice_weights` / :meth:`ChannelRule.edit_config` -- the weights and config
  of the narrower layer.

Rules (``n`` output channels, ``c`` input channels):

* :class:`Produce` -- makes new channels from a kernel (Dense, Conv1D/2D/3D, Conv*Transpose,
  EinsumDense of the ``...c,cn->...n`` form): output channel ``j`` is ``kernel[..., j]``
  (``out_axis``) plus ``bias[j]``; input channel ``i`` is read through ``kernel[..., i, :]``.
* :class:`Embed` -- Embedding: output dimension ``j`` is ``embeddings[:, j]``; the integer input
  is read as token indices, not channels.
* :class:`Carry` -- one-to-one per-channel parameters: channel ``c`` in is channel ``c`` out
  (PReLU, GroupNormalization with one channel per group). :class:`BatchNormCarry`,
  :class:`DepthwiseCarry`, :class:`NormalizationCarry` (the ``Normalization`` preprocessing
  layer) and :class:`RMSNormCarry` add their own zero rules and slicing.
* :class:`Separable` -- SeparableConv: the depthwise kernel carries input channels, the pointwise
  kernel produces the output channels.
* :class:`Passthrough` -- channel ``c`` in is channel ``c`` out, no weights (activations, pooling,
  padding, cropping, resizing, ``UnitNormalization``). ``zero_preserving`` says whether ``f(0) = 0``.
  :class:`InferenceIdentity` is the passthrough of the layers that are the identity at inference
  (dropout, noise and every random augmentation layer).
* :class:`Merge` -- elementwise over several inputs that share channels: ``"sum"`` (Add, Subtract,
  Average), ``"extremum"`` (Maximum, Minimum); ``"product"`` (Multiply).
* :class:`Concat` -- concatenation; along the channel axis the channels are stacked with offsets.
* :class:`Flatten` -- channels_last flattening: channel ``c`` of an ``(H, W, C)`` map sits at
  positions ``s*C + c`` of the flat vector, ``s`` the spatial index.
* :class:`Reshape`, :class:`Permute` -- resolved with the shapes: the channel axis stays last ->
  passthrough; ``Reshape`` to ``(batch, n)`` -> flatten; otherwise opaque.
* :class:`Opaque` -- works, but its input and output channels are never removed (the reason is
  reported): softmax over channels, LayerNormalization, attention and recurrent layers, grouped
  convolutions.
* :class:`Refuse` -- layers with no channel meaning for this purpose (lookups, hashing, wrappers
  of foreign code, ``Lambda``): an :class:`UnsupportedLayerError` naming the layer, the reason and
  the way out (``exclude=`` the layer to treat it as opaque, or register a rule).

Example:
  >>> import keras
  >>> rule_for(keras.layers.Conv2D(8, 3), "conv2d")
  Produce(kernel='kernel', out_axis=-1, in_axis=-2, bias='bias', width_key='filters', mixes_output=False)
  >>> class MyGate(keras.layers.Layer):
  ...     def call(self, x): return x * 2.0
  >>> register_channel_rule(MyGate, Passthrough())
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from keras_wgsef.graph.channels import ChannelAnalysis
    from keras_wgsef.graph.model_graph import Node

__all__ = [
    "INFERENCE_IDENTITY",
    "BatchNormCarry",
    "Carry",
    "ChannelRule",
    "Concat",
    "DepthwiseCarry",
    "Embed",
    "Flatten",
    "InferenceIdentity",
    "LayerChannels",
    "Merge",
    "NormalizationCarry",
    "Opaque",
    "Passthrough",
    "Permute",
    "Produce",
    "RMSNormCarry",
    "Refuse",
    "Reshape",
    "Separable",
    "UnsupportedLayerError",
    "has_rule",
    "register_channel_rule",
    "rule_for",
    "value_at_zero",
]

#: layer classes that are the identity at inference: no operator after conversion. Checked
#: against Keras by ``tests/test_layer_rules.py`` (``layer(x, training=False) == x``).
INFERENCE_IDENTITY = (
    "Identity",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "AugMix",
    "CutMix",
    "Equalization",
    "MaxNumBoundingBoxes",
    "MixUp",
    "RandAugment",
    "RandomBrightness",
    "RandomColorDegeneration",
    "RandomColorJitter",
    "RandomContrast",
    "RandomCrop",
    "RandomElasticTransform",
    "RandomErasing",
    "RandomFlip",
    "RandomGaussianBlur",
    "RandomGrayscale",
    "RandomHue",
    "RandomInvert",
    "RandomPerspective",
    "RandomPosterization",
    "RandomRotation",
    "RandomSaturation",
    "RandomSharpness",
    "RandomShear",
    "RandomTranslation",
    "RandomZoom",
    "Solarization",
)

Keep = Callable[[np.ndarray], np.ndarray]  # channel ids -> bool mask of the ids that stay


class UnsupportedLayerError(ValueError):
    """A layer the channel analysis has no rule for, or refuses."""


@dataclasses.dataclass
class LayerChannels:
    """The channel ids a layer owns (one object per layer, however often it is called).

    Attributes:
      out: channels the layer makes (producers).
      inp: channels its kernel reads (producers).
      carry: channels it carries one-to-one with per-channel parameters (carriers).
    """

    out: Any = None  # np.ndarray once the layer is seen (None: it has no such channels)
    inp: Any = None
    carry: Any = None


def _where(node: Node) -> str:
    return f"layer {node.path!r} ({type(node.layer).__name__})"


def _act_zero(layer: Any) -> bool:
    """``activation(0) == 0`` for the layer's activation (True without one)."""
    fn = getattr(layer, "activation", None)
    return True if fn is None else bool(np.all(value_at_zero(fn) == 0))


@dataclasses.dataclass(frozen=True)
class ChannelRule:
    """Base class: how one layer class treats channels (see the module docstring).

    ``reads_channels``: the layer reads its input channels jointly (a kernel, or statistics over
    the channels), so a channel can only be removed if it is exactly zero where such a layer reads
    it. Other layers pass channels through one by one.
    """

    reads_channels: ClassVar[bool] = False
    #: the rule holds only for a call with one input (e.g. no initial state for an RNN)
    one_input: ClassVar[bool] = False

    def resolve(self, layer: Any, in_shape: tuple, out_shape: tuple) -> ChannelRule:
        """The rule for a call with these shapes (most rules do not depend on them)."""
        return self

    def propagate(self, a: ChannelAnalysis, node: Node, ins: list[np.ndarray]) -> np.ndarray:
        """The channel ids of the output, from those of the inputs ``ins``."""
        raise NotImplementedError(f"{type(self).__name__}.propagate")

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        """Which output channels are zero for every input (``ins``: zero masks of the inputs)."""
        return np.zeros(out_n, bool)

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        """``(weight name, axis, channel ids along that axis)`` of the weights indexed by channel."""
        return []

    def unread_inputs(self, v: dict[str, np.ndarray], n_in: int) -> np.ndarray:
        """Input channels the layer's weights ignore (an all-zero input slice of its kernel).

        Only meaningful for ``reads_channels`` layers: such a channel may be nonzero and still be
        removed with the kernel slice, since nothing it carries reaches the output.
        """
        return np.zeros(n_in, bool)

    def slice_weights(self, v: dict[str, np.ndarray], keep: Keep, own: LayerChannels) -> dict[str, np.ndarray]:
        """The weights of the narrower layer (default: each :meth:`weight_slices` entry sliced on its axis)."""
        out = dict(v)
        for name, axis, ids in self.weight_slices(own):
            out[name] = np.compress(keep(ids), v[name], axis=axis % v[name].ndim)
        return out

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        """Edits the layer config for ``kept`` of ``before`` output channels (default: nothing)."""

    def output_kernel(self, v: dict[str, np.ndarray]) -> np.ndarray | None:
        """The kernel that makes the output channels, as a ``(-1, n)`` matrix (producers only)."""
        return None

    def droppable(self, all_zero: list[bool]) -> list[int]:
        """Inputs that may leave the layer when exactly zero (``all_zero[i]``), the output unchanged."""
        return []


# ----------------------------------------------------------------------------------- producers
@dataclasses.dataclass(frozen=True)
class Produce(ChannelRule):
    kernel: str = "kernel"
    out_axis: int = -1
    in_axis: int = -2
    bias: str | None = "bias"
    width_key: str = "filters"
    mixes_output: bool = False  # e.g. activation="softmax": the output channels are coupled

    reads_channels: ClassVar[bool] = True

    def _sizes(self, layer: Any) -> tuple[int, int]:
        from keras_wgsef.graph.model_graph import layer_variables

        shape = layer_variables(layer)[self.kernel].shape
        return int(shape[self.out_axis]), int(shape[self.in_axis])

    def propagate(self, a: ChannelAnalysis, node: Node, ins: list[np.ndarray]) -> np.ndarray:
        own = a.own(node.path)
        if own.out is None:
            n_out, n_in = self._sizes(node.layer)
            own.out, own.inp = a.new(n_out), a.new(n_in)
        a.union(ins[0], own.inp, _where(node))
        if self.mixes_output:
            a.pin(own.out, f"made by {node.path} (its activation mixes channels)")
        return own.out

    def _kernel_in_out(self, k: np.ndarray) -> np.ndarray:
        return np.moveaxis(k, [self.in_axis % k.ndim, self.out_axis % k.ndim], [-2, -1])

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        w = self._kernel_in_out(v[self.kernel])
        out = np.all(w[..., ~ins[0], :] == 0, axis=tuple(range(w.ndim - 1)))
        if self.bias:
            out &= v[self.bias] == 0
        return out & _act_zero(layer)

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        entries = [(self.kernel, self.out_axis, own.out)]
        return [*entries, (self.bias, 0, own.out)] if self.bias else entries

    def slice_weights(self, v: dict[str, np.ndarray], keep: Keep, own: LayerChannels) -> dict[str, np.ndarray]:
        out = super().slice_weights(v, keep, own)
        k = out[self.kernel]
        out[self.kernel] = np.compress(keep(own.inp), k, axis=self.in_axis % k.ndim)
        return out

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        config[self.width_key] = kept

    def output_kernel(self, v: dict[str, np.ndarray]) -> np.ndarray | None:
        k = v[self.kernel]
        k = np.moveaxis(k, self.out_axis % k.ndim, -1)
        return k.reshape(-1, k.shape[-1])

    def unread_inputs(self, v: dict[str, np.ndarray], n_in: int) -> np.ndarray:
        w = self._kernel_in_out(v[self.kernel])
        return np.all(np.moveaxis(w, -2, 0).reshape(w.shape[-2], -1) == 0, axis=1)


@dataclasses.dataclass(frozen=True)
class EinsumProduce(Produce):
    """``EinsumDense`` of the form ``...c,cn->...n``: a Dense over the last axis (``output_shape``'s last entry)."""

    width_key: str = "output_shape"

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        shape = config[self.width_key]
        config[self.width_key] = [*list(shape)[:-1], kept] if isinstance(shape, (list, tuple)) else kept


@dataclasses.dataclass(frozen=True)
class RecurrentProduce(ChannelRule):
    """LSTM / GRU / SimpleRNN: unit ``j`` is a channel; its group spans its gate blocks.

    The kernel ``(c, gates*u)``, the recurrent kernel ``(u, gates*u)`` and the bias
    (``(gates*u,)``, or ``(2, gates*u)`` for a GRU with ``reset_after``) hold unit ``j``'s
    columns ``g*u + j`` for every gate ``g``; the recurrent kernel's row ``j`` reads the unit's own
    output and goes with it. A unit whose candidate block (LSTM ``c``, GRU ``h``, SimpleRNN: the
    only block) is zero never leaves its zero initial state: its output is exactly zero, whatever
    the gates (``h = o * tanh(c)``, ``c = f*c + i*tanh(0)``; GRU ``h = z*h + (1-z)*tanh(0)``).
    Input channel ``i`` is read through the kernel's row ``i``.
    """

    gates: int = 4
    candidate: int = 2

    reads_channels: ClassVar[bool] = True
    one_input: ClassVar[bool] = True  # an initial state (or a mask) comes as a second input

    def propagate(self, a: ChannelAnalysis, node: Node, ins: list[np.ndarray]) -> np.ndarray:
        from keras_wgsef.graph.model_graph import layer_variables

        own = a.own(node.path)
        if own.out is None:
            v = layer_variables(node.layer)
            own.out, own.inp = a.new(int(v["recurrent_kernel"].shape[0])), a.new(int(v["kernel"].shape[0]))
        a.union(ins[0], own.inp, _where(node))
        return own.out

    def _block(self, x: np.ndarray) -> np.ndarray:
        u = x.shape[-1] // self.gates
        return x[..., self.candidate * u : (self.candidate + 1) * u]

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        out = np.all(self._block(v["kernel"][~ins[0]]) == 0, axis=0)
        out &= np.all(self._block(v["recurrent_kernel"]) == 0, axis=0)
        bias = self._block(v["bias"])
        out &= np.all(bias.reshape(-1, bias.shape[-1]) == 0, axis=0)
        return out & _act_zero(layer)

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        cols = np.tile(own.out, self.gates)
        return [("kernel", -1, cols), ("recurrent_kernel", -1, cols), ("bias", -1, cols)]

    def slice_weights(self, v: dict[str, np.ndarray], keep: Keep, own: LayerChannels) -> dict[str, np.ndarray]:
        out = super().slice_weights(v, keep, own)
        out["kernel"] = np.compress(keep(own.inp), out["kernel"], axis=0)
        out["recurrent_kernel"] = np.compress(keep(own.out), out["recurrent_kernel"], axis=0)
        return out

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        config["units"] = kept

    def output_kernel(self, v: dict[str, np.ndarray]) -> np.ndarray | None:
        u = v["recurrent_kernel"].shape[0]
        return np.concatenate([v[k].reshape(-1, u) for k in ("kernel", "recurrent_kernel")])

    def unread_inputs(self, v: dict[str, np.ndarray], n_in: int) -> np.ndarray:
        return np.all(v["kernel"] == 0, axis=1)


@dataclasses.dataclass(frozen=True)
class Wrapped(ChannelRule):
    """``TimeDistributed(layer)``: the wrapped layer's rule, applied over the extra time axis.

    The wrapper holds the inner layer's weights under the same names; its config nests the inner
    layer's config under ``"layer"``, where the width is edited.
    """

    inner: ChannelRule = dataclasses.field(default_factory=ChannelRule)

    @property
    def reads_channels(self) -> bool:  # type: ignore[override]
        return self.inner.reads_channels

    def resolve(self, layer: Any, in_shape: tuple, out_shape: tuple) -> ChannelRule:
        inner = self.inner.resolve(layer.layer, in_shape, out_shape)
        return inner if isinstance(inner, Opaque) else dataclasses.replace(self, inner=inner)

    def propagate(self, a: ChannelAnalysis, node: Node, ins: list[np.ndarray]) -> np.ndarray:
        return self.inner.propagate(a, node, ins)

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        return self.inner.zero(layer.layer, v, ins, out_n)

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        return self.inner.weight_slices(own)

    def unread_inputs(self, v: dict[str, np.ndarray], n_in: int) -> np.ndarray:
        return self.inner.unread_inputs(v, n_in)

    def slice_weights(self, v: dict[str, np.ndarray], keep: Keep, own: LayerChannels) -> dict[str, np.ndarray]:
        return self.inner.slice_weights(v, keep, own)

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        self.inner.edit_config(config["layer"]["config"], kept, before)

    def output_kernel(self, v: dict[str, np.ndarray]) -> np.ndarray | None:
        return self.inner.output_kernel(v)


@dataclasses.dataclass(frozen=True)
class Embed(ChannelRule):
    """Embedding: output dimension ``j`` is ``embeddings[:, j]``; the input holds token indices."""

    def propagate(self, a: ChannelAnalysis, node: Node, ins: list[np.ndarray]) -> np.ndarray:
        own = a.own(node.path)
        if own.out is None:
            own.out = a.new(int(node.layer.output_dim))
        a.pin(ins[0], f"read by {node.path} (Embedding) as token indices")
        return own.out

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        return np.all(v["embeddings"] == 0, axis=0)

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        return [("embeddings", -1, own.out)]

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        config["output_dim"] = kept

    def output_kernel(self, v: dict[str, np.ndarray]) -> np.ndarray | None:
        return v["embeddings"]


@dataclasses.dataclass(frozen=True)
class Separable(ChannelRule):
    depthwise: str = "depthwise_kernel"
    pointwise: str = "pointwise_kernel"
    bias: str | None = "bias"
    depth_multiplier: int = 1
    width_key: str = "filters"

    reads_channels: ClassVar[bool] = True

    def propagate(self, a: ChannelAnalysis, node: Node, ins: list[np.ndarray]) -> np.ndarray:
        from keras_wgsef.graph.model_graph import layer_variables

        own = a.own(node.path)
        if own.out is None:
            v = layer_variables(node.layer)
            own.out, own.inp = a.new(int(v[self.pointwise].shape[-1])), a.new(int(v[self.depthwise].shape[-2]))
        a.union(ins[0], own.inp, _where(node))
        return own.out

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        dw = v[self.depthwise]
        mid_zero = np.repeat(ins[0], self.depth_multiplier) | np.all(dw == 0, axis=tuple(range(dw.ndim - 2))).reshape(
            -1
        )
        w = v[self.pointwise]
        out = np.all(w[..., ~mid_zero, :] == 0, axis=tuple(range(w.ndim - 1)))
        if self.bias:
            out &= v[self.bias] == 0
        return out & _act_zero(layer)

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        entries = [(self.pointwise, -1, own.out)]
        if self.bias:
            entries.append((self.bias, 0, own.out))
        return [*entries, (self.depthwise, -2, own.inp)]

    def slice_weights(self, v: dict[str, np.ndarray], keep: Keep, own: LayerChannels) -> dict[str, np.ndarray]:
        out = super().slice_weights(v, keep, own)
        in_m = np.repeat(keep(own.inp), self.depth_multiplier)
        out[self.pointwise] = np.compress(in_m, out[self.pointwise], axis=-2)
        return out

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        config[self.width_key] = kept

    def output_kernel(self, v: dict[str, np.ndarray]) -> np.ndarray | None:
        k = v[self.pointwise]
        return k.reshape(-1, k.shape[-1])

    def unread_inputs(self, v: dict[str, np.ndarray], n_in: int) -> np.ndarray:
        dw, pw = v[self.depthwise], v[self.pointwise]
        dw_zero = np.all(dw == 0, axis=tuple(range(dw.ndim - 2)))  # (c, depth_multiplier)
        pw_zero = np.all(pw.reshape(-1, *pw.shape[-2:]) == 0, axis=(0, 2)).reshape(n_in, -1)
        return np.all(dw_zero | pw_zero, axis=1)


# ------------------------------------------------------------------------------------ carriers
@dataclasses.dataclass(frozen=True)
class Carry(ChannelRule):
    """Per-channel parameters ``params`` (weight name, axis): channel ``c`` in is channel ``c`` out.

    Zero out where zero in (and ``bias`` zero when there is one): ``f(0) = 0`` per channel.
    """

    params: tuple[tuple[str, int], ...] = ()
    bias: str | None = None  # added after the per-channel op (depthwise bias)
    channel_axis: int = -1  # the tensor axis the layer treats per channel (must be the last one)

    def resolve(self, layer: Any, in_shape: tuple, out_shape: tuple) -> ChannelRule:
        if self.channel_axis not in (-1, len(in_shape) - 1):
            return Opaque(f"per-channel axis {self.channel_axis} is not the last axis")
        return self

    def propagate(self, a: ChannelAnalysis, node: Node, ins: list[np.ndarray]) -> np.ndarray:
        own = a.own(node.path)
        if own.carry is None:
            own.carry = a.new(len(ins[0]))
        a.union(ins[0], own.carry, _where(node))
        return own.carry

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        out = ins[0].copy()
        return out & (v[self.bias] == 0) if self.bias else out

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        extra = ((self.bias, 0),) if self.bias else ()
        return [(n, ax, own.carry) for n, ax in self.params + extra]


@dataclasses.dataclass(frozen=True)
class BatchNormCarry(Carry):
    """BatchNormalization: ``gamma * (x - mean) / sqrt(var + eps) + beta`` per channel."""

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        n = len(ins[0])
        gamma, beta = v.get("gamma", np.ones(n)), v.get("beta", np.zeros(n))
        mean = v.get("moving_mean", np.zeros(n))
        return ((gamma == 0) & (beta == 0)) | (ins[0] & (beta == 0) & ((gamma == 0) | (mean == 0)))


@dataclasses.dataclass(frozen=True)
class InstanceNormCarry(Carry):
    """GroupNormalization with one channel per group: each channel normalized over its own positions.

    ``gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta``: a zero channel gives ``beta``.
    """

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        n = len(ins[0])
        gamma, beta = v.get("gamma", np.ones(n)), v.get("beta", np.zeros(n))
        return (beta == 0) & (ins[0] | (gamma == 0))

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        if config.get("groups", -1) != -1:
            config["groups"] = kept  # one channel per group


@dataclasses.dataclass(frozen=True)
class DepthwiseCarry(Carry):
    """DepthwiseConv with ``depth_multiplier=1``: kernel ``[..., c, 0]`` filters channel ``c`` alone."""

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        k = v["kernel"]
        out = ins[0] | np.all(np.moveaxis(k, -2, -1) == 0, axis=tuple(range(k.ndim - 1)))
        out &= _act_zero(layer)
        return out & (v[self.bias] == 0) if self.bias else out


@dataclasses.dataclass(frozen=True)
class NormalizationCarry(Carry):
    """The ``Normalization`` preprocessing layer over the last axis: ``(x - mean) / sqrt(var)`` per channel.

    ``mean`` and ``variance`` are fixed statistics (not trained); a zero channel stays zero only
    where its mean is zero. With ``invert=True`` it computes ``x * sqrt(var) + mean``: the same.
    """

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        mean = np.broadcast_to(np.asarray(v.get("mean", 0.0)).reshape(-1), (out_n,)) if "mean" in v else np.zeros(out_n)
        return ins[0] & (mean == 0)

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        for key in ("mean", "variance"):
            if config.get(key) is not None and np.size(config[key]) not in (1, kept):
                raise UnsupportedLayerError(
                    f"Normalization with {key} given as a {before}-entry constant cannot be narrowed to {kept}; "
                    "adapt() it instead, or exclude it."
                )


@dataclasses.dataclass(frozen=True)
class RMSNormCarry(Carry):
    """RMSNormalization over the channel axis: ``x * scale / sqrt(mean_c(x^2) + eps)``.

    It reads every channel (the mean of squares), so a channel is removable only where its input is
    exactly zero; removing ``C - C'`` zero channels then changes the mean from ``S/C`` to ``S/C'``,
    which the narrower layer undoes exactly with ``eps' = eps * C/C'`` and
    ``scale' = scale * sqrt(C/C')``.
    """

    reads_channels: ClassVar[bool] = True

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        return ins[0] | (v["scale"] == 0) if "scale" in v else ins[0].copy()

    def slice_weights(self, v: dict[str, np.ndarray], keep: Keep, own: LayerChannels) -> dict[str, np.ndarray]:
        out = super().slice_weights(v, keep, own)
        mask = keep(own.carry)
        if "scale" in out and mask.sum():
            out["scale"] = out["scale"] * np.sqrt(len(mask) / mask.sum()).astype(out["scale"].dtype)
        return out

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        config["epsilon"] = float(config.get("epsilon", 1e-6)) * before / max(kept, 1)


# ------------------------------------------------------------------------------- no weights
@dataclasses.dataclass(frozen=True)
class Passthrough(ChannelRule):
    zero_preserving: bool = True
    resize_key: str | None = None  # config key (a shape tuple) whose last entry is the channel width

    def propagate(self, a: ChannelAnalysis, node: Node, ins: list[np.ndarray]) -> np.ndarray:
        out_width = a.graph.shapes[node.outputs[0]][-1]
        if len(ins[0]) != out_width:
            raise ValueError(f"{_where(node)}: a passthrough rule, but it changes the channel count.")
        return ins[0]

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
    op: str = "sum"  # "sum" | "extremum" | "product"
    #: which inputs may be dropped when they are exactly zero (``x + 0 = x``): "any" (Add),
    #: "last" (Subtract: ``x - 0 = x``), "none" (Average, extrema, products)
    drops: str = "none"

    def droppable(self, all_zero: list[bool]) -> list[int]:
        """Indices of inputs that are exactly zero and can go without changing the output (one input stays)."""
        candidates = [i for i, z in enumerate(all_zero) if z and (self.drops == "any" or i == len(all_zero) - 1)]
        if self.drops == "none" or len(candidates) == len(all_zero):
            return []
        return candidates

    def propagate(self, a: ChannelAnalysis, node: Node, ins: list[np.ndarray]) -> np.ndarray:
        out_width = a.graph.shapes[node.outputs[0]][-1]
        full = [ids for ids in ins if len(ids) == out_width]
        for ids in full[1:]:
            a.union(full[0], ids, _where(node))
        if len(full) < len(ins) and self.op != "product":
            a.pin(full[0], f"{node.path}: a one-channel input is broadcast onto every channel")
        return full[0]

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        full = [z for z in ins if len(z) == out_n]
        bcast = [bool(z[0]) for z in ins if len(z) != out_n]
        if self.op == "product":
            return np.logical_or.reduce(full) | any(bcast)
        return np.logical_and.reduce(full) & all(bcast)


@dataclasses.dataclass(frozen=True)
class Concat(ChannelRule):
    axis: int = -1

    def propagate(self, a: ChannelAnalysis, node: Node, ins: list[np.ndarray]) -> np.ndarray:
        if self.axis in (-1, len(a.graph.shapes[node.outputs[0]]) - 1):
            return np.concatenate(ins)
        for ids in ins[1:]:
            a.union(ins[0], ids, _where(node))
        return ins[0]

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        same = len(ins[0]) == out_n and len(ins) > 1 and sum(len(z) for z in ins) != out_n
        return np.logical_and.reduce(ins) if same else np.concatenate(ins)


@dataclasses.dataclass(frozen=True)
class Flatten(ChannelRule):
    resize_key: str | None = None  # Reshape((n,)) used as a flatten: config key to update

    def propagate(self, a: ChannelAnalysis, node: Node, ins: list[np.ndarray]) -> np.ndarray:
        in_shape = a.graph.shapes[node.inputs[0]]
        reps = int(np.prod(in_shape[1:-1])) if len(in_shape) > 2 else 1
        return np.tile(ins[0], reps)

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
    reason: str = "opaque layer"

    def propagate(self, a: ChannelAnalysis, node: Node, ins: list[np.ndarray]) -> np.ndarray:
        what = f"{type(node.layer).__name__}: {self.reason}"
        for ids in ins:
            a.pin(ids, f"read by {node.path} ({what})")
        for t in node.outputs:
            a.tensor_ids[t] = a.new(int(a.graph.shapes[t][-1]) if a.graph.shapes[t] else 1)
            a.pin(a.tensor_ids[t], f"made by {node.path} ({what})")
        return a.tensor_ids[node.outputs[0]]

    def slice_weights(self, v: dict[str, np.ndarray], keep: Keep, own: LayerChannels) -> dict[str, np.ndarray]:
        return v


@dataclasses.dataclass(frozen=True)
class Refuse(ChannelRule):
    """A layer with no channel meaning for this purpose; :func:`rule_for` raises with the reason."""

    reason: str = "no channel semantics"


# ----------------------------------------------------------------------------------- registry
RuleOrFactory = ChannelRule | Callable[[Any], ChannelRule]
_REGISTRY: dict[type, RuleOrFactory] = {}


def register_channel_rule(layer_class: type, rule: RuleOrFactory) -> None:
    """Registers (or replaces) the channel rule of ``layer_class`` (exact class, not subclasses).

    Args:
      layer_class: a Keras layer class.
      rule: a :class:`ChannelRule`, or a function ``layer -> ChannelRule`` for rules that depend on
        the layer's configuration.
    """
    if not isinstance(layer_class, type):
        raise TypeError(f"register_channel_rule: layer_class must be a class, got {layer_class!r}.")
    if not (isinstance(rule, ChannelRule) or callable(rule)):
        raise TypeError(f"register_channel_rule: rule must be a ChannelRule or a callable, got {rule!r}.")
    _REGISTRY[layer_class] = rule


def has_rule(layer_class: type) -> bool:
    """Whether ``layer_class`` has a registered rule (a refusal counts: it is a decision)."""
    _ensure_builtin_rules()
    return layer_class in _REGISTRY


def _way_out(path: str, cls: str) -> str:
    return (
        f"Register a rule with keras_wgsef.graph.rules.register_channel_rule({cls}, Passthrough() / Produce(...) / "
        f"Opaque('why')), or exclude the layer (exclude=r'{path}'), which keeps its input and output channels."
    )


def rule_for(layer: Any, path: str) -> ChannelRule:
    """The rule of ``layer`` (at ``path`` in the model); raises for classes without one or refused."""
    _ensure_builtin_rules()
    entry = _REGISTRY.get(type(layer))
    cls = type(layer).__name__
    if entry is None:
        raise UnsupportedLayerError(
            f"No channel rule for layer {path!r} of class {cls}: the analysis cannot tell how it treats "
            f"channels. {_way_out(path, cls)}"
        )
    rule = entry if isinstance(entry, ChannelRule) else entry(layer)
    if isinstance(rule, Refuse):
        raise UnsupportedLayerError(f"Layer {path!r} of class {cls} is refused: {rule.reason}. {_way_out(path, cls)}")
    return rule


def value_at_zero(fn: Callable[[Any], Any], shape: tuple[int, ...] = (1, 4)) -> np.ndarray:
    """``fn(0)`` on a float32 zero array of ``shape``, as NumPy (used to check ``f(0) = 0``)."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(fn(np.zeros(shape, np.float32))))


# ---------------------------------------------------------------------------- built-in rules
def _activation_rule(name: Any) -> ChannelRule:
    import keras

    fn = keras.activations.get(name)
    if getattr(fn, "__name__", "") in ("softmax", "log_softmax"):
        return Opaque(f"activation {fn.__name__} mixes channels")
    return Passthrough(zero_preserving=bool(np.all(value_at_zero(fn) == 0)))


def _channels_last(cfg: dict) -> bool:
    return cfg.get("data_format", "channels_last") in (None, "channels_last")


def _produce_factory(width_key: str, out_axis: int = -1, in_axis: int = -2) -> Callable[[Any], ChannelRule]:
    def factory(layer: Any) -> ChannelRule:
        cfg = layer.get_config()
        if not _channels_last(cfg):
            return Opaque("channels_first data format is not supported")
        if int(cfg.get("groups", 1) or 1) != 1:
            return Opaque("grouped convolution (groups > 1)")
        act = getattr(getattr(layer, "activation", None), "__name__", "")
        return Produce(
            out_axis=out_axis,
            in_axis=in_axis,
            bias="bias" if cfg.get("use_bias", True) else None,
            width_key=width_key,
            mixes_output=act in ("softmax", "log_softmax"),
        )

    return factory


def _einsum_factory(layer: Any) -> ChannelRule:
    """``EinsumDense`` whose kernel is ``(c, n)`` with ``c`` the input's last axis and ``n`` the output's."""
    cfg = layer.get_config()
    eq = cfg["equation"].replace(" ", "")
    try:
        lhs, out = eq.split("->")
        x, k = lhs.split(",")
    except ValueError:
        return Opaque(f"EinsumDense equation {eq!r} is not of the form 'x,k->y'")
    dense_like = (
        len(k) == 2
        and x[-1] == k[0]
        and out[-1] == k[1]
        and k[0] not in out
        and k[1] not in x
        and (cfg.get("bias_axes") or "") in ("", k[1])
        and "..." not in k
    )
    if not dense_like:
        return Opaque(f"EinsumDense {eq!r} is not a Dense over the last axis (kernel 'cn' reading x[..., c])")
    act = getattr(getattr(layer, "activation", None), "__name__", "")
    return EinsumProduce(bias="bias" if cfg.get("bias_axes") else None, mixes_output=act in ("softmax", "log_softmax"))


def _depthwise_factory(layer: Any) -> ChannelRule:
    cfg = layer.get_config()
    if not _channels_last(cfg):
        return Opaque("channels_first data format is not supported")
    if int(cfg.get("depth_multiplier", 1)) != 1:
        return Opaque("depth_multiplier > 1 maps one channel to several")
    return DepthwiseCarry(params=(("kernel", -2),), bias="bias" if cfg.get("use_bias", True) else None)


def _separable_factory(layer: Any) -> ChannelRule:
    cfg = layer.get_config()
    if not _channels_last(cfg):
        return Opaque("channels_first data format is not supported")
    return Separable(
        bias="bias" if cfg.get("use_bias", True) else None, depth_multiplier=int(cfg.get("depth_multiplier", 1))
    )


def _names(layer: Any) -> list[str]:
    return [w.path.rsplit("/", 1)[-1] for w in layer.weights]


def _single_axis(axis: Any) -> Any:
    return axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis


def _bn_factory(layer: Any) -> ChannelRule:
    axis = _single_axis(layer.get_config().get("axis", -1))
    if not isinstance(axis, int):
        return Opaque(f"BatchNormalization over axes {axis}")
    return BatchNormCarry(params=tuple((n, -1) for n in _names(layer)), channel_axis=axis)


def _normalization_factory(layer: Any) -> ChannelRule:
    axis = _single_axis(layer.get_config().get("axis", -1))
    if axis is None or axis == ():
        mean = float(np.mean(np.asarray(layer.mean))) if getattr(layer, "mean", None) is not None else 0.0
        return Passthrough(zero_preserving=mean == 0 and not layer.get_config().get("invert"))
    if not isinstance(axis, int):
        return Opaque(f"Normalization over axes {axis}")
    names = [n for n in _names(layer) if n in ("mean", "variance")]
    return NormalizationCarry(params=tuple((n, -1) for n in names), channel_axis=axis)


def _rms_factory(layer: Any) -> ChannelRule:
    axis = _single_axis(layer.get_config().get("axis", -1))
    if axis != -1:
        return Opaque(f"RMSNormalization over axis {axis} (only the channel axis, -1, is handled)")
    return RMSNormCarry(params=tuple((n, -1) for n in _names(layer)))


def _group_norm_factory(layer: Any) -> ChannelRule:
    cfg = layer.get_config()
    axis = cfg.get("axis", -1)
    width = int(layer.gamma.shape[0]) if getattr(layer, "gamma", None) is not None else None
    if axis == -1 and (cfg["groups"] == -1 or cfg["groups"] == width):
        return InstanceNormCarry(params=tuple((n, -1) for n in _names(layer)))
    return Opaque(
        "GroupNormalization normalizes groups of channels together: removing a zero channel would change "
        "the mean and variance of its group (exact only with one channel per group, groups=-1)"
    )


def _prelu_factory(layer: Any) -> ChannelRule:
    alpha = getattr(layer, "alpha", None)
    if alpha is not None and int(alpha.shape[-1]) == 1:
        return Passthrough()  # one slope shared across channels: prelu(0) = 0 per channel
    return Carry(params=(("alpha", -1),))


def _softmax_factory(layer: Any) -> ChannelRule:
    axis = _single_axis(layer.get_config().get("axis", -1))
    if axis == -1:
        return Opaque("softmax mixes channels")
    return Passthrough(zero_preserving=False)  # over other axes: per channel, softmax(0) = 1/n


def _masking_factory(layer: Any) -> ChannelRule:
    if float(layer.get_config().get("mask_value", 0.0)) == 0.0:
        return Passthrough()  # a zero channel never decides "every feature equals 0" alone
    return Opaque("Masking with a nonzero mask_value: a removed zero channel would change which steps are masked")


def _call_at_zero_rule(layer: Any) -> ChannelRule:
    return Passthrough(zero_preserving=bool(np.all(value_at_zero(layer) == 0)))


def _discretization_rule(layer: Any) -> ChannelRule:
    cfg = layer.get_config()
    if cfg.get("output_mode", "int") != "int":
        return Opaque("Discretization with a one-hot or count output makes channels from bins")
    bins = cfg.get("bin_boundaries")
    zero_bin = int(np.searchsorted(np.asarray(bins), 0.0, side="right")) if bins else None
    return Passthrough(zero_preserving=zero_bin == 0)


def _pipeline_factory(layer: Any) -> ChannelRule:
    rules = [rule_for(sub, f"{layer.name}/{sub.name}") for sub in layer.layers]
    if all(isinstance(r, Passthrough) for r in rules):
        return Passthrough(zero_preserving=all(r.zero_preserving for r in rules))  # type: ignore[attr-defined]
    return Opaque("a Pipeline with a layer that is not per-channel")


_RECURRENT = "these recurrent units are not analysed yet: the units and the channels it reads are kept"


def _recurrent_factory(gates: int, candidate: int) -> Callable[[Any], ChannelRule]:
    def factory(layer: Any) -> ChannelRule:
        cfg = layer.get_config()
        if cfg.get("return_state") or cfg.get("stateful"):
            return Opaque("a recurrent layer that returns or keeps its state")
        if not cfg.get("use_bias", True):
            return Opaque("a recurrent layer without bias is not handled")
        return RecurrentProduce(gates=gates, candidate=candidate)

    return factory


def _wrapped_factory(layer: Any) -> ChannelRule:
    inner = rule_for(layer.layer, layer.name + "/" + layer.layer.name)
    if isinstance(inner, (Produce, Passthrough, Carry)):
        return Wrapped(inner)
    return Opaque(f"TimeDistributed({type(layer.layer).__name__}) is not handled")


_ATTENTION = "attention is not analysed yet: its heads and the channels it reads are kept"
_NO_CHANNELS = "it works on strings, token ids or foreign code, where channels have no meaning for pruning"


def _ensure_builtin_rules() -> None:
    if _BUILTIN_DONE:
        return
    import keras

    L = keras.layers
    named: dict[str, RuleOrFactory] = {
        "Dense": _produce_factory("units"),
        "Conv1D": _produce_factory("filters"),
        "Conv2D": _produce_factory("filters"),
        "Conv3D": _produce_factory("filters"),
        "Conv1DTranspose": _produce_factory("filters", out_axis=-2, in_axis=-1),
        "Conv2DTranspose": _produce_factory("filters", out_axis=-2, in_axis=-1),
        "Conv3DTranspose": _produce_factory("filters", out_axis=-2, in_axis=-1),
        "EinsumDense": _einsum_factory,
        "Embedding": Embed(),
        "ReversibleEmbedding": Opaque("its reverse call reads the embedding dimension as the input channels"),
        "DepthwiseConv1D": _depthwise_factory,
        "DepthwiseConv2D": _depthwise_factory,
        "SeparableConv1D": _separable_factory,
        "SeparableConv2D": _separable_factory,
        "BatchNormalization": _bn_factory,
        "Normalization": _normalization_factory,
        "RMSNormalization": _rms_factory,
        "GroupNormalization": _group_norm_factory,
        "PReLU": _prelu_factory,
        "Activation": lambda layer: _activation_rule(layer.get_config()["activation"]),
        "ReLU": _call_at_zero_rule,
        "LeakyReLU": _call_at_zero_rule,
        "ELU": _call_at_zero_rule,
        "Rescaling": _call_at_zero_rule,
        "Discretization": _discretization_rule,
        "Softmax": _softmax_factory,
        "Masking": _masking_factory,
        "LayerNormalization": Opaque(
            "LayerNormalization subtracts the mean over the channels: removing a zero channel would change the "
            "mean and variance of the others (not exact)"
        ),
        "SpectralNormalization": Opaque("it normalizes the wrapped kernel by its largest singular value"),
        "Add": Merge("sum", drops="any"),
        "Subtract": Merge("sum", drops="last"),
        "Average": Merge("sum"),
        "Maximum": Merge("extremum"),
        "Minimum": Merge("extremum"),
        "Multiply": Merge("product"),
        "Concatenate": lambda layer: Concat(int(layer.get_config().get("axis", -1))),
        "Flatten": lambda layer: Flatten() if _channels_last(layer.get_config()) else Opaque("channels_first Flatten"),
        "Reshape": Reshape(),
        "Permute": Permute(),
        "Pipeline": _pipeline_factory,
        "InputLayer": Passthrough(),
        "CategoryEncoding": Opaque("its channels are the categories of its integer input"),
        "MelSpectrogram": Opaque("it makes its channels (mel bins) from fixed filters on the input signal"),
        "STFTSpectrogram": Opaque("it makes its channels (frequency bins) from fixed filters on the input signal"),
        "Dot": Opaque("a dot product contracts the channel axis"),
        "Attention": Opaque(_ATTENTION),
        "AdditiveAttention": Opaque(_ATTENTION),
        "MultiHeadAttention": Opaque(_ATTENTION),
        "GroupQueryAttention": Opaque(_ATTENTION),
        "LSTM": _recurrent_factory(gates=4, candidate=2),
        "GRU": _recurrent_factory(gates=3, candidate=2),
        "SimpleRNN": _recurrent_factory(gates=1, candidate=0),
        **{n: Opaque(_RECURRENT) for n in ("RNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "Bidirectional")},
        "TimeDistributed": _wrapped_factory,
        **{
            n: Refuse(_NO_CHANNELS)
            for n in (
                "StringLookup",
                "IntegerLookup",
                "Hashing",
                "HashedCrossing",
                "TextVectorization",
                "TFSMLayer",
                "TorchModuleWrapper",
                "JaxLayer",
                "FlaxLayer",
            )
        },
        "Lambda": Refuse("a Lambda layer runs arbitrary code, so its channel behaviour cannot be read"),
        "Layer": Refuse("a custom layer (keras.layers.Layer subclass without a rule)"),
        "Wrapper": Refuse("a custom wrapper layer without a rule"),
        **{
            n: Refuse("an RNN cell is called inside an RNN layer, not in a model graph")
            for n in ("LSTMCell", "GRUCell", "SimpleRNNCell", "StackedRNNCells")
        },
        "UnitNormalization": Passthrough(),  # zero channels add nothing to the L2 norm: exact
    }
    for name in INFERENCE_IDENTITY:
        named[name] = InferenceIdentity()
    per_channel_spatial = [
        f"{kind}{d}D"
        for d in (1, 2, 3)
        for kind in (
            "MaxPooling",
            "AveragePooling",
            "GlobalAveragePooling",
            "GlobalMaxPooling",
            "AdaptiveAveragePooling",
            "AdaptiveMaxPooling",
            "ZeroPadding",
            "Cropping",
            "UpSampling",
        )
    ]
    # per channel, zero in -> zero out (checked by tests/test_layer_rules.py)
    for name in [*per_channel_spatial, "Resizing", "CenterCrop", "RepeatVector", "AutoContrast"]:
        named[name] = Passthrough()
    named["ContrastLimitedAdaptiveHistogramEqualization"] = Passthrough()
    for name, rule in named.items():
        cls = getattr(L, name, None)
        if cls is not None:
            _REGISTRY.setdefault(cls, rule)  # user registrations win
    globals()["_BUILTIN_DONE"] = True


_BUILTIN_DONE = False
