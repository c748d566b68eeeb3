"""The base of every channel rule: what a rule must say about its layer, and the shared helpers.

A rule (:class:`ChannelRule`) owns its layer class's channel behaviour; the analysis
(:mod:`keras_wgsef.graph.channels`) and the surgery (``tflite_export.shrink``) only call its
methods. The rules themselves live in :mod:`~keras_wgsef.graph.rule_producers`,
:mod:`~keras_wgsef.graph.rule_carriers` and :mod:`~keras_wgsef.graph.rule_passing`; the registry
that maps layer classes to them in :mod:`keras_wgsef.graph.rules`.

Example:
  >>> value_at_zero(lambda x: x + 1.0).tolist()
  [[1.0, 1.0, 1.0, 1.0]]
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from keras_wgsef.graph.model_graph import Node

__all__ = [
    "ChannelBuilder",
    "ChannelRule",
    "Keep",
    "LayerChannels",
    "Pin",
    "PinKind",
    "UnsupportedLayerError",
    "act_zero",
    "value_at_zero",
    "where",
]

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
      inner: channels inside the layer that no tensor shows (attention heads): grouped, and
        removed where :meth:`ChannelRule.zero_inner` says they are zero.
    """

    out: Any = None  # np.ndarray once the layer is seen (None: it has no such channels)
    inp: Any = None
    carry: Any = None
    inner: Any = None  # channels inside the layer, on no tensor (attention heads)


class PinKind(enum.Enum):
    """Why a channel can never be removed (what a pin's message explains in words)."""

    INPUT = "input"  #: a model input's channel
    OUTPUT = "output"  #: a model output's channel
    HEAD = "head"  #: an output channel of a classifier head (its channels are the model's outputs)
    OPAQUE = "opaque"  #: a layer's rule keeps it (an opaque layer, a broadcast, a mixing activation, token ids)
    EXCLUDED = "excluded"  #: the caller excluded its producer (``include`` / ``exclude``)
    NOT_ZERO_INVARIANT = "not zero-invariant"  #: zeroing its group would leave it nonzero where it is read


@dataclasses.dataclass(frozen=True)
class Pin:
    """A channel that can never be removed: the kind of reason, and the reason in words for the user."""

    kind: PinKind
    message: str


class ChannelBuilder(Protocol):
    """What a rule sees of the channel analysis while it is built (:meth:`ChannelRule.propagate`).

    Channel ids are ints; ``ids`` arguments are int arrays of them.
    """

    def shape(self, tensor: int) -> tuple:
        """The shape of tensor ``tensor`` of the graph (batch axis first, as Keras gives it)."""
        ...

    def new(self, n: int) -> np.ndarray:
        """``n`` new channel ids."""
        ...

    def union(self, a: np.ndarray, b: np.ndarray, where: str) -> None:
        """Ties channel ``a[i]`` to ``b[i]``: they are removed together (``where`` names the layer in errors)."""
        ...

    def pin(self, ids: np.ndarray, kind: PinKind, message: str) -> None:
        """Marks channels that can never be removed, with the kind of reason and the reason in words."""
        ...

    def own(self, path: str) -> LayerChannels:
        """The ids layer ``path`` owns (empty on first use; the rule fills them once)."""
        ...


def where(node: Node) -> str:
    return f"layer {node.path!r} ({type(node.layer).__name__})"


def act_zero(layer: Any) -> bool:
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
    #: the rule holds only when every tensor input is the same tensor (self-attention)
    same_inputs: ClassVar[bool] = False
    #: what the layer's inner channels are called in scope names and labels ("mha:heads")
    inner_name: ClassVar[str] = "inner"
    #: the input counts the rule holds for (None: any); e.g. (1,): no initial state for an RNN
    accepts_inputs: ClassVar[tuple[int, ...] | None] = None

    def resolve(self, layer: Any, in_shape: tuple, out_shape: tuple) -> ChannelRule:
        """The rule for a call with these shapes (most rules do not depend on them)."""
        return self

    def propagate(self, b: ChannelBuilder, node: Node, ins: list[np.ndarray]) -> list[np.ndarray]:
        """The channel ids of each output of the call, from those of the inputs ``ins``.

        New ids come from ``b.new``, ties from ``b.union``, channels that must stay from ``b.pin``;
        the layer's own ids (its output, input, carried or inner channels) go in ``b.own(node.path)``.
        """
        raise NotImplementedError(f"{type(self).__name__}.propagate")

    def zero(self, layer: Any, v: dict[str, np.ndarray], ins: list[np.ndarray], out_n: int) -> np.ndarray:
        """Which output channels are zero for every input (``ins``: zero masks of the inputs)."""
        return np.zeros(out_n, bool)

    def weight_slices(self, own: LayerChannels) -> list[tuple[str, int, np.ndarray]]:
        """``(weight name, axis, channel ids along that axis)`` of the weights indexed by channel."""
        return []

    def read_inputs(self, n_inputs: int) -> tuple[int, ...]:
        """Which inputs the layer reads jointly (``reads_channels``): the first, unless it says more."""
        return (0,) if self.reads_channels else ()

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

    def zero_inner(self, v: dict[str, np.ndarray], own: LayerChannels) -> np.ndarray | None:
        """Which :attr:`LayerChannels.inner` channels are zero and can go (at least one stays)."""
        return None

    def edit_inner_config(self, config: dict, own: LayerChannels, keep: Keep, v: dict[str, np.ndarray]) -> None:
        """Edits the config for the channels the layer owns that stay (``keep(own.inner)``, ``keep(own.carry)``).

        For inner channels (attention heads) and per-channel constants in the config (a
        ``Normalization``'s given mean); ``v``: the old weights. Default: nothing.
        """

    def droppable(self, all_zero: list[bool]) -> list[int]:
        """Inputs that may leave the layer when exactly zero (``all_zero[i]``), the output unchanged."""
        return []


def value_at_zero(fn: Callable[[Any], Any], shape: tuple[int, ...] = (1, 4)) -> np.ndarray:
    """``fn(0)`` on a float32 zero array of ``shape``, as NumPy (used to check ``f(0) = 0``)."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(fn(np.zeros(shape, np.float32))))
