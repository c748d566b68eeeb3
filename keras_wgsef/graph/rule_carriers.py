"""Rules of the layers that carry channels one to one with per-channel parameters.

:class:`Carry` (PReLU) and its variants with their own zero rules and slicing:
:class:`BatchNormCarry`, :class:`InstanceNormCarry` (GroupNormalization with one channel per
group), :class:`DepthwiseCarry`, :class:`NormalizationCarry` (the preprocessing layer),
:class:`RMSNormCarry` (exact: ``eps`` and ``scale`` rescaled for the removed zero channels).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from keras_wgsef.graph.model_graph import Node

from keras_wgsef.graph.rule_base import ChannelBuilder, ChannelRule, Keep, LayerChannels, act_zero, where
from keras_wgsef.graph.rule_passing import Opaque

__all__ = ["BatchNormCarry", "Carry", "DepthwiseCarry", "InstanceNormCarry", "NormalizationCarry", "RMSNormCarry"]


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

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        own = b.own(node.path)
        if own.carry is None:
            own.carry = b.new(len(ins[0]))
        b.union(ins[0], own.carry, where(node))
        return [own.carry]

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
        out &= act_zero(layer)
        return out & (v[self.bias] == 0) if self.bias else out


@dataclasses.dataclass(frozen=True)
class NormalizationCarry(Carry):
    """The ``Normalization`` preprocessing layer over the last axis: ``(x - mean) / sqrt(var)`` per channel.

    ``mean`` and ``variance`` are fixed statistics (not trained): weights when the layer was
    adapted, constants in its config when they were given (``Normalization(mean=..., variance=...)``,
    a scalar for every channel or one value per channel). A zero channel stays zero only where
    its mean is zero; with ``invert=True`` it computes ``x * sqrt(var) + mean``: the same. The
    narrower layer gets the kept channels' weights, or the kept entries of per-channel constants.
    """

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        import keras

        mean = v["mean"] if "mean" in v else keras.ops.convert_to_numpy(layer.mean)  # a constant: broadcast
        return ins[0] & (np.broadcast_to(np.asarray(mean).reshape(-1), (out_n,)) == 0)

    def edit_inner_config(self, config: dict, own: LayerChannels, keep: Keep, v: dict[str, np.ndarray]) -> None:
        mask = keep(own.carry)
        for key in ("mean", "variance"):
            value = config.get(key)
            if value is not None and np.size(value) > 1:
                config[key] = np.compress(mask, np.asarray(value), axis=-1).tolist()


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
