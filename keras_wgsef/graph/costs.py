"""Multiply-accumulate (MAC) and parameter counts of Keras models, per layer and in total.

MACs of one inference with batch 1, counted per layer call (a shared layer sums its calls):

* Dense, Conv1D/2D/3D, DepthwiseConv, SeparableConv: ``P_out * sum(kernel sizes)`` where ``P_out``
  is the number of output positions (the product of the output's non-batch, non-channel dims;
  1 for a Dense on a vector). E.g. a Conv2D 3x3 from 16 to 32 channels on a 14x14 output:
  ``196 * 3*3*16*32 = 903,168``. SeparableConv: ``P_out * (kh*kw*C_in*dm + C_in*dm*C_out)``.
* Conv*Transpose: ``P_in * kernel size`` (each input position scatters one kernel).
* Bias additions, BatchNormalization (folded into the convolution by the TFLite converter),
  activations, pooling, merges, reshapes: 0.

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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_wgsef.graph.model_graph import Graph, flatten_model, layer_variables

__all__ = ["count_macs", "count_params", "layer_macs"]

_KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


def layer_macs(layer: Any, in_shape: tuple, out_shape: tuple) -> int:
    """MACs of one call of ``layer`` mapping ``in_shape`` to ``out_shape`` (batch axis included)."""
    import keras

    v = layer_variables(layer)
    kernels = [v[n] for n in _KERNELS if n in v]
    if not kernels or not isinstance(
        layer,
        (
            keras.layers.Dense,
            keras.layers.Conv1D,
            keras.layers.Conv2D,
            keras.layers.Conv3D,
            keras.layers.DepthwiseConv1D,
            keras.layers.DepthwiseConv2D,
            keras.layers.SeparableConv1D,
            keras.layers.SeparableConv2D,
            keras.layers.Conv1DTranspose,
            keras.layers.Conv2DTranspose,
            keras.layers.Conv3DTranspose,
        ),
    ):
        return 0
    transposed = isinstance(
        layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    )
    shape = in_shape if transposed else out_shape
    if None in tuple(shape[1:-1]):
        raise ValueError(
            f"MACs of layer {layer.name!r} ({type(layer).__name__}): its shape {tuple(shape)} has an unknown "
            "dimension; build the model with static shapes (e.g. EinsumDense(output_shape=(5, 8)), not (None, 8))."
        )
    positions = int(np.prod([int(s) for s in shape[1:-1]])) if len(shape) > 2 else 1
    return positions * sum(int(np.prod(k.shape)) for k in kernels)


def count_macs(model: Any) -> dict[str, int]:
    """MACs per layer path (layers with none included as 0) and ``"total"``.

    ``model`` is a Sequential or Functional model, or its :func:`flatten_model` graph.
    """
    g = model if isinstance(model, Graph) else flatten_model(model)
    out: dict[str, int] = dict.fromkeys(g.layers, 0)
    for node in g.nodes:
        if node.inputs:
            out[node.path] += layer_macs(node.layer, g.shapes[node.inputs[0]], g.shapes[node.outputs[0]])
    out["total"] = sum(out.values())
    return out


def count_params(model: Any) -> dict[str, int]:
    """Parameters per layer path (each layer once) and ``"total"``."""
    g = flatten_model(model)
    out = {p: int(sum(int(np.prod(w.shape)) for w in layer.weights)) for p, layer in g.layers.items()}
    out["total"] = sum(out.values())
    return out
