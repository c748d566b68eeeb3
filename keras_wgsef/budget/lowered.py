"""The int8 TFLite graph a Keras model becomes, as plain data: what the hardware cost models read.

Flash, arena and instruction costs are properties of the *converted* model, not of the Keras
layers: BatchNorm folds into the convolution before it, ReLU/ReLU6 fuse into their producer,
Dropout disappears, ``Flatten`` becomes ``RESHAPE``, ``GlobalAveragePooling2D`` becomes ``MEAN``
(or ``AVERAGE_POOL_2D`` when the exporter lowers it). A :class:`LoweredModel` lists the operators
and activation tensors of that int8 graph. It is built two ways that must agree:

* from a Keras model and candidate widths (:mod:`keras_wgsef.budget.lowering`, Keras only:
  what the budget controller predicts with, before any conversion);
* from a ``.tflite`` flatbuffer (``tflite_export.flatbuffer.lowered_model``: what the
  calibration and the tests measure with).

Every activation tensor is int8 (1 byte per element) unless ``dtype_bytes`` says otherwise.

Example:
  >>> t = {0: Tensor(0, (28, 28, 1)), 1: Tensor(1, (28, 28, 16))}
  >>> op = Op("CONV_2D", (0,), (1,), macs=28 * 28 * 9 * 16, window=9, weight_elems=144, bias_elems=16,
  ...         quant_channels=16)
  >>> lm = LoweredModel(t, [op], (0,), (1,))
  >>> op.features(lm)
  {'macs': 112896, 'taps': 112896, 'in_elems': 784, 'out_elems': 12544, 'out_channels': 16}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

__all__ = ["FEATURES", "LoweredModel", "Op", "Tensor"]

#: The per-operator quantities the instruction model is linear in (see :meth:`Op.features`).
FEATURES = ("macs", "taps", "in_elems", "out_elems", "out_channels")


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One activation tensor (no batch axis; channels last).

    Attributes:
      id: the tensor's id within its model.
      shape: its shape without the batch axis, e.g. ``(14, 14, 32)``.
      dtype_bytes: bytes per element (1 for int8).
    """

    id: int
    shape: tuple[int, ...]
    dtype_bytes: int = 1

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.elements * self.dtype_bytes


@dataclasses.dataclass(frozen=True)
class Op:
    """One operator of the int8 graph.

    Attributes:
      kind: the TFLite builtin name (``"CONV_2D"``, ``"DEPTHWISE_CONV_2D"``, ``"FULLY_CONNECTED"``,
        ``"MAX_POOL_2D"``, ``"AVERAGE_POOL_2D"``, ``"MEAN"``, ``"ADD"``, ``"MUL"``, ``"RESHAPE"``,
        ``"CONCATENATION"``, ``"PAD"``, ``"SOFTMAX"``, ...).
      inputs: ids of the activation tensors it reads (constants are not tensors here).
      outputs: ids of the activation tensors it writes.
      macs: multiply-accumulates (the flatbuffer convention of :mod:`tflite_export.flatbuffer`).
      window: taps per output element: ``kh * kw`` for convolutions, depthwise convolutions and
        pooling; the reduced elements per output element for ``MEAN``; 1 otherwise.
      weight_elems: int8 weight elements (kernel, depthwise kernel) it holds.
      bias_elems: int32 bias elements it holds.
      quant_channels: entries of per-channel quantization parameters (output channels of a
        per-channel quantized kernel; 0 for per-tensor).
      constants: ``(type, shape, values)`` of its small constant operands other than kernel and
        bias where known (axes, shapes: ``EXPAND_DIMS``, a static ``RESHAPE``, ``MEAN``). The
        converter stores equal constants once, so an operator whose key an earlier operator
        already has reads that tensor (1-D models: every ``EXPAND_DIMS`` of a ``Conv1D`` reads one
        ``-3``); the arena and flash models count constant tensors with this.
    """

    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    macs: int = 0
    window: int = 1
    weight_elems: int = 0
    bias_elems: int = 0
    quant_channels: int = 0
    constants: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()

    def features(self, model: LoweredModel) -> dict[str, int]:
        """The instruction model's regressors: MACs, taps (``out_elems * window``), elements in and out."""
        out = model.tensors[self.outputs[0]] if self.outputs else None
        out_elems = sum(model.tensors[t].elements for t in self.outputs)
        return {
            "macs": int(self.macs),
            "taps": int(out_elems * self.window),
            "in_elems": int(sum(model.tensors[t].elements for t in self.inputs)),
            "out_elems": int(out_elems),
            "out_channels": int(out.shape[-1]) if out is not None and out.shape else 1,
        }


@dataclasses.dataclass
class LoweredModel:
    """Operators in execution order and the activation tensors they read and write.

    Attributes:
      tensors: ``{id: Tensor}`` of every activation tensor (model inputs and outputs included).
      ops: operators in execution order.
      inputs / outputs: the model's input and output tensor ids.
      names: a readable name of some tensors (the Keras layer that writes it, or the flatbuffer's
        tensor name); :meth:`name` falls back to ``t<id>``.
    """

    tensors: Mapping[int, Tensor]
    ops: list[Op]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    names: Mapping[int, str] = dataclasses.field(default_factory=dict)

    def name(self, t: int) -> str:
        """The tensor's name, or ``t<id>``."""
        return self.names.get(t) or f"t{t}"

    @property
    def op_kinds(self) -> list[str]:
        return [op.kind for op in self.ops]

    def lifetimes(self) -> dict[int, tuple[int, int]]:
        """``{tensor id: (first op index, last op index)}`` it must stay allocated for.

        Inputs live from op 0, outputs until the last op (the caller reads them after ``Invoke``).
        """
        last = len(self.ops) - 1
        life: dict[int, list[int]] = {t: [0, 0] for t in self.inputs}
        for i, op in enumerate(self.ops):
            for t in op.outputs:
                life.setdefault(t, [i, i])
            for t in (*op.inputs, *op.outputs):
                if t in life:
                    life[t][1] = max(life[t][1], i)
        for t in self.outputs:
            life.setdefault(t, [last, last])[1] = last
        return {t: (a, b) for t, (a, b) in life.items()}
