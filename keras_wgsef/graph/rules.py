"""How each Keras layer class treats channels: one rule class per behaviour, one registry.

This module is the registry (:func:`register_channel_rule`, :func:`rule_for`, the built-in table)
and re-exports every rule class; the classes live in :mod:`~keras_wgsef.graph.rule_base` (the
base), :mod:`~keras_wgsef.graph.rule_producers`, :mod:`~keras_wgsef.graph.rule_carriers` and
:mod:`~keras_wgsef.graph.rule_passing`.

Channels are the last axis of a tensor (Keras ``channels_last``). Every layer class of
``keras.layers`` has a rule here (``tests/test_layer_rules.py`` enumerates them); a class
without one raises :class:`UnsupportedLayerError`. A rule owns everything the analysis
(:mod:`keras_wgsef.graph.channels`) and the surgery (``tflite_export.shrink``) need to know about
its layer, so adding a layer means adding one rule class (or one registry entry) and its test:

* :meth:`ChannelRule.resolve` -- the rule for the shapes the layer is called with (a ``Reshape``
  keeps the channel axis or flattens it);
* :meth:`ChannelRule.propagate` -- the channel ids of each output from those of the inputs (new
  ids, shared ids, ids tied together with ``union``, or ids pinned with a :class:`PinKind` and the
  reason), through the narrow :class:`ChannelBuilder`, not the analysis itself;
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
* :class:`Elementwise` -- the ``keras.ops`` operations a Functional model calls on its tensors
  (``x + 3.0``, ``keras.ops.hard_sigmoid(x)``: graph nodes that are no layer, read as
  :class:`~keras_wgsef.graph.model_graph.OperationCall`); registered by operation class
  (``keras.src.ops.numpy.Add``), resolved with the call's operands to a passthrough (``f(0) = 0``
  decided with its constants) or a merge. An operation class without a rule is refused like a
  layer, by name, class and path.

Example:
  >>> import keras
  >>> rule_for(keras.layers.Conv2D(8, 3), "conv2d")
  Produce(kernel='kernel', out_axis=-1, in_axis=-2, bias='bias', width_key='filters', mixes_output=False)
  >>> class MyGate(keras.layers.Layer):
  ...     def call(self, x): return x * 2.0
  >>> register_channel_rule(MyGate, Passthrough())
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from keras_wgsef.graph.model_graph import OperationCall, weight_names
from keras_wgsef.graph.rule_base import ChannelBuilder as ChannelBuilder
from keras_wgsef.graph.rule_base import ChannelRule as ChannelRule
from keras_wgsef.graph.rule_base import Keep as Keep
from keras_wgsef.graph.rule_base import LayerChannels as LayerChannels
from keras_wgsef.graph.rule_base import Pin as Pin
from keras_wgsef.graph.rule_base import PinKind as PinKind
from keras_wgsef.graph.rule_base import UnsupportedLayerError as UnsupportedLayerError
from keras_wgsef.graph.rule_base import value_at_zero as value_at_zero
from keras_wgsef.graph.rule_carriers import BatchNormCarry as BatchNormCarry
from keras_wgsef.graph.rule_carriers import Carry as Carry
from keras_wgsef.graph.rule_carriers import DepthwiseCarry as DepthwiseCarry
from keras_wgsef.graph.rule_carriers import InstanceNormCarry as InstanceNormCarry
from keras_wgsef.graph.rule_carriers import NormalizationCarry as NormalizationCarry
from keras_wgsef.graph.rule_carriers import RMSNormCarry as RMSNormCarry
from keras_wgsef.graph.rule_passing import AdditiveAttention as AdditiveAttention
from keras_wgsef.graph.rule_passing import Concat as Concat
from keras_wgsef.graph.rule_passing import DotAttention as DotAttention
from keras_wgsef.graph.rule_passing import DotProduct as DotProduct
from keras_wgsef.graph.rule_passing import Elementwise as Elementwise
from keras_wgsef.graph.rule_passing import Flatten as Flatten
from keras_wgsef.graph.rule_passing import InferenceIdentity as InferenceIdentity
from keras_wgsef.graph.rule_passing import Merge as Merge
from keras_wgsef.graph.rule_passing import Opaque as Opaque
from keras_wgsef.graph.rule_passing import Passthrough as Passthrough
from keras_wgsef.graph.rule_passing import Permute as Permute
from keras_wgsef.graph.rule_passing import Refuse as Refuse
from keras_wgsef.graph.rule_passing import Reshape as Reshape
from keras_wgsef.graph.rule_producers import BidirectionalProduce as BidirectionalProduce
from keras_wgsef.graph.rule_producers import EinsumProduce as EinsumProduce
from keras_wgsef.graph.rule_producers import Embed as Embed
from keras_wgsef.graph.rule_producers import GroupQueryProduce as GroupQueryProduce
from keras_wgsef.graph.rule_producers import MultiHeadProduce as MultiHeadProduce
from keras_wgsef.graph.rule_producers import Produce as Produce
from keras_wgsef.graph.rule_producers import RecurrentProduce as RecurrentProduce
from keras_wgsef.graph.rule_producers import Separable as Separable
from keras_wgsef.graph.rule_producers import SpectralWrapped as SpectralWrapped
from keras_wgsef.graph.rule_producers import Wrapped as Wrapped

__all__ = [
    "INFERENCE_IDENTITY",
    "AdditiveAttention",
    "BatchNormCarry",
    "BidirectionalProduce",
    "Carry",
    "ChannelBuilder",
    "ChannelRule",
    "Concat",
    "DepthwiseCarry",
    "DotAttention",
    "DotProduct",
    "EinsumProduce",
    "Elementwise",
    "Embed",
    "Flatten",
    "GroupQueryProduce",
    "InferenceIdentity",
    "InstanceNormCarry",
    "Keep",
    "LayerChannels",
    "Merge",
    "MultiHeadProduce",
    "NormalizationCarry",
    "Opaque",
    "Passthrough",
    "Permute",
    "Pin",
    "PinKind",
    "Produce",
    "RMSNormCarry",
    "RecurrentProduce",
    "Refuse",
    "Reshape",
    "Separable",
    "SpectralWrapped",
    "UnsupportedLayerError",
    "Wrapped",
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


# ----------------------------------------------------------------------------------- registry
RuleOrFactory = ChannelRule | Callable[[Any], ChannelRule]
_REGISTRY: dict[type, RuleOrFactory] = {}


def register_channel_rule(layer_class: type, rule: RuleOrFactory) -> None:
    """Registers (or replaces) the channel rule of ``layer_class`` (exact class, not subclasses).

    Args:
      layer_class: a Keras layer class, or a ``keras.ops`` operation class
        (``keras.src.ops.numpy.Einsum``) for the operations a Functional model calls on its
        tensors (the rule then sees the call, an
        :class:`~keras_wgsef.graph.model_graph.OperationCall`).
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


