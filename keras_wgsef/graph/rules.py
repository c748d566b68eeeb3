"""How each Keras layer class treats channels: one declarative registry.

Channels are the last axis of a tensor (Keras ``channels_last``). Every layer class that may sit in
a model analysed by :mod:`keras_wgsef.graph.channels` (or shrunk by ``tflite_export.shrink``) has a
rule here; a class without one raises :class:`UnsupportedLayerError`. Rule kinds:

* :class:`Produce` -- makes new channels from a kernel (Dense, Conv1D/2D/3D, Conv*Transpose):
  output channel ``c`` is ``kernel[..., c]`` (``out_axis``) plus ``bias[c]``; input channel ``i``
  is read through ``kernel[..., i, :]`` (``in_axis``).
* :class:`Carry` -- one-to-one per-channel parameters (BatchNormalization, DepthwiseConv2D with
  ``depth_multiplier=1``, PReLU): channel ``c`` in is channel ``c`` out; ``params`` name the weights
  and the axis that indexes the channel.
* :class:`Separable` -- SeparableConv: the depthwise kernel carries input channels, the pointwise
  kernel produces the output channels.
* :class:`Passthrough` -- channel ``c`` in is channel ``c`` out, no weights (activations, pooling,
  padding, cropping, upsampling, dropout, ...). ``zero_preserving`` says whether ``f(0) = 0``.
* :class:`Merge` -- elementwise over several inputs that share channels: ``"sum"`` (Add, Subtract,
  Average), ``"extremum"`` (Maximum, Minimum): zero when all inputs are zero; ``"product"``
  (Multiply, e.g. squeeze-and-excitation ``(1,1,C) * (H,W,C)``): zero when any input is zero.
* :class:`Concat` -- concatenation; along the channel axis the channels are stacked with offsets.
* :class:`Flatten` -- channels_last flattening: channel ``c`` of an ``(H, W, C)`` map sits at
  positions ``s*C + c`` of the flat vector, ``s`` the spatial index.
* :class:`Opaque` -- works, but its input and output channels are never removed (the reason is
  reported): softmax, LayerNormalization, grouped convolutions, depth_multiplier > 1, unsafe Reshape.

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
from typing import Any

import numpy as np

__all__ = [
    "INFERENCE_IDENTITY",
    "Carry",
    "ChannelRule",
    "Concat",
    "Flatten",
    "Merge",
    "Opaque",
    "Passthrough",
    "Produce",
    "Reshape",
    "Separable",
    "UnsupportedLayerError",
    "register_channel_rule",
    "rule_for",
    "value_at_zero",
]

#: layer classes that are the identity at inference (dropout and noise layers): no operator after conversion
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
)


class UnsupportedLayerError(ValueError):
    """A layer the channel analysis has no rule for."""


@dataclasses.dataclass(frozen=True)
class ChannelRule:
    """Base class of the rules (a rule is plain data)."""


@dataclasses.dataclass(frozen=True)
class Produce(ChannelRule):
    kernel: str = "kernel"
    out_axis: int = -1
    in_axis: int = -2
    bias: str | None = "bias"
    width_key: str = "filters"
    mixes_output: bool = False  # e.g. activation="softmax": the output channels are coupled


@dataclasses.dataclass(frozen=True)
class Carry(ChannelRule):
    params: tuple[tuple[str, int], ...] = ()
    bias: str | None = None  # added after the per-channel op (depthwise bias)
    channel_axis: int = -1  # the tensor axis the layer treats per channel (must be the last one)


@dataclasses.dataclass(frozen=True)
class Separable(ChannelRule):
    depthwise: str = "depthwise_kernel"
    pointwise: str = "pointwise_kernel"
    bias: str | None = "bias"
    depth_multiplier: int = 1
    width_key: str = "filters"


@dataclasses.dataclass(frozen=True)
class Passthrough(ChannelRule):
    zero_preserving: bool = True
    resize_key: str | None = None  # config key (a shape tuple) whose last entry is the channel width


@dataclasses.dataclass(frozen=True)
class Merge(ChannelRule):
    op: str = "sum"  # "sum" | "extremum" | "product"


@dataclasses.dataclass(frozen=True)
class Concat(ChannelRule):
    axis: int = -1


@dataclasses.dataclass(frozen=True)
class Flatten(ChannelRule):
    resize_key: str | None = None  # Reshape((n,)) used as a flatten: config key to update


@dataclasses.dataclass(frozen=True)
class Reshape(ChannelRule):
    """Resolved with the shapes: same last axis -> passthrough; ``(batch, n)`` -> flatten; else opaque."""

    resize_key: str = "target_shape"


@dataclasses.dataclass(frozen=True)
class Opaque(ChannelRule):
    reason: str = "opaque layer"


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


def rule_for(layer: Any, path: str) -> ChannelRule:
    """The rule of ``layer`` (at ``path`` in the model); raises for classes without one."""
    _ensure_builtin_rules()
    entry = _REGISTRY.get(type(layer))
    if entry is None:
        cls = type(layer).__name__
        raise UnsupportedLayerError(
            f"No channel rule for layer {path!r} of class {cls}: the analysis cannot tell how it treats "
            f"channels. Register one with keras_wgsef.graph.rules.register_channel_rule({cls}, "
            "Passthrough() / Produce(...) / Opaque('why')), or exclude the layer "
            f"(exclude=r'{path}'), which keeps its input and output channels."
        )
    return entry if isinstance(entry, ChannelRule) else entry(layer)


def value_at_zero(fn: Callable[[Any], Any]) -> np.ndarray:
    """``fn(0)`` on a (1, 4) float32 zero array, as NumPy (used to check ``f(0) = 0``)."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(fn(np.zeros((1, 4), np.float32))))


