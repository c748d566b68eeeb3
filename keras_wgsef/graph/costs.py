"""Multiply-accumulate (MAC) and parameter counts of Keras models, per layer and in total.

MACs of one inference with batch 1, counted per layer call (a shared layer sums its calls).

Convention: a MAC is one multiply-accumulate of a product that contracts an axis -- a weight
matrix or kernel applied to activations (Dense, convolutions, the gate matmuls of a recurrent
cell, attention projections) or two activations contracted with each other (attention scores
``Q K^T``, ``scores @ V``, ``Dot``). Element-wise work counts 0: bias additions, BatchNormalization
and LayerNormalization (their scale is element-wise, and BatchNormalization folds into the
convolution before it), the element-wise gate products of LSTM/GRU (``f * c``, ``r * h``),
attention's scaling, activations, pooling, resizing, merges, reshapes and lookups (Embedding). This
is the convention of :mod:`tflite_export.flatbuffer`, which counts ``CONV_2D``,
``DEPTHWISE_CONV_2D``, ``FULLY_CONNECTED``, ``TRANSPOSE_CONV`` and ``BATCH_MATMUL`` and nothing else,
so a converted model reports the same MACs up to the lowerings noted below.

With ``P`` the output positions (the product of the output's non-batch, non-channel dims; 1 for a
Dense on a vector), ``k`` the product of the kernel size, ``C`` input and ``F`` output channels:

* Dense ``P * C * F``; Conv1D/2D/3D ``P * k * C/groups * F``; DepthwiseConv ``P * k * C * dm``;
  SeparableConv ``P * (k * C * dm + C * dm * F)``. E.g. a Conv2D 3x3 from 16 to 32 channels on a
  14x14 output: ``196 * 3*3*16*32 = 903,168``.
* Conv*Transpose ``P_in * k * C * F`` (each input position scatters one kernel).
* EinsumDense: the product of the sizes of every index of its equation (each index combination is
  one multiply), from the input and kernel shapes.
* Recurrent layers, per time step times the steps ``T`` (the input's axis 1), with ``u`` units:
  LSTM ``4u(C + u)``, GRU ``3u(C + u)`` (both ``reset_after`` variants: the recurrent matmul of the
  candidate reads ``r * h`` instead of ``h``, the same size), SimpleRNN ``u(C + u)``; ConvLSTM
  ``P * k * 4F * (C + F)`` (input and recurrent convolutions over the step's output map).
  ``RNN(cell)`` counts its cell (or ``StackedRNNCells``) the same way. Bidirectional: both
  directions. TimeDistributed: the wrapped layer per step times ``T``.
* MultiHeadAttention / GroupQueryAttention: the query, key, value (and gate) projections, ``Q K^T``
  (``heads * T_q * T_v * key_dim``), ``scores @ V`` (``heads * T_q * T_v * value_dim``) and the
  output projection; GroupQueryAttention's key/value heads are repeated to the query heads first.
* Attention: ``T_q * T_v * d`` for dot scores (0 for ``score_mode="concat"``: a plain sum) plus
  ``T_q * T_v * d_v`` for ``scores @ V``; AdditiveAttention adds ``T_q * T_v * d`` for the
  ``scale``-weighted sum over ``tanh(q + k)`` when ``use_scale`` (it contracts ``d`` with a weight).
* Dot: the output size times the contracted dimension. ReversibleEmbedding called in reverse:
  ``P * output_dim * input_dim``. STFTSpectrogram: its framing convolutions; MelSpectrogram: the
  mel filter bank matmul (its FFT is not counted).
* SpectralNormalization: the wrapped layer.

Where the converted model's count (:func:`tflite_export.flatbuffer.summarize` of
:func:`tflite_export.to_tflite_int8`) legitimately differs:

* recurrent layers convert unrolled and start from a zero state, so the converter folds away the
  first step's products with that state: an LSTM has ``4u * u`` fewer MACs, a GRU ``3u * u`` (both
  ``reset_after`` variants), a SimpleRNN ``u * u``, each direction of a Bidirectional as much, and
  a ConvLSTM loses its first step's four recurrent convolutions and its forget gate's input
  convolution (``f * c`` with ``c = 0``);
* AdditiveAttention's weighted sum lowers to element-wise ``MUL`` and ``SUM``, which the
  flatbuffer count leaves out (``T_q * T_v * d`` fewer);
* GroupQueryAttention's repeated key/value heads reach ``BATCH_MATMUL`` with shapes computed at
  run time, whose static shapes in the flatbuffer are placeholders: only its projections
  (``FULLY_CONNECTED``) compare.

A layer class outside the table with weights (a custom layer, a wrapper of foreign code) warns and
counts 0; one without weights counts 0 (it has no weight product). A ``keras.ops`` call in a
Functional model (e.g. ``keras.ops.matmul``) counts 0. ``make_groups(weights="macs")`` weighs
channel groups, recurrent units and attention heads included, by these counts.

Parameters: every weight of every layer (trainable or not: BatchNorm's moving statistics count),
each layer once.

Example:
  >>> import keras
  >>> L = keras.layers
  >>> h = inp = keras.Input((28, 28, 1))                     # the anchor CNN of the design notes
  >>> for i, w in enumerate((16, 32, 64)):
  ...     h = L.ReLU()(L.BatchNormalization()(L.Conv2D(w, 3, padding="same")(h)))
  ...     h = L.MaxPooling2D()(h) if i < 2 else h
  >>> anchor = keras.Model(inp, L.Dense(10)(L.GlobalAveragePooling2D()(h)))
  >>> count_macs(anchor)["total"], count_params(anchor)["total"]
  (1919872, 24394)
  >>> x = keras.Input((10, 6))                               # 10 steps: 10 * 4*8*(6 + 8)
  >>> count_macs(keras.Model(x, L.LSTM(8, name="lstm")(x)))["lstm"]
  4480
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from keras_wgsef.graph.model_graph import Graph, flatten_model

__all__ = ["count_macs", "count_params", "layer_macs"]

Shape = tuple
#: ``macs(layer, input shapes, output shapes) -> int``, shapes with their batch axis
MacFn = Callable[[Any, Sequence[Shape], Sequence[Shape]], int]


def count_macs(model: Any) -> dict[str, int]:
    """MACs per layer path (layers with none included as 0) and ``"total"``.

    ``model`` is a Sequential or Functional model, or its :func:`flatten_model` graph.

    Example:
      >>> import keras
      >>> x = keras.Input((5, 8))
      >>> m = keras.Model(x, keras.layers.Dense(3, name="d")(x))
      >>> count_macs(m)                                      # 5 positions * 8 * 3
      {'d': 120, 'total': 120}
    """
    g = model if isinstance(model, Graph) else flatten_model(model)
    out: dict[str, int] = dict.fromkeys(g.layers, 0)
    for node in g.nodes:
        if node.inputs:
            ins = [g.shapes[i] for i in node.inputs]
            out[node.path] += layer_macs(node.layer, ins, [g.shapes[o] for o in node.outputs])
    out["total"] = sum(out.values())
    return out


def layer_macs(layer: Any, in_shapes: Sequence[Shape], out_shapes: Sequence[Shape]) -> int:
    """MACs of one call of ``layer`` on inputs of ``in_shapes`` giving ``out_shapes`` (batch axes included).

    ``in_shapes`` are the call's tensor inputs in order (``MultiHeadAttention(query, value)``:
    the query's shape, then the value's).

    Raises:
      ValueError: a shape the count needs has an unknown (``None``) non-batch dimension.

    Example:
      >>> import keras
      >>> layer_macs(keras.layers.Conv1D(4, 3), [(None, 10, 2)], [(None, 8, 4)])   # 8 * 3*2*4
      192
    """
    fn = _lookup(_table(), type(layer))
    if fn is not None:
        return int(fn(layer, in_shapes, out_shapes))
    if getattr(layer, "weights", None):
        warnings.warn(
            f"MACs of layer {layer.name!r} ({type(layer).__name__}) are unknown: it is no keras.layers class "
            "that the MAC table covers, so it counts 0 MACs. Build it from keras.layers (Dense, EinsumDense, "
            "Conv*) to have its MACs counted.",
            UserWarning,
            stacklevel=3,
        )
    return 0


def count_params(model: Any) -> dict[str, int]:
    """Parameters per layer path (each layer once) and ``"total"``."""
    g = flatten_model(model)
    out = {p: int(sum(int(np.prod(w.shape)) for w in layer.weights)) for p, layer in g.layers.items()}
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------------------------------------
# shapes


def _static(layer: Any, shape: Sequence[Any]) -> tuple[int, ...]:
    """``shape`` with batch 1; raises when another dimension is unknown."""
    dims = [1 if i == 0 and d is None else d for i, d in enumerate(shape)]
    if None in dims:
        raise ValueError(
            f"MACs of layer {layer.name!r} ({type(layer).__name__}): its shape {tuple(shape)} has an unknown "
            "dimension; build the model with static shapes (e.g. keras.Input((10, 6)) for 10 steps, "
            "EinsumDense(output_shape=(5, 8)), not (None, 8))."
        )
    return tuple(int(d) for d in dims)


def _channels_first(layer: Any) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_first"


def _split(layer: Any, shape: Sequence[Any]) -> tuple[int, int]:
    """(positions, channels) of a batch-first activation shape under the layer's data format."""
    s = _static(layer, shape)
    if _channels_first(layer):
        return math.prod(s[2:]), s[1]
    return math.prod(s[1:-1]), s[-1]