def _way_out(path: str, cls: str, what: str = "layer") -> str:
    rules = "Elementwise() / Opaque('why')" if what == "operation" else "Passthrough() / Produce(...) / Opaque('why')"
    return (
        f"Register a rule with keras_wgsef.graph.rules.register_channel_rule({cls}, {rules}), or exclude the "
        f"{what} (exclude=r'{path}'), which keeps its input and output channels."
    )


def rule_for(layer: Any, path: str) -> ChannelRule:
    """The rule of ``layer`` (at ``path`` in the model); raises for classes without one or refused.

    ``layer`` may be an :class:`~keras_wgsef.graph.model_graph.OperationCall` (a ``keras.ops`` call
    in a Functional graph): its rule is the one registered for the operation's class.

    Example:
      >>> import keras
      >>> from keras_wgsef.graph.model_graph import flatten_model
      >>> x = keras.Input((3, 3))
      >>> call = flatten_model(keras.Model(x, keras.ops.einsum("bij,bjk->bik", x, x))).nodes[0].layer
      >>> rule_for(call, "einsum")
      Traceback (most recent call last):
      ...
      keras_wgsef.graph.rule_base.UnsupportedLayerError: No channel rule for operation 'einsum...' \
(keras.src.ops.numpy.Einsum, a keras.ops call in the model graph) at 'einsum': ...
    """
    _ensure_builtin_rules()
    if isinstance(layer, OperationCall):
        key, cls, what = layer.op_class, layer.class_name, "operation"
        subject = f"operation {layer.name!r} ({cls}, a keras.ops call in the model graph) at {path!r}"
    else:
        key, cls, what = type(layer), type(layer).__name__, "layer"
        subject = f"layer {path!r} of class {cls}"
    entry = _REGISTRY.get(key)
    if entry is None:
        raise UnsupportedLayerError(
            f"No channel rule for {subject}: the analysis cannot tell how it treats channels. "
            f"{_way_out(path, cls, what)}"
        )
    rule = entry if isinstance(entry, ChannelRule) else entry(layer)
    if isinstance(rule, Refuse):
        raise UnsupportedLayerError(
            f"{subject[0].upper()}{subject[1:]} is refused: {rule.reason}. {_way_out(path, cls, what)}"
        )
    return rule


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
    return weight_names(layer)


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
    if axis is None or -1 in np.atleast_1d(axis):
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


