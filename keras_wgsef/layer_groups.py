"""Built-in group definitions for a model's layers: :func:`make_groups`.

Kinds (``n`` output channels, ``c`` input channels, kernel ``(*spatial, c, n)``):

================  =============================================================  ==========
kind              one group is                                                   removable
================  =============================================================  ==========
output_channel    a filter: its kernel slice, bias, the following BatchNorm's    yes
                  gamma/beta, depthwise slices that carry it, residual and
                  concatenation partners (dependency-aware, see channel_graph)
block             ``block`` consecutive output channels (SIMD-friendly widths)   yes
input_channel     one input channel's slice of the kernel (all filters)          no [#]_
filter_shape      one kernel position ``(*spatial, c)`` across all filters       no
layer             every kernel and bias of a layer (use with ``scope="model"``)  yes
unstructured      a single weight                                                no
================  =============================================================  ==========

.. [#] input-channel sparsity can be removed by the producer of that channel; the exporter
   removes output channels only.

Weights ``d_j``: ``"size"`` (group size, the default: ``k = 1`` is then the squared group
lasso), ``"uniform"`` (1), ``"macs"`` (group size times relative cost,
``d_j = |G_j| * M_j / mean(M)`` with ``M_j`` the multiply-accumulates removed with the group, so
costly groups are cheaper to drop: groups are ranked by ``RMS(x_j) / sqrt(M_j / mean(M))``), or a
callable ``(layer, scope) -> array``.

Why not ``d_j = M_j`` itself: raw MACs differ from group sizes by the layer's output resolution
(784 positions for a first 28x28 conv, 49 for a 7x7 one), which ranks early channels ~10x lower
than late ones whatever they learned. Measured on the benchmark models, a global budget with raw
MAC weights emptied the first layers (accuracy at chance on 2 of 3 seeds); group size times
relative cost keeps the default ranking when all costs are equal. Pass a callable for raw MACs.

Example:
  >>> import keras
  >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"), keras.layers.Flatten(), keras.layers.Dense(2)])
  >>> [(s.name, s.num_groups) for s in make_groups(m, "filter_shape")]
  [('sequential/c', 27)]
"""

from __future__ import annotations

import re
from collections.abc import Callable

import keras
import numpy as np

from keras_wgsef.groups import GroupScope, Member

__all__ = ["make_groups", "KINDS"]

KINDS = ("output_channel", "block", "input_channel", "filter_shape", "layer", "unstructured")

_KERNEL_LAYERS = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
)


def _walk(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _walk(layer)
        else:
            yield layer


def _output_layers(model: keras.Model) -> set[int]:
    """ids of layers whose output is a model output (classifier heads)."""
    out = set()
    for t in model.outputs:
        hist = getattr(t, "_keras_history", None)
        if hist is not None:
            out.add(id(hist[0]))
    return out


_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


def _kernel_members(layer: keras.layers.Layer, kind: str) -> list[Member]:
    """Members of one layer for the non-channel kinds (input channel, filter shape, unstructured)."""
    members = []
    depthwise_layer = isinstance(layer, _DEPTHWISE)
    for var in layer.trainable_weights:
        name = var.path.rsplit("/", 1)[-1]
        if not name.endswith("kernel"):
            continue
        shape = tuple(int(s) for s in var.shape)
        if kind == "unstructured":
            members.append(Member(var.path, None, np.arange(int(np.prod(shape))).reshape(shape)))
        elif kind == "input_channel":
            # Dense (c, n): axis 0; Conv (*sp, c, n) and depthwise (*sp, c, q): axis -2.
            ax = 0 if len(shape) == 2 else len(shape) - 2
            members.append(Member(var.path, ax, np.arange(shape[ax])))
        elif kind == "filter_shape":
            if name == "depthwise_kernel" or depthwise_layer:  # a kernel position across channels
                pos = np.arange(int(np.prod(shape[:-2]))).reshape(shape[:-2] + (1, 1))
            elif name == "pointwise_kernel":
                continue  # 1x1: its only position is the whole filter, grouped through the depthwise part
            else:
                pos = np.arange(int(np.prod(shape[:-1]))).reshape(shape[:-1] + (1,))
            members.append(Member(var.path, None, np.broadcast_to(pos, shape).copy()))
    if kind == "input_channel" and isinstance(layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
        # input channel c owns depthwise[..., c, :] and pointwise rows c*q .. c*q+q-1
        dw, pw = members
        q = int(layer.depth_multiplier)
        members = [dw, Member(pw.path, pw.axis, np.repeat(np.arange(dw.index.size), q))]
    return members


def make_groups(
    model: keras.Model,
    kind: str = "output_channel",
    *,
    block: int = 1,
    weights: str | Callable = "size",
    include: str | None = None,
    exclude: str | None = None,
    exclude_outputs: bool = True,
) -> list[GroupScope]:
    """Builds the WGSEF scopes of ``model`` for one kind of group (one scope per layer).

    Args:
      model: a built Sequential or Functional Keras model.
      kind: one of :data:`KINDS`.
      block: channels per group for ``kind="block"`` (e.g. 4 or 8).
      weights: ``"size"``, ``"uniform"``, ``"macs"`` or a callable ``(layer, scope) -> d``.
      include / exclude: regexes on layer paths.
      exclude_outputs: leave out layers that produce a model output (their channels are the
        classes).

    Returns:
      the scopes, ready for ``WGSEF(..., groups=...)``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown group kind {kind!r}; choose one of {KINDS}.")
    if kind in ("output_channel", "block"):
        from keras_wgsef.channel_graph import channel_groups

        return channel_groups(
            model,
            include=include,
            exclude=exclude,
            exclude_outputs=exclude_outputs,
            block=block if kind == "block" else 1,
            weights=weights,
        )
    if weights == "macs":
        raise ValueError("weights='macs' is defined for channel groups (kind='output_channel' or 'block').")
    heads = _output_layers(model) if exclude_outputs else set()
    scopes: list[GroupScope] = []
    for layer in _walk(model):
        if not isinstance(layer, _KERNEL_LAYERS) or id(layer) in heads:
            continue
        if include is not None and not re.search(include, layer.path):
            continue
        if exclude is not None and re.search(exclude, layer.path):
            continue
        if kind == "layer":
            members = tuple(Member(v.path, None, np.zeros(tuple(v.shape), np.int64)) for v in layer.trainable_weights)
            scope = GroupScope(layer.path, members, 1, labels=(layer.path,))
        else:
            scope = GroupScope(layer.path, tuple(_kernel_members(layer, kind)))
        if weights == "uniform":
            scope = scope.replace(weights=np.ones(scope.num_groups))
        elif callable(weights):
            scope = scope.replace(weights=np.asarray(weights(layer, scope), dtype=np.float64))
        elif weights != "size":
            raise ValueError(f"weights must be 'size', 'uniform', 'macs' or a callable, got {weights!r}.")
        scopes.append(scope)
    if not scopes:
        raise ValueError(
            f"make_groups({kind!r}) found no layer with a kernel to group in {model.name!r} "
            f"(include={include!r}, exclude={exclude!r}, heads excluded: {exclude_outputs})."
        )
    return scopes