def _einsum(equation: str, shapes: Sequence[Sequence[int]]) -> tuple[int, tuple[int, ...]]:
    """(multiplies, output shape) of ``einsum(equation, *operands)``: the product of every index's size.

    Example:
      >>> _einsum("ab,bc->ac", [(2, 3), (3, 4)])
      (24, (2, 4))
    """
    lhs, rhs = equation.replace(" ", "").split("->")
    terms = lhs.split(",")
    ell_rank = max((len(s) - len(t) + 3 for t, s in zip(terms, shapes) if "..." in t), default=0)
    ell = "".join(chr(0x100 + i) for i in range(ell_rank))  # letters no equation uses
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        if "..." in term:
            term = term.replace("...", ell[ell_rank - (len(shape) - len(term) + 3) :])
        if len(term) != len(shape):
            raise ValueError(f"einsum {equation!r}: operand {term!r} does not match the shape {tuple(shape)}.")
        for c, d in zip(term, shape):
            sizes[c] = max(sizes.get(c, 1), int(d))  # a size-1 axis broadcasts
    return math.prod(sizes.values()), tuple(sizes[c] for c in rhs.replace("...", ell))


def _out_shapes(layer: Any, in_shape: Shape) -> list[Shape]:
    out = layer.compute_output_shape(in_shape)
    if out and isinstance(out[0], (list, tuple)):
        return [tuple(o) for o in out]
    return [tuple(out)]