def _recurrent_factory(gates: int, candidate: int, width_key: str = "units") -> Callable[[Any], ChannelRule]:
    def factory(layer: Any) -> ChannelRule:
        cfg = layer.get_config()
        if cfg.get("return_state") or cfg.get("stateful"):
            return Opaque("a recurrent layer that returns or keeps its state")
        if not cfg.get("use_bias", True):
            return Opaque("a recurrent layer without bias is not handled")
        if not _channels_last(cfg) or any(int(d) != 1 for d in np.atleast_1d(cfg.get("dilation_rate", 1))):
            return Opaque("a channels_first or dilated ConvLSTM is not handled")
        return RecurrentProduce(gates=gates, candidate=candidate, width_key=width_key)

    return factory


_GATES = {"LSTM": (4, 2), "GRU": (3, 2), "SimpleRNN": (1, 0)}


def _bidirectional_factory(layer: Any) -> ChannelRule:
    cfg = layer.get_config()
    fwd, bwd = layer.forward_layer, layer.backward_layer
    kind = type(fwd).__name__
    if kind not in _GATES or type(bwd).__name__ != kind or cfg.get("merge_mode") not in ("concat", "sum", "ave"):
        return Opaque(f"Bidirectional({kind}) with merge_mode {cfg.get('merge_mode')!r} is not handled")
    rules = [rule_for(sub, f"{layer.name}/{sub.name}") for sub in (fwd, bwd)]
    if not all(isinstance(r, RecurrentProduce) for r in rules) or fwd.units != bwd.units:
        return Opaque("a Bidirectional whose directions are not plain recurrent layers of equal units")
    names = weight_names(layer)
    prefixes = [
        next(n[: -len("recurrent_kernel")] for n in names if n.startswith(d) and n.endswith("/recurrent_kernel"))
        for d in ("forward", "backward")
    ]
    gates, candidate = _GATES[kind]
    halves = [RecurrentProduce(gates=gates, candidate=candidate, prefix=p) for p in prefixes]
    return BidirectionalProduce(halves[0], halves[1], concat=cfg["merge_mode"] == "concat")


def _gqa_factory(layer: Any) -> ChannelRule:
    cfg = layer.get_config()
    expected = {f"{n}/kernel" for n in ("query", "key", "value", "attention_output")}
    if cfg.get("use_gate") or not expected <= set(weight_names(layer)):
        return Opaque(_ATTENTION)
    repeats = int(cfg["num_query_heads"]) // int(cfg["num_key_value_heads"])
    return GroupQueryProduce(bias=bool(cfg.get("use_bias", True)), repeats=repeats)


def _spectral_factory(layer: Any) -> ChannelRule:
    inner = rule_for(layer.layer, f"{layer.name}/{layer.layer.name}")
    if isinstance(inner, Produce) and "vector_u" in weight_names(layer):
        return SpectralWrapped(inner)
    return Opaque(f"SpectralNormalization({type(layer.layer).__name__}) is not handled")


def _mha_factory(layer: Any) -> ChannelRule:
    cfg = layer.get_config()
    names = set(weight_names(layer))
    expected = {f"{n}/kernel" for n in ("query", "key", "value", "attention_output")}
    if cfg.get("use_gate") or not expected <= names or tuple(cfg.get("attention_axes") or (1,)) != (1,):
        return Opaque(_ATTENTION)
    if cfg.get("output_shape") is not None and np.size(cfg["output_shape"]) != 1:
        return Opaque(_ATTENTION)
    return MultiHeadProduce(bias=bool(cfg.get("use_bias", True)))


