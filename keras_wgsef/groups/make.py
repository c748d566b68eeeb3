"""Built-in group definitions for a model's layers: :func:`make_groups`.

Kinds (``n`` output channels, ``c`` input channels, kernel ``(*spatial, c, n)``):

================  =============================================================  ==========
kind              one group is                                                   removable
================  =============================================================  ==========
output_channel    a filter: its kernel slice, bias, the following BatchNorm's    yes
                  gamma/beta, depthwise slices that carry it, residual and
                  concatenation partners (dependency-aware, see channel_groups)
block             ``block`` consecutive output channels (SIMD-friendly widths)   yes
input_channel     one input channel's slice of the kernel (all filters)          yes [#]_
filter_shape      one kernel position ``(*spatial, c)`` across all filters       borders [#]_
layer             every kernel and bias of a layer (use with ``envelope="model"``)  some [#]_
unstructured      a single weight                                                no
================  =============================================================  ==========

.. [#] when every layer that reads the channel ignores it (``tflite_export.shrink`` then removes
   the input slices and the producer's output channel); not the model's input channels.
.. [#] whole border rows and columns of positions: ``tflite_export.kernels`` cuts them off (a
   smaller kernel, the padding rewritten); interior positions stay in a dense kernel.
.. [#] a layer alone in a residual branch (``Add(x, branch)``): at zero the branch goes, branch
   and all (``tflite_export.branches``); in a plain chain a zero layer would cut the network, and a
   warning names those layers (:func:`removable_layers`).

Weights ``d_j``: ``"size"`` (group size, the default: ``k = 1`` is then the squared group
lasso), ``"uniform"`` (1), ``"macs"`` (group size times relative cost,
``d_j = |G_j| * M_j / mean(M)`` with ``M_j`` the multiply-accumulates removed with the group, so
costly groups are cheaper to drop: groups are ranked by ``RMS(x_j) / sqrt(M_j / mean(M))``;
channel kinds only), or a callable ``weights(scope, model) -> d`` (length ``scope.num_groups``,
every entry > 0), called the same way for every kind.

Why not ``d_j = M_j`` itself: raw MACs differ from group sizes by the layer's output resolution
(784 positions for a first 28x28 conv, 49 for a 7x7 one), which ranks early channels ~10x lower
than late ones whatever they learned. Measured on the benchmark models, a global budget with raw
MAC weights emptied the first layers (accuracy at chance on 2 of 3 seeds); group size times
relative cost keeps the default ranking when all costs are equal. Pass a callable for raw MACs.

Naming: every scope is named after the layer's path in the model (``flatten_model``: nested
models included, the top model's own name left out, e.g. ``"conv2d"`` or ``"block/conv"``;
channel scopes coupled across layers join their producers with ``"+"``), and every member after
that path and the weight's path inside the layer (``"conv2d/kernel"``, ``"lstm/lstm_cell/kernel"``,
``"td/dense/kernel"``: :func:`keras_wgsef.graph.model_graph.weight_paths`): for a top-level
Functional model these are the ``variable.path`` s, and they survive save and load. The head (a
layer whose kernel makes a model output, :func:`keras_wgsef.graph.model_graph.head_layers`) is
left out of every kind unless ``exclude_outputs=False``.

Example:
  >>> import keras
  >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"), keras.layers.Flatten(),
  ...                       keras.layers.Dense(2, name="head")])
  >>> [(s.name, s.num_groups) for s in make_groups(m, "filter_shape")]
  [('c', 27)]
  >>> [(s.name, s.num_groups, s.paths) for s in make_groups(m)]
  [('c', 4, ('c/kernel', 'c/bias'))]
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from keras_wgsef.graph.channels import analyze, droppable_inputs, dropped_layers, weight_values
from keras_wgsef.graph.model_graph import Graph, flatten_model, head_layers, layer_variables, member_names, weight_paths
from keras_wgsef.graph.rules import UnsupportedLayerError
from keras_wgsef.groups.channel_groups import channel_scopes, mac_weights
from keras_wgsef.groups.scope import GroupScope, Member

__all__ = ["KINDS", "Weights", "make_groups", "removable_layers"]

KINDS = ("output_channel", "block", "input_channel", "filter_shape", "layer", "unstructured")

#: ``"size"``, ``"uniform"``, ``"macs"`` or ``weights(scope, model) -> d``
Weights = str | Callable[[GroupScope, Any], Any]

_KERNEL_CLASSES = (
    "Dense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
)
_DEPTHWISE = ("DepthwiseConv1D", "DepthwiseConv2D")
_SEPARABLE = ("SeparableConv1D", "SeparableConv2D")


def _is(layer: Any, names: tuple[str, ...]) -> bool:
    import keras

    return isinstance(layer, tuple(getattr(keras.layers, n) for n in names))


def _kernel_members(path: str, layer: Any, kind: str) -> list[Member]:
    """Members of one layer for the non-channel kinds (input channel, filter shape, unstructured)."""
    members = []
    depthwise_layer = _is(layer, _DEPTHWISE)
    member = member_names(path, layer)
    for name, var in layer_variables(layer).items():
        if not name.endswith("kernel") or not var.trainable:
            continue
        member_path = member[name]
        shape = tuple(int(s) for s in var.shape)
        if kind == "unstructured":
            members.append(Member(member_path, None, np.arange(int(np.prod(shape))).reshape(shape)))
        elif kind == "input_channel":
            # Dense (c, n): axis 0; Conv (*sp, c, n) and depthwise (*sp, c, q): axis -2.
            ax = 0 if len(shape) == 2 else len(shape) - 2
            members.append(Member(member_path, ax, np.arange(shape[ax])))
        elif kind == "filter_shape":
            if name == "depthwise_kernel" or depthwise_layer:  # a kernel position across channels
                pos = np.arange(int(np.prod(shape[:-2]))).reshape((*shape[:-2], 1, 1))
            elif name == "pointwise_kernel":
                continue  # 1x1: its only position is the whole filter, grouped through the depthwise part
            else:
                pos = np.arange(int(np.prod(shape[:-1]))).reshape((*shape[:-1], 1))
            members.append(Member(member_path, None, np.broadcast_to(pos, shape).copy()))
    if kind == "input_channel" and _is(layer, _SEPARABLE):
        # input channel c owns depthwise[..., c, :] and pointwise rows c*q .. c*q+q-1
        dw, pw = members
        q = int(layer.depth_multiplier)
        members = [dw, Member(pw.path, pw.axis, np.repeat(np.arange(dw.index.size), q))]
    return members


def _layer_scopes(g: Graph, kind: str, include: str | None, exclude: str | None, heads: set[str]) -> list[GroupScope]:
    """One scope per layer with a kernel (not a head), for the non-channel kinds."""
    scopes: list[GroupScope] = []
    for path, layer in g.layers.items():
        if not _is(layer, _KERNEL_CLASSES) or path in heads:
            continue
        if include is not None and not re.search(include, path):
            continue
        if exclude is not None and re.search(exclude, path):
            continue
        if kind == "layer":
            member = member_names(path, layer)
            members = tuple(
                Member(member[name], None, np.zeros(tuple(v.shape), np.int64))
                for name, v in layer_variables(layer).items()
                if v.trainable
            )
            scopes.append(GroupScope(path, members, 1, labels=(path,)))
        else:
            scopes.append(GroupScope(path, tuple(_kernel_members(path, layer, kind))))
    return scopes


def _warn_unremovable_layers(g: Graph, scopes: list[GroupScope]) -> None:
    import warnings

    try:
        removable, fixed = removable_layers(g, scopes)
    except UnsupportedLayerError as e:
        warnings.warn(f"make_groups('layer'): cannot tell which layers are removable: {e}", UserWarning, stacklevel=3)
        return
    if fixed:
        warnings.warn(
            f"make_groups('layer'): {len(fixed)} of {len(scopes)} layers cannot be removed when zero (they are not "
            f"alone in a residual branch, so a zero layer would cut the network): {fixed}. Removable: {removable}.",
            UserWarning,
            stacklevel=3,
        )


def removable_layers(g: Graph, scopes: list[GroupScope]) -> tuple[list[str], list[str]]:
    """``(removable, not_removable)`` layer scopes: zeroing a removable one silences a residual branch.

    ``Add(x, 0) = x``: a layer whose zero weights make a whole ``Add`` input zero goes with its
    branch (``tflite_export.shrink``); in a plain chain a zero layer would cut the network instead
    (its output is zero, or a constant from the next bias), so it cannot be removed.
    """
    a = analyze(g)
    values = weight_values(a)
    removable: list[str] = []
    fixed: list[str] = []
    for s in scopes:
        gone = dropped_layers(a, droppable_inputs(a, s.paths, values))
        (removable if s.name in gone else fixed).append(s.name)
    return removable, fixed


def make_groups(
    model: Any,
    kind: str = "output_channel",
    *,
    block: int = 1,
    weights: Weights = "size",
    include: str | None = None,
    exclude: str | None = None,
    exclude_outputs: bool = True,
) -> list[GroupScope]:
    """Builds the WGSEF scopes of ``model`` for one kind of group.

    Args:
      model: a built Sequential or Functional Keras model.
      kind: one of :data:`KINDS`.
      block: channels per group for ``kind="block"`` (e.g. 4 or 8).
      weights: ``"size"``, ``"uniform"``, ``"macs"`` (channel kinds) or a callable
        ``weights(scope, model) -> d`` (see the module docstring).
      include / exclude: regexes on layer paths.
      exclude_outputs: leave out the head (layers whose kernel makes a model output: their
        channels are the classes).

    Returns:
      the scopes, ready for ``WGSEF(..., groups=...)``; each validates against the model's weights.
      Channel scopes of a single group are left out (k keeps at least one group of a scope).

    Raises:
      ValueError: an unknown kind or weights, or nothing to group.
      keras_wgsef.UnsupportedLayerError: (channel kinds) a layer without a channel rule.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown group kind {kind!r}; choose one of {KINDS}.")
    if not (callable(weights) or weights in ("size", "uniform", "macs")):
        raise ValueError(
            f"weights must be 'size', 'uniform', 'macs' or a callable (scope, model) -> d, got {weights!r}."
        )
    if int(block) < 1 or (int(block) != 1 and kind != "block"):
        raise ValueError(f"block={block} applies to kind='block' only and must be >= 1 (got kind={kind!r}).")
    g = flatten_model(model)
    heads = head_layers(g) if exclude_outputs else set()
    if kind in ("output_channel", "block"):
        scopes, analysis = channel_scopes(
            g, include=include, exclude=exclude, heads=heads, block=block if kind == "block" else 1
        )
        # one group (a layer of one channel, an attention layer with one key/value head) can never be
        # sparse: k must keep at least one group of every scope (1 <= k <= m - 1)
        scopes = [s for s in scopes if s.num_groups > 1]
        if weights == "macs":
            scopes = mac_weights(scopes, analysis)
    else:
        if weights == "macs":
            raise ValueError("weights='macs' is defined for channel groups (kind='output_channel' or 'block').")
        scopes = _layer_scopes(g, kind, include, exclude, heads)
        if kind == "layer" and scopes:
            _warn_unremovable_layers(g, scopes)
    if not scopes:
        raise ValueError(
            f"make_groups({kind!r}) found nothing to group in {model.name!r} "
            f"(include={include!r}, exclude={exclude!r}, head excluded: {exclude_outputs})."
        )
    variables = weight_paths(g)
    shapes = {p: tuple(w.shape) for p, w in variables.items()}
    for s in scopes:
        s.validate(shapes)
    scopes = [s.bind(variables) for s in scopes]  # each member holds its variable: no path matching needed
    if weights == "uniform":
        scopes = [s.replace(weights=np.ones(s.num_groups)) for s in scopes]
    elif callable(weights):
        scopes = [s.replace(weights=np.asarray(weights(s, model), dtype=np.float64).reshape(-1)) for s in scopes]
    return scopes