# ---------------------------------------------------------------------------------------------
# per-class counts (each a MacFn)


def _zero(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    return 0


def _dense(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    s = _static(layer, ins[0])
    return math.prod(s[1:-1]) * s[-1] * int(layer.units)


def _conv(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    p_out, _ = _split(layer, outs[0])
    _, c = _split(layer, ins[0])
    return p_out * math.prod(layer.kernel_size) * (c // int(getattr(layer, "groups", 1))) * int(layer.filters)


def _conv_transpose(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    p_in, c = _split(layer, ins[0])
    return p_in * math.prod(layer.kernel_size) * c * int(layer.filters)


def _depthwise(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    p_out, _ = _split(layer, outs[0])
    _, c = _split(layer, ins[0])
    return p_out * math.prod(layer.kernel_size) * c * int(layer.depth_multiplier)


def _separable(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    p_out, _ = _split(layer, outs[0])
    _, c = _split(layer, ins[0])
    mid = c * int(layer.depth_multiplier)
    return p_out * (math.prod(layer.kernel_size) * mid + mid * int(layer.filters))


def _einsum_dense(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    return _einsum(layer.equation, [_static(layer, ins[0]), tuple(layer.kernel.shape)])[0]


def _rnn(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    """Recurrent layers (LSTM, GRU, SimpleRNN, ``RNN(cell)``): the cell's step MACs times the steps."""
    s = _static(layer, ins[0])
    macs, _ = _cell_step(layer, layer.cell, s[2:])
    return s[1] * macs


def _cell_step(layer: Any, cell: Any, feat: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(MACs of one step, the step's output feature shape) of ``cell`` on step inputs of shape ``feat``."""
    fn = _lookup(_cell_table(), type(cell))
    if fn is None:
        warnings.warn(
            f"MACs of layer {layer.name!r} ({type(layer).__name__}): its cell {type(cell).__name__} is not one "
            "whose MACs are known (LSTMCell, GRUCell, SimpleRNNCell, StackedRNNCells); it counts 0 MACs.",
            UserWarning,
            stacklevel=5,
        )
        return 0, feat
    return fn(layer, cell, feat)


def _gated_cell(gates: int) -> Callable[[Any, Any, tuple[int, ...]], tuple[int, tuple[int, ...]]]:
    def step(layer: Any, cell: Any, feat: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        u = int(cell.units)
        return gates * u * (feat[-1] + u), (u,)

    return step


def _stacked_cells(layer: Any, cell: Any, feat: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    total = 0
    for c in cell.cells:
        macs, feat = _cell_step(layer, c, feat)
        total += macs
    return total, feat


def _conv_lstm(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    """ConvLSTM1D/2D/3D: per step, the input and recurrent convolutions of the 4 gates over the output map."""
    s, cell = _static(layer, ins[0]), layer.cell
    first = cell.data_format == "channels_first"
    c, spatial = (s[2], s[3:]) if first else (s[-1], s[2:-1])
    out = 1
    for n, k, stride, d in zip(spatial, cell.kernel_size, cell.strides, cell.dilation_rate):
        out *= -(-n // stride) if cell.padding == "same" else -(-(n - (k - 1) * d) // stride)
    f = int(cell.filters)
    return s[1] * out * math.prod(cell.kernel_size) * 4 * f * (c + f)


def _bidirectional(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    return sum(layer_macs(d, ins, _out_shapes(d, ins[0])) for d in (layer.forward_layer, layer.backward_layer))


def _time_distributed(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    steps = _static(layer, ins[0])[1]
    inner_in = (ins[0][0], *ins[0][2:])
    return steps * layer_macs(layer.layer, [inner_in], [(o[0], *o[2:]) for o in outs])


def _wrapped(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    return layer_macs(layer.layer, ins, outs)


def _attention_inputs(layer: Any, ins: Sequence[Shape]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if len(ins) < 2:
        raise ValueError(
            f"MACs of layer {layer.name!r} ({type(layer).__name__}): expected its query and value as the first "
            f"two inputs, got {len(ins)} input(s); call it as layer(query, value)."
        )
    return _static(layer, ins[0]), _static(layer, ins[1])


def _multi_head(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    """MultiHeadAttention / GroupQueryAttention from their sublayers and einsum equations."""
    q, v = _attention_inputs(layer, ins)
    dense = {n: getattr(layer, f"_{n}_dense") for n in ("query", "key", "value", "output")}
    for name, shape in (("query", q), ("value", v)):
        if shape[-1] != int(dense[name].kernel.shape[0]):
            raise ValueError(
                f"MACs of layer {layer.name!r} ({type(layer).__name__}): input {shape} does not match its {name} "
                f"projection (kernel {tuple(dense[name].kernel.shape)}); call it as layer(query, value, key=...)."
            )
    k = (*v[:-1], int(dense["key"].kernel.shape[0]))  # key and value share all dims but the last
    (mq, qp), (mk, kp), (mv, vp) = (_projection(dense[n], s) for n, s in (("query", q), ("key", k), ("value", v)))
    gate = getattr(layer, "_gate_dense", None)
    macs = mq + mk + mv + (_projection(gate, q)[0] if gate is not None else 0)
    if hasattr(layer, "num_repeats"):  # GroupQueryAttention: key/value heads repeated to the query heads
        kp, vp = ((*s[:2], s[2] * int(layer.num_repeats), *s[3:]) for s in (kp, vp))
        dot, scores = _einsum(layer._dot_product_equation, [qp, kp])
    else:
        dot, scores = _einsum(layer._dot_product_equation, [kp, qp])
    combine, context = _einsum(layer._combine_equation, [scores, vp])
    return macs + dot + combine + _projection(dense["output"], context)[0]


def _projection(dense: Any, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(MACs, output shape before bias and activation) of an EinsumDense sublayer on ``shape``."""
    return _einsum(dense.equation, [shape, tuple(dense.kernel.shape)])


def _attention(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    q, v = _attention_inputs(layer, ins)
    scores = q[1] * v[1] * q[-1] if getattr(layer, "score_mode", "dot") == "dot" else 0
    return scores + q[1] * v[1] * v[-1]


def _additive_attention(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    q, v = _attention_inputs(layer, ins)
    return (q[1] * v[1] * q[-1] if layer.use_scale else 0) + q[1] * v[1] * v[-1]


def _dot(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    a = _static(layer, ins[0])
    axes = layer.axes if isinstance(layer.axes, (list, tuple)) else (layer.axes, layer.axes)
    return math.prod(_static(layer, outs[0])[1:]) * a[int(axes[0]) % len(a)]


def _reversible_embedding(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    if len(outs[0]) != len(ins[0]):  # the forward call is a lookup: (..., ) ids -> (..., output_dim)
        return 0
    s = _static(layer, ins[0])
    return math.prod(s[1:-1]) * int(layer.output_dim) * int(layer.input_dim)


def _stft(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    s = _static(layer, ins[0])
    (steps, channels) = (s[2], s[1]) if _channels_first(layer) else (s[1], s[2])
    frame, hop = int(layer.frame_length), int(layer._frame_step)
    frames = -(-steps // hop) if layer.padding == "same" else (steps - frame) // hop + 1
    kernels = 1 if layer.mode in ("real", "imag") else 2
    return kernels * channels * frames * frame * (int(layer._fft_length) // 2 + 1)


def _mel(layer: Any, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    out = _static(layer, outs[0]) if len(outs[0]) == 3 else _static(layer, (None, *outs[0]))
    return out[-1] * (int(layer.fft_length) // 2 + 1) * int(layer.num_mel_bins)


# ---------------------------------------------------------------------------------------------
# the table, keyed by layer class (a subclass takes its nearest listed base's count)
# (each entry a function of the layer and its shapes alone, so a channel rule can own it as its macs())

_TABLE: dict[type, MacFn] = {}
_CELLS: dict[type, Callable[[Any, Any, tuple[int, ...]], tuple[int, tuple[int, ...]]]] = {}


def _lookup(table: dict[type, Any], cls: type) -> Any:
    return next((table[c] for c in cls.__mro__ if c in table), None)


def _table() -> dict[type, MacFn]:
    if _TABLE:
        return _TABLE
    import keras

    L = keras.layers
    named: dict[str, MacFn] = {
        "Dense": _dense,
        "EinsumDense": _einsum_dense,
        **dict.fromkeys(("Conv1D", "Conv2D", "Conv3D"), _conv),
        **dict.fromkeys(("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"), _conv_transpose),
        **dict.fromkeys(("DepthwiseConv1D", "DepthwiseConv2D"), _depthwise),
        **dict.fromkeys(("SeparableConv1D", "SeparableConv2D"), _separable),
        "RNN": _rnn,  # LSTM, GRU, SimpleRNN derive from it
        **dict.fromkeys(("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"), _conv_lstm),
        "Bidirectional": _bidirectional,
        "TimeDistributed": _time_distributed,
        "SpectralNormalization": _wrapped,
        "MultiHeadAttention": _multi_head,
        "GroupQueryAttention": _multi_head,
        "Attention": _attention,
        "AdditiveAttention": _additive_attention,
        "Dot": _dot,
        "ReversibleEmbedding": _reversible_embedding,
        "STFTSpectrogram": _stft,
        "MelSpectrogram": _mel,
        # layers with weights and no contracting product
        **dict.fromkeys(
            (
                "Embedding",
                "BatchNormalization",
                "LayerNormalization",
                "GroupNormalization",
                "RMSNormalization",
                "Normalization",
                "PReLU",
            ),
            _zero,
        ),
    }
    _CELLS.update(
        {
            L.LSTMCell: _gated_cell(4),
            L.GRUCell: _gated_cell(3),
            L.SimpleRNNCell: _gated_cell(1),
            L.StackedRNNCells: _stacked_cells,
        }
    )
    _TABLE.update({getattr(L, n): fn for n, fn in named.items() if hasattr(L, n)})
    return _TABLE


def _cell_table() -> dict[type, Callable[[Any, Any, tuple[int, ...]], tuple[int, tuple[int, ...]]]]:
    _table()
    return _CELLS