def _wrapped_factory(layer: Any) -> ChannelRule:
    inner = rule_for(layer.layer, layer.name + "/" + layer.layer.name)
    if isinstance(inner, (Produce, Passthrough, Carry)):
        return Wrapped(inner)
    return Opaque(f"TimeDistributed({type(layer.layer).__name__}) is not handled")


_ATTENTION = "attention is not analysed yet: its heads and the channels it reads are kept"
_NO_CHANNELS = "it works on strings, token ids or foreign code, where channels have no meaning for pruning"


#: element-wise merges of tensors that share channels: a ``keras.layers`` class and the
#: ``keras.ops`` operation of the same name treat channels alike
_MERGES: dict[str, Merge] = {
    "Add": Merge("sum", drops="any"),
    "Subtract": Merge("sum", drops="last"),
    "Multiply": Merge("product"),
    "Maximum": Merge("extremum"),
    "Minimum": Merge("extremum"),
}


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
        "SpectralNormalization": _spectral_factory,
        **_MERGES,
        "Average": Merge("sum"),
        "Concatenate": lambda layer: Concat(int(layer.get_config().get("axis", -1))),
        "Flatten": lambda layer: Flatten() if _channels_last(layer.get_config()) else Opaque("channels_first Flatten"),
        "Reshape": Reshape(),
        "Permute": Permute(),
        "Pipeline": _pipeline_factory,
        "InputLayer": Passthrough(),
        "CategoryEncoding": Opaque("its channels are the categories of its integer input"),
        "MelSpectrogram": Opaque("it makes its channels (mel bins) from fixed filters on the input signal"),
        "STFTSpectrogram": Opaque("it makes its channels (frequency bins) from fixed filters on the input signal"),
        "Dot": DotProduct(),
        "Attention": lambda layer: (
            DotAttention() if layer.get_config().get("score_mode", "dot") == "dot" else Opaque(_ATTENTION)
        ),
        "AdditiveAttention": lambda layer: AdditiveAttention(scale=bool(layer.get_config().get("use_scale", True))),
        "MultiHeadAttention": _mha_factory,
        "GroupQueryAttention": _gqa_factory,
        "LSTM": _recurrent_factory(gates=4, candidate=2),
        "GRU": _recurrent_factory(gates=3, candidate=2),
        "SimpleRNN": _recurrent_factory(gates=1, candidate=0),
        **{
            n: _recurrent_factory(gates=4, candidate=2, width_key="filters")
            for n in ("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
        },
        "RNN": Opaque(_RECURRENT),
        "Bidirectional": _bidirectional_factory,
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
    for module, table in _operation_rules().items():
        for name, rule in table.items():
            cls = getattr(importlib.import_module(module), name, None)
            if cls is not None:
                _REGISTRY.setdefault(cls, rule)
    globals()["_BUILTIN_DONE"] = True


#: ``keras.ops`` operations applied to each element on their own (one tensor operand and constants)
_UNARY_OPS = {
    "keras.src.ops.numpy": (
        "Abs Absolute Fabs Negative Square Sqrt Cbrt Exp Exp2 Expm1 Log Log1p Log2 Log10 Sin Cos Tan Sinh Cosh "
        "Tanh Arctan Arcsinh Sign Floor Ceil Round Trunc Reciprocal Clip Power FloorDivide Mod Copy"
    ),
    "keras.src.ops.nn": (
        "Relu Relu6 Sigmoid HardSigmoid HardSilu Silu Gelu Elu Selu Celu LeakyRelu Softplus Softsign SoftShrink "
        "HardShrink HardTanh TanhShrink Squareplus SparsePlus SparseSigmoid LogSigmoid Threshold"
    ),
    "keras.src.ops.math": "Erf Erfc Rsqrt",
}


def _operation_rules() -> dict[str, dict[str, RuleOrFactory]]:
    """The built-in rules of ``keras.ops`` operation classes, by module and class name."""
    merges = {**_MERGES, "Divide": Merge("quotient"), "TrueDivide": Merge("quotient")}
    tables: dict[str, dict[str, RuleOrFactory]] = {
        m: {n: Elementwise() for n in ns.split()} for m, ns in _UNARY_OPS.items()
    }
    tables["keras.src.ops.numpy"].update({n: Elementwise(merge) for n, merge in merges.items()})
    tables["keras.src.ops.nn"].update({"Softmax": _softmax_factory, "LogSoftmax": _softmax_factory})
    return tables


_BUILTIN_DONE = False
