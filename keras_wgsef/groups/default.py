"""Output-channel groups inferred from variable paths alone (the optimizer's default).

When ``WGSEF`` gets no ``groups`` it only sees the trainable variables, so it groups what the
paths make unambiguous: per layer (the path without its last component), the output channels of
``kernel`` (Dense, Conv*: last axis) or of ``pointwise_kernel`` (SeparableConv: last axis), each
coupled with the layer's ``bias``. A kernel whose last axis has length 1 is skipped: one group
cannot be made sparse per layer, and it is usually a DepthwiseConv (whose Keras 3 ``kernel`` is
``(*spatial, channels, multiplier)`` and whose channels belong to the layer before it). The last
layer with a kernel (the classifier head: its channels are the classes) is left out unless
``include`` names it (the model is not known here, so this is the one place where the head is
found by position rather than by :func:`keras_wgsef.graph.model_graph.head_layers`).

Names follow :func:`keras_wgsef.make_groups` (the layer's path in the model): Keras prefixes the
variables of a Sequential model with the model's name (``"sequential/a/kernel"``), so a first
path component shared by every variable is dropped (``"a"``, member ``"a/kernel"``).

What paths cannot tell (a following BatchNorm, residual partners, concatenations) needs the
model: build the groups with :func:`keras_wgsef.make_groups` so a zeroed filter really emits
zero and the exporter can remove it.

Example:
  >>> import keras
  >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"), keras.layers.Dense(2, name="b")])
  >>> [s.name for s in groups_from_paths(m.trainable_variables)]
  ['a']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_wgsef.groups.scope import GroupScope, Member

__all__ = ["groups_from_paths"]

_OUTPUT_KERNELS = ("kernel", "pointwise_kernel")


def _layer_and_name(path: str) -> tuple[str, str]:
    layer, _, name = path.rpartition("/")
    return layer, name


def groups_from_paths(variables: Sequence, include: str | None = None, exclude: str | None = None) -> list[GroupScope]:
    """One output-channel scope per layer that owns a kernel, from ``variable.path`` only.

    Args:
      variables: trainable variables (with ``.path`` and ``.shape``).
      include: regex on member paths (``"layer/weight"``); when given, only layers with a matching kernel are taken
        (the head too, if it matches).
      exclude: regex on member paths; layers with a matching kernel are skipped.

    Returns:
      One :class:`GroupScope` per selected layer, named by the layer path.
    """
    paths = [v.path for v in variables]
    first = {p.split("/", 1)[0] for p in paths}
    strip = len(first) == 1 and all(p.count("/") >= 2 for p in paths)  # the Sequential model's own name
    by_layer: dict[str, dict[str, Any]] = {}
    for v, full in zip(variables, paths):
        layer, name = _layer_and_name(full.split("/", 1)[1] if strip else full)
        by_layer.setdefault(layer, {})[name] = v
    candidates: list[tuple[str, Member]] = []
    for layer, vs in by_layer.items():
        kernel_name = next((n for n in _OUTPUT_KERNELS if n in vs), None)
        if kernel_name is not None:
            kernel = vs[kernel_name]
            member = Member(f"{layer}/{kernel_name}", -1, np.arange(int(kernel.shape[-1])), kernel)
            candidates.append((layer, member))
    if include is None and candidates:
        candidates = candidates[:-1]  # the classifier head
    candidates = [(layer, member) for layer, member in candidates if member.index.size > 1]
    scopes = []
    for layer, member in candidates:
        if include is not None and not re.search(include, member.path):
            continue
        if exclude is not None and re.search(exclude, member.path):
            continue
        members = [member]
        width = int(member.index.max()) + 1
        bias = by_layer[layer].get("bias")
        if bias is not None and tuple(bias.shape) == (width,):
            members.append(Member(f"{layer}/bias", 0, np.arange(width), bias))
        scopes.append(GroupScope(layer, tuple(members), width, labels=tuple(f"{layer}:{c}" for c in range(width))))
    return scopes