def _activation_rule(name: Any) -> ChannelRule:
    import keras

    fn = keras.activations.get(name)
    if getattr(fn, "__name__", "") in ("softmax", "log_softmax"):
        return Opaque(f"activation {fn.__name__} mixes channels")
    return Passthrough(zero_preserving=bool(np.all(value_at_zero(fn) == 0)))


def _produce_factory(width_key: str, out_axis: int = -1, in_axis: int = -2) -> Callable[[Any], ChannelRule]:
    def factory(layer: Any) -> ChannelRule:
        cfg = layer.get_config()
        if cfg.get("data_format", "channels_last") != "channels_last":
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


def _depthwise_factory(layer: Any) -> ChannelRule:
    cfg = layer.get_config()
    if cfg.get("data_format", "channels_last") != "channels_last":
        return Opaque("channels_first data format is not supported")
    if int(cfg.get("depth_multiplier", 1)) != 1:
        return Opaque("depth_multiplier > 1 maps one channel to several")
    return Carry(params=(("kernel", -2),), bias="bias" if cfg.get("use_bias", True) else None)


def _separable_factory(layer: Any) -> ChannelRule:
    cfg = layer.get_config()
    if cfg.get("data_format", "channels_last") != "channels_last":
        return Opaque("channels_first data format is not supported")
    return Separable(
        bias="bias" if cfg.get("use_bias", True) else None, depth_multiplier=int(cfg.get("depth_multiplier", 1))
    )


def _bn_factory(layer: Any) -> ChannelRule:
    axis = layer.get_config().get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if not isinstance(axis, int):
        return Opaque(f"BatchNormalization over axes {axis}")
    names = [w.path.rsplit("/", 1)[-1] for w in layer.weights]
    return Carry(params=tuple((n, -1) for n in names), channel_axis=axis)


def _call_at_zero_rule(layer: Any) -> ChannelRule:
    return Passthrough(zero_preserving=bool(np.all(value_at_zero(layer) == 0)))


def _ensure_builtin_rules() -> None:
    if _BUILTIN_DONE:
        return
    import keras

    L = keras.layers
    builtin: dict[type, RuleOrFactory] = {
        L.Dense: _produce_factory("units"),
        L.Conv1D: _produce_factory("filters"),
        L.Conv2D: _produce_factory("filters"),
        L.Conv3D: _produce_factory("filters"),
        L.Conv1DTranspose: _produce_factory("filters", out_axis=-2, in_axis=-1),
        L.Conv2DTranspose: _produce_factory("filters", out_axis=-2, in_axis=-1),
        L.Conv3DTranspose: _produce_factory("filters", out_axis=-2, in_axis=-1),
        L.DepthwiseConv1D: _depthwise_factory,
        L.DepthwiseConv2D: _depthwise_factory,
        L.SeparableConv1D: _separable_factory,
        L.SeparableConv2D: _separable_factory,
        L.BatchNormalization: _bn_factory,
        L.PReLU: Carry(params=(("alpha", -1),)),
        L.Activation: lambda layer: _activation_rule(layer.get_config()["activation"]),
        L.ReLU: _call_at_zero_rule,
        L.LeakyReLU: _call_at_zero_rule,
        L.ELU: _call_at_zero_rule,
        L.Softmax: Opaque("softmax mixes channels"),
        L.LayerNormalization: Opaque("LayerNormalization normalizes across channels"),
        L.GroupNormalization: Opaque("GroupNormalization normalizes across channels"),
        L.UnitNormalization: Opaque("UnitNormalization normalizes across channels"),
        L.Add: Merge("sum"),
        L.Subtract: Merge("sum"),
        L.Average: Merge("sum"),
        L.Maximum: Merge("extremum"),
        L.Minimum: Merge("extremum"),
        L.Multiply: Merge("product"),
        L.Concatenate: lambda layer: Concat(int(layer.get_config().get("axis", -1))),
        L.Flatten: lambda layer: (
            Flatten()
            if layer.get_config().get("data_format") in (None, "channels_last")
            else Opaque("channels_first Flatten")
        ),
        L.Reshape: Reshape(),
        L.Rescaling: lambda layer: Passthrough(zero_preserving=bool(np.all(value_at_zero(layer) == 0))),
    }
    passthrough = [
        *INFERENCE_IDENTITY,
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalAveragePooling3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "GlobalMaxPooling3D",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
        "UpSampling1D",
        "UpSampling2D",
        "UpSampling3D",
    ]
    for name in passthrough:
        cls = getattr(L, name, None)
        if cls is not None:
            builtin[cls] = Passthrough()
    for cls, rule in builtin.items():
        _REGISTRY.setdefault(cls, rule)  # user registrations win
    globals()["_BUILTIN_DONE"] = True


_BUILTIN_DONE = False
