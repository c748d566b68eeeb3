"""Rules of the layers that make channels from a kernel: their output channels are groups.

:class:`Produce` (Dense, Conv*, EinsumDense ``...c,cn->...n``), :class:`RecurrentProduce`
(LSTM, GRU, SimpleRNN units), :class:`Embed` (Embedding dimensions), :class:`Separable`
(SeparableConv) and :class:`Wrapped` (TimeDistributed of any rule).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from keras_wgsef.graph.model_graph import Node

from keras_wgsef.graph.model_graph import layer_variables
from keras_wgsef.graph.rule_base import ChannelBuilder, ChannelRule, Keep, LayerChannels, PinKind, act_zero, where
from keras_wgsef.graph.rule_passing import Opaque

__all__ = [
    "BidirectionalProduce",
    "EinsumProduce",
    "Embed",
    "GroupQueryProduce",
    "MultiHeadProduce",
    "Produce",
    "RecurrentProduce",
    "Separable",
    "SpectralWrapped",
    "Wrapped",
]


@dataclasses.dataclass(frozen=True)
class Produce(ChannelRule):
    """New channels from a kernel: output channel ``j`` is ``kernel[..., j]`` (``out_axis``) plus ``bias[j]``."""

    kernel: str = "kernel"
    out_axis: int = -1
    in_axis: int = -2
    bias: str | None = "bias"
    width_key: str = "filters"
    mixes_output: bool = False  # e.g. activation="softmax": the output channels are coupled

    reads_channels: ClassVar[bool] = True

    def _sizes(self, layer: Any) -> tuple[int, int]:
        shape = layer_variables(layer)[self.kernel].shape
        return int(shape[self.out_axis]), int(shape[self.in_axis])

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        own = b.own(node.path)
        if own.out is None:
            n_out, n_in = self._sizes(node.layer)
            own.out, own.inp = b.new(n_out), b.new(n_in)
        b.union(ins[0], own.inp, where(node))
        if self.mixes_output:
            b.pin(own.out, PinKind.OPAQUE, f"made by {node.path} (its activation mixes channels)")
        return [own.out]

    def _kernel_in_out(self, k: np.ndarray) -> np.ndarray:
        return np.moveaxis(k, [self.in_axis % k.ndim, self.out_axis % k.ndim], [-2, -1])

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        w = self._kernel_in_out(v[self.kernel])
        out = np.all(w[..., ~ins[0], :] == 0, axis=tuple(range(w.ndim - 1)))
        if self.bias:
            out &= v[self.bias] == 0
        return out & act_zero(layer)

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
    """LSTM / GRU / SimpleRNN / ConvLSTM: unit ``j`` is a channel; its group spans its gate blocks.

    The kernel ``(*window, c, gates*u)``, the recurrent kernel ``(*window, u, gates*u)`` and the
    bias (``(gates*u,)``, or ``(2, gates*u)`` for a GRU with ``reset_after``) hold unit ``j``'s
    columns ``g*u + j`` for every gate ``g``; the recurrent kernel's row ``j`` reads the unit's own
    output and goes with it. A unit whose candidate block (LSTM ``c``, GRU ``h``, SimpleRNN: the
    only block) is zero never leaves its zero initial state: its output is exactly zero, whatever
    the gates (``h = o * tanh(c)``, ``c = f*c + i*tanh(0)``; GRU ``h = z*h + (1-z)*tanh(0)``).
    Input channel ``i`` is read through the kernel's row ``i``. ``prefix`` names the weights of
    one direction of a ``Bidirectional`` (``"forward_lstm/lstm_cell/"``).
    """

    gates: int = 4
    candidate: int = 2
    width_key: str = "units"
    prefix: str = ""

    reads_channels: ClassVar[bool] = True
    accepts_inputs: ClassVar[tuple[int, ...] | None] = (1,)  # an initial state (or a mask) is a second input

    def _w(self, v: dict[str, np.ndarray], name: str) -> np.ndarray:
        return v[self.prefix + name]

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        own = b.own(node.path)
        if own.out is None:
            v = layer_variables(node.layer)
            u, c = int(self._w(v, "recurrent_kernel").shape[-2]), int(self._w(v, "kernel").shape[-2])
            own.out, own.inp = b.new(u), b.new(c)
        b.union(ins[0], own.inp, where(node))
        return [own.out]

    def _block(self, x: np.ndarray) -> np.ndarray:
        u = x.shape[-1] // self.gates
        return x[..., self.candidate * u : (self.candidate + 1) * u]

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        def cols(x: np.ndarray) -> np.ndarray:  # which candidate columns are zero over every other axis
            block = self._block(x)
            return np.all(block.reshape(-1, block.shape[-1]) == 0, axis=0)

        out = cols(self._w(v, "kernel")[..., ~ins[0], :]) & cols(self._w(v, "recurrent_kernel"))
        return out & cols(self._w(v, "bias")) & act_zero(layer)

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        cols = np.tile(own.out, self.gates)
        return [(self.prefix + n, -1, cols) for n in ("kernel", "recurrent_kernel", "bias")]

    def slice_weights(self, v: dict[str, np.ndarray], keep: Keep, own: LayerChannels) -> dict[str, np.ndarray]:
        out = super().slice_weights(v, keep, own)
        kernel, recurrent = self.prefix + "kernel", self.prefix + "recurrent_kernel"
        out[kernel] = np.compress(keep(own.inp), out[kernel], axis=-2)
        out[recurrent] = np.compress(keep(own.out), out[recurrent], axis=-2)
        return out

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        config[self.width_key] = kept

    def output_kernel(self, v: dict[str, np.ndarray]) -> np.ndarray | None:
        u = self._w(v, "recurrent_kernel").shape[-2]
        return np.concatenate([self._w(v, k).reshape(-1, u) for k in ("kernel", "recurrent_kernel")])

    def unread_inputs(self, v: dict[str, np.ndarray], n_in: int) -> np.ndarray:
        k = np.moveaxis(self._w(v, "kernel"), -2, 0)
        return np.all(k.reshape(n_in, -1) == 0, axis=1)


@dataclasses.dataclass(frozen=True)
class BidirectionalProduce(ChannelRule):
    """``Bidirectional(LSTM | GRU | SimpleRNN)``: unit ``j`` of both directions is one group.

    Each direction is a :class:`RecurrentProduce` over its own weights; the group of unit ``j``
    holds both directions' gate columns, so both keep the same number of units. ``merge_mode``
    ``"concat"`` puts the forward units first (output channels ``j`` and ``u + j`` are the same
    group), ``"sum"`` / ``"ave"`` add them (zero where both are zero).
    """

    forward: RecurrentProduce = dataclasses.field(default_factory=RecurrentProduce)
    backward: RecurrentProduce = dataclasses.field(default_factory=RecurrentProduce)
    concat: bool = True

    reads_channels: ClassVar[bool] = True
    accepts_inputs: ClassVar[tuple[int, ...] | None] = (1,)

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        (out,) = self.forward.propagate(b, node, ins)  # one set of unit ids, read by both directions
        return [np.concatenate([out, out]) if self.concat else out]

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        u = out_n // 2 if self.concat else out_n
        f = self.forward.zero(layer.forward_layer, v, ins, u)
        b = self.backward.zero(layer.backward_layer, v, ins, u)
        return np.concatenate([f, b]) if self.concat else f & b

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        return self.forward.weight_slices(own) + self.backward.weight_slices(own)

    def slice_weights(self, v: dict[str, np.ndarray], keep: Keep, own: LayerChannels) -> dict[str, np.ndarray]:
        return self.backward.slice_weights(self.forward.slice_weights(v, keep, own), keep, own)

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        units = kept // 2 if self.concat else kept
        for key in ("layer", "backward_layer"):
            if config.get(key):
                config[key]["config"][self.forward.width_key] = units
                config[key].pop("build_config", None)  # built again for the narrower input

    def output_kernel(self, v: dict[str, np.ndarray]) -> np.ndarray | None:
        f, b = self.forward.output_kernel(v), self.backward.output_kernel(v)
        return None if f is None or b is None else np.concatenate([f, b])

    def unread_inputs(self, v: dict[str, np.ndarray], n_in: int) -> np.ndarray:
        return self.forward.unread_inputs(v, n_in) & self.backward.unread_inputs(v, n_in)


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

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        return self.inner.propagate(b, node, ins)

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
        config["layer"].pop("build_config", None)  # built again for the narrower input

    def output_kernel(self, v: dict[str, np.ndarray]) -> np.ndarray | None:
        return self.inner.output_kernel(v)


@dataclasses.dataclass(frozen=True)
class Embed(ChannelRule):
    """Embedding: output dimension ``j`` is ``embeddings[:, j]``; the input holds token indices."""

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        own = b.own(node.path)
        if own.out is None:
            own.out = b.new(int(node.layer.output_dim))
        b.pin(ins[0], PinKind.OPAQUE, f"read by {node.path} (Embedding) as token indices")
        return [own.out]

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
    """SeparableConv: the depthwise kernel carries input channels, the pointwise kernel makes the outputs."""

    depthwise: str = "depthwise_kernel"
    pointwise: str = "pointwise_kernel"
    bias: str | None = "bias"
    depth_multiplier: int = 1
    width_key: str = "filters"

    reads_channels: ClassVar[bool] = True

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        own = b.own(node.path)
        if own.out is None:
            v = layer_variables(node.layer)
            own.out, own.inp = b.new(int(v[self.pointwise].shape[-1])), b.new(int(v[self.depthwise].shape[-2]))
        b.union(ins[0], own.inp, where(node))
        return [own.out]

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        dw = v[self.depthwise]
        mid_zero = np.repeat(ins[0], self.depth_multiplier) | np.all(dw == 0, axis=tuple(range(dw.ndim - 2))).reshape(
            -1
        )
        w = v[self.pointwise]
        out = np.all(w[..., ~mid_zero, :] == 0, axis=tuple(range(w.ndim - 1)))
        if self.bias:
            out &= v[self.bias] == 0
        return out & act_zero(layer)

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


_QKV = ("query", "key", "value")


@dataclasses.dataclass(frozen=True)
class MultiHeadProduce(ChannelRule):
    """MultiHeadAttention (self-attention): heads and output channels are groups.

    Kernels ``query|key|value/kernel (c, H, d)`` with biases ``(H, d)``, and
    ``attention_output/kernel (H, d_v, E)`` with bias ``(E,)``. Output channel ``e`` is
    ``attention_output[..., e]`` plus its bias (a producer's channel). Head ``h`` is an inner
    channel: its group is ``query|key|value[:, h, :]`` and their biases; with its value slice at
    zero the head's output is zero whatever its attention weights, so it goes: ``num_heads - 1``
    and ``attention_output[h]`` sliced away. Input channel ``i`` is read through row ``i`` of the
    three kernels. Per-head key and value dimensions that are zero in every head go too
    (:meth:`zero_dims`; the query is rescaled for the ``1/sqrt(key_dim)`` of the scores).
    Cross-attention (a key or value tensor other than the query) stays opaque.
    """

    bias: bool = True

    reads_channels: ClassVar[bool] = True
    same_inputs: ClassVar[bool] = True
    inner_name: ClassVar[str] = "heads"

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        own = b.own(node.path)
        if own.out is None:
            v = layer_variables(node.layer)
            own.out = b.new(int(v["attention_output/kernel"].shape[-1]))
            own.inp, own.inner = b.new(int(v["query/kernel"].shape[0])), b.new(int(v["query/kernel"].shape[1]))
        b.union(ins[0], own.inp, where(node))
        return [own.out]

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        out = np.all(v["attention_output/kernel"].reshape(-1, out_n) == 0, axis=0)
        return out & (v["attention_output/bias"] == 0) if self.bias else out

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        entries = [("attention_output/kernel", -1, own.out)]
        entries += [(f"{n}/kernel", 1, own.inner) for n in _QKV]
        if self.bias:
            entries += [("attention_output/bias", 0, own.out)] + [(f"{n}/bias", 0, own.inner) for n in _QKV]
        return entries

    def unread_inputs(self, v: dict[str, np.ndarray], n_in: int) -> np.ndarray:
        return np.all([np.all(v[f"{n}/kernel"].reshape(n_in, -1) == 0, axis=1) for n in _QKV], axis=0)

    def zero_inner(self, v: dict[str, np.ndarray], own: LayerChannels) -> np.ndarray | None:
        value = v["value/kernel"]
        zero = np.all(np.moveaxis(value, 1, 0).reshape(value.shape[1], -1) == 0, axis=1)
        if self.bias:
            zero &= np.all(v["value/bias"] == 0, axis=1)
        if zero.all():
            zero[0] = False  # one head stays: a layer needs one
        return zero

    def slice_weights(self, v: dict[str, np.ndarray], keep: Keep, own: LayerChannels) -> dict[str, np.ndarray]:
        out = super().slice_weights(v, keep, own)
        for n in _QKV:
            out[f"{n}/kernel"] = np.compress(keep(own.inp), out[f"{n}/kernel"], axis=0)
        out["attention_output/kernel"] = np.compress(keep(own.inner), out["attention_output/kernel"], axis=0)
        key, value = self.zero_dims(v)
        # scores are divided by sqrt(key_dim): the query makes up for the dimensions that go
        rescale = np.sqrt((~key).sum() / key.size).astype(out["query/kernel"].dtype)
        for name, mask in (("query", key), ("key", key), ("value", value)):
            out[f"{name}/kernel"] = np.compress(~mask, out[f"{name}/kernel"], axis=-1)
            if self.bias:
                out[f"{name}/bias"] = np.compress(~mask, out[f"{name}/bias"], axis=-1)
        out["query/kernel"] = out["query/kernel"] * rescale
        if self.bias:
            out["query/bias"] = out["query/bias"] * rescale
        out["attention_output/kernel"] = np.compress(~value, out["attention_output/kernel"], axis=1)
        return out

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        config["output_shape"] = kept  # not the query's width, which may shrink too

    def edit_inner_config(self, config: dict, own: LayerChannels, keep: Keep, v: dict[str, np.ndarray]) -> None:
        config["num_heads"] = int(keep(own.inner).sum())
        key, value = self.zero_dims(v)
        config["key_dim"] = int(np.sum(~key))
        config["value_dim"] = int(np.sum(~value))

    def zero_dims(self, v: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per-head dimensions that are zero in every head: ``(key dims, value dims)`` masks.

        Key dimension ``d`` adds ``q_d * k_d`` to every score: it goes where the query's or the
        key's slice ``[:, :, d]`` (and bias) is zero in every head. Value dimension ``d`` goes where
        the value's slice is zero or the output kernel ignores it (``attention_output[:, d, :]``).
        One dimension of each always stays.
        """

        def zero(name: str, axis: int = -1) -> np.ndarray:
            w = np.moveaxis(v[f"{name}/kernel"], axis, 0)
            z = np.all(w.reshape(w.shape[0], -1) == 0, axis=1)
            return z & np.all(v[f"{name}/bias"] == 0, axis=0) if self.bias and name != "attention_output" else z

        key = zero("query") | zero("key")
        value = zero("value") | zero("attention_output", 1)
        for mask in (key, value):
            if mask.all():
                mask[0] = False
        return key, value

    def output_kernel(self, v: dict[str, np.ndarray]) -> np.ndarray | None:
        k = v["attention_output/kernel"]
        return k.reshape(-1, k.shape[-1])


@dataclasses.dataclass(frozen=True)
class GroupQueryProduce(MultiHeadProduce):
    """GroupQueryAttention (self-attention): output channels tied to the query's, key/value heads as groups.

    The layer has no ``output_shape``: its output is as wide as its query, so output channel ``e``
    can only go with input channel ``e`` (one class): where the input is unread or zero and
    ``attention_output[..., e]`` and its bias are zero. Key/value head ``g`` serves query heads
    ``g*r .. g*r + r - 1`` (``r = num_query_heads / num_key_value_heads``); its group is its key
    and value slices and those query heads' slices; with its value slice at zero all ``r`` heads
    output zero, so they go together (``num_key_value_heads - 1``, ``num_query_heads - r``).
    """

    repeats: int = 1

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        own = b.own(node.path)
        if own.out is None:
            v = layer_variables(node.layer)
            own.inp, own.inner = b.new(int(v["query/kernel"].shape[0])), b.new(int(v["key/kernel"].shape[1]))
            own.out = own.inp
        b.union(ins[0], own.inp, where(node))
        return [own.out]

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        query_heads = np.repeat(own.inner, self.repeats)
        entries = [("attention_output/kernel", -1, own.out), ("query/kernel", 1, query_heads)]
        entries += [(f"{n}/kernel", 1, own.inner) for n in ("key", "value")]
        if self.bias:
            entries += [("attention_output/bias", 0, own.out), ("query/bias", 0, query_heads)]
            entries += [(f"{n}/bias", 0, own.inner) for n in ("key", "value")]
        return entries

    def slice_weights(self, v: dict[str, np.ndarray], keep: Keep, own: LayerChannels) -> dict[str, np.ndarray]:
        out = ChannelRule.slice_weights(self, v, keep, own)
        for n in _QKV:
            out[f"{n}/kernel"] = np.compress(keep(own.inp), out[f"{n}/kernel"], axis=0)
        heads = np.repeat(keep(own.inner), self.repeats)
        out["attention_output/kernel"] = np.compress(heads, out["attention_output/kernel"], axis=0)
        return out

    def edit_config(self, config: dict, kept: int, before: int) -> None:
        pass  # the width follows the query

    def edit_inner_config(self, config: dict, own: LayerChannels, keep: Keep, v: dict[str, np.ndarray]) -> None:
        kv = int(keep(own.inner).sum())
        config["num_key_value_heads"], config["num_query_heads"] = kv, kv * self.repeats


@dataclasses.dataclass(frozen=True)
class SpectralWrapped(Wrapped):
    """``SpectralNormalization(layer)``: the wrapped producer's rule, plus the power iteration's ``vector_u``.

    Zero output columns of the kernel do not change its singular values, so removing them keeps
    the normalization; ``vector_u`` ``(1, n)`` follows the output channels.
    """

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        return [*self.inner.weight_slices(own), ("vector_u", -1, own.out)]

    def slice_weights(self, v: dict[str, np.ndarray], keep: Keep, own: LayerChannels) -> dict[str, np.ndarray]:
        out = self.inner.slice_weights(v, keep, own)
        out["vector_u"] = np.compress(keep(own.out), v["vector_u"], axis=-1)
        return out
