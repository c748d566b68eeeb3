"""Pass ``trim_kernel_borders``: zero border rows and columns of a kernel become a smaller kernel.

A WGSEF ``filter_shape`` group is one kernel position across every filter. When a whole border
row (or column) of positions is zero, the convolution equals a convolution with the smaller
kernel on a shifted input: the layer becomes ``padding="valid"`` with the kernel
``k[t:kh-b, l:kw-r]``, after an explicit ``ZeroPadding`` / ``Cropping`` that reproduces the
original padding minus the removed border:

* ``valid``: crop ``(t, b)`` rows and ``(l, r)`` columns of the input;
* ``same`` (TensorFlow's split: ``pad_total = max((ceil(H/s) - 1) * s + kh - H, 0)``, the smaller
  half first): the net padding ``(pad_before - t, pad_after - b)`` per axis, positive parts as
  ``ZeroPadding``, negative parts as ``Cropping``.

A symmetric border under ``same`` padding needs no extra layer (``same`` with the smaller kernel
pads exactly what is left); otherwise the kernel is trimmed only when the int8 weights it saves
outweigh the bytes of the ``PAD``/``STRIDED_SLICE`` operator the padding layer becomes
(:data:`EXTRA_OPERATOR_BYTES`), and the report says which kernels stayed and why.

The outputs are identical (checked). Interior zero taps (a zero position with nonzero positions on
both sides) cannot be removed in a dense TFLite kernel: the pass notes them. The
MACs of the layer fall by the removed fraction; a ``PAD`` operator may appear in the ``.tflite``
(with ``same`` padding on one side only), which costs a copy of the input: the report says which
layers got one. Spatial convolutions with unit dilation (``Conv1D/2D/3D``, ``DepthwiseConv1D/2D``)
are trimmed; transposed and dilated ones are left alone.

Example (``model`` the doctest CNN: its kernels have no zero border):
  >>> from tflite_export.passes import Context, GraphView
  >>> TrimKernelBorders().plan(GraphView(model), Context())
  ({}, [])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from keras_wgsef.graph.model_graph import layer_variables, weight_names
from tflite_export.passes.base import Context, GraphView, Pass, PassResult
from tflite_export.passes.config import insert_before, is_functional, layer_entry, model_configs, unique_name
from tflite_export.passes.rebuild import rebuild

__all__ = ["EXTRA_OPERATOR_BYTES", "TrimKernelBorders", "zero_borders"]

#: what one added ``PAD`` (or ``STRIDED_SLICE``) operator costs in the ``.tflite``, measured: a PAD
#: with its paddings constant and its output tensor added 992 bytes to a 3 KB int8 model
EXTRA_OPERATOR_BYTES = 1024


def zero_borders(kernel: np.ndarray, rank: int) -> list[tuple[int, int]]:
    """Per spatial axis, ``(before, after)``: how many leading and trailing positions are all zero.

    A kernel that is zero everywhere gives ``(0, 0)`` everywhere (that is channel sparsity, not a
    smaller kernel).

    Example:
      >>> k = np.zeros((3, 3, 1, 1)); k[1:, 1, 0, 0] = 1.0
      >>> zero_borders(k, 2)
      [(1, 0), (1, 1)]
    """
    if not np.any(kernel):
        return [(0, 0)] * rank
    out = []
    for axis in range(rank):
        alive = np.flatnonzero(np.any(np.moveaxis(kernel, axis, 0).reshape(kernel.shape[axis], -1) != 0, axis=1))
        out.append((int(alive[0]), int(kernel.shape[axis] - 1 - alive[-1])))
    return out


def _interior_zeros(kernel: np.ndarray, rank: int, borders: list[tuple[int, int]]) -> int:
    inner = kernel[tuple(slice(b, kernel.shape[i] - a) for i, (b, a) in enumerate(borders))]
    positions = inner.reshape(*inner.shape[:rank], -1)
    return int(np.sum(~np.any(positions != 0, axis=-1)))


def _same_padding(size: int, k: int, s: int) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _spatial_conv(layer: Any, in_shape: tuple) -> tuple[str, int] | None:
    """``(kernel weight name, rank)`` of a trimmable convolution, else None."""
    cfg = layer.get_config()
    v = layer_variables(layer)
    name = "depthwise_kernel" if "depthwise_kernel" in v and "pointwise_kernel" not in v else "kernel"
    if "kernel_size" not in cfg or "output_padding" in cfg or name not in v or "pointwise_kernel" in v:
        return None
    rank = len(cfg["kernel_size"])
    if (
        cfg.get("data_format", "channels_last") not in (None, "channels_last")
        or any(int(d) != 1 for d in np.atleast_1d(cfg.get("dilation_rate", 1)))
        or cfg.get("padding") not in ("valid", "same")
        or len(in_shape) != rank + 2
        or any(d is None for d in in_shape[1:-1])
    ):
        return None
    return name, rank


def _plan(g: Any) -> tuple[dict[str, dict], list[str]]:
    """Per trimmed layer path its new kernel and padding, and a line per layer trimmed or kept."""
    import keras

    plans, notes = {}, []
    calls: dict[str, int] = {}
    for node in g.nodes:
        calls[node.path] = calls.get(node.path, 0) + 1
    for node in g.nodes:
        in_shape = tuple(g.shapes[node.inputs[0]]) if node.inputs else ()
        conv = _spatial_conv(node.layer, in_shape)
        if conv is None or calls[node.path] != 1:
            continue
        name, rank = conv
        kernel = np.asarray(keras.ops.convert_to_numpy(layer_variables(node.layer)[name]))
        borders = zero_borders(kernel, rank)
        interior = _interior_zeros(kernel, rank, borders)
        if interior:
            notes.append(
                f"{node.path}: {interior} interior zero kernel positions stay (a dense TFLite kernel cannot skip them)"
            )
        if not any(b or a for b, a in borders):
            continue
        cfg = node.layer.get_config()
        strides = [int(s) for s in np.broadcast_to(np.atleast_1d(cfg["strides"]), (rank,))]
        pad, crop = [], []
        for axis, (before, after) in enumerate(borders):
            k = kernel.shape[axis]
            pb, pa = (0, 0) if cfg["padding"] == "valid" else _same_padding(int(in_shape[1 + axis]), k, strides[axis])
            nb, na = pb - before, pa - after
            pad.append((max(nb, 0), max(na, 0)))
            crop.append((max(-nb, 0), max(-na, 0)))
        new_size = [kernel.shape[i] - b - a for i, (b, a) in enumerate(borders)]
        old_size = "x".join(map(str, kernel.shape[:rank]))
        # 'same' with the smaller kernel pads exactly the rest when the border is symmetric: no extra layer
        symmetric = cfg["padding"] == "same" and all(b == a for b, a in borders) and not any(x for c in crop for x in c)
        layers_needed = 0 if symmetric else sum(any(x for p in v for x in p) for v in (pad, crop))
        saved = (int(np.prod(kernel.shape[:rank])) - int(np.prod(new_size))) * int(np.prod(kernel.shape[rank:]))
        if layers_needed and saved < layers_needed * EXTRA_OPERATOR_BYTES:
            notes.append(
                f"{node.path}: kernel {old_size} kept: its zero border saves {saved} int8 weights, less than "
                f"the ~{layers_needed * EXTRA_OPERATOR_BYTES} bytes of the PAD/STRIDED_SLICE operator a smaller "
                "kernel needs"
            )
            continue
        plans[node.path] = {
            "name": name,
            "rank": rank,
            "borders": borders,
            "pad": [(0, 0)] * rank if symmetric else pad,
            "crop": [(0, 0)] * rank if symmetric else crop,
            "size": new_size,
            "padding": "same" if symmetric else "valid",
        }
        extra = [f"{w} {v}" for w, v in (("ZeroPadding", pad), ("Cropping", crop)) if any(x for p in v for x in p)]
        notes.append(
            f"{node.path}: kernel {old_size} -> {'x'.join(map(str, new_size))}, padding "
            + ("same" if symmetric else f"valid{' after ' + ' and '.join(extra) if extra else ''}")
        )
    return plans, notes


def _edit(config: dict, plans: dict[str, dict]) -> None:
    """Inserts the padding/cropping layers before each trimmed convolution and edits its config."""
    import keras

    for cfg, prefix in model_configs(config):
        taken = {lc["config"]["name"] for lc in cfg["layers"]}
        for lc in list(cfg["layers"]):
            conf = lc["config"]
            plan = plans.get(prefix + conf.get("name", ""))
            if "layers" in conf or plan is None:
                continue
            conf["kernel_size"] = list(plan["size"])
            conf["padding"] = plan["padding"]
            entries, shapes = [], []
            shape = list(lc["inbound_nodes"][0]["args"][0]["config"]["shape"]) if is_functional(cfg) else []
            for kind, amounts in (("ZeroPadding", plan["pad"]), ("Cropping", plan["crop"])):
                if not any(x for p in amounts for x in p):
                    continue
                arg = amounts[0] if plan["rank"] == 1 else tuple(tuple(p) for p in amounts)
                name = unique_name(f"{conf['name']}_{'pad' if kind == 'ZeroPadding' else 'crop'}", taken)
                entries.append(layer_entry(getattr(keras.layers, f"{kind}{plan['rank']}D")(arg, name=name), lc))
                sign = 1 if kind == "ZeroPadding" else -1
                if shape:
                    shape = [shape[0], *(d + sign * (b + a) for d, (b, a) in zip(shape[1:-1], amounts)), shape[-1]]
                shapes.append(list(shape))
            if entries:
                insert_before(cfg, lc, entries, shapes)


def _weights(plans: dict[str, dict]) -> Any:
    def values(path: str, old: Any) -> list[np.ndarray] | None:
        import keras

        plan = plans.get(path)
        if plan is None:
            return None
        out = []
        for name, w in zip(weight_names(old), old.weights):
            v = np.asarray(keras.ops.convert_to_numpy(w))
            if name == plan["name"]:
                v = v[tuple(slice(b, v.shape[i] - a) for i, (b, a) in enumerate(plan["borders"]))]
            out.append(v)
        return out

    return values


class TrimKernelBorders(Pass):
    """Cuts all-zero border rows and columns off convolution kernels (padding layers keep the outputs)."""

    name = "trim_kernel_borders"
    way_out = "export with shrink=False (--no-shrink) to keep the layers as they are"

    def plan(self, view: GraphView, ctx: Context) -> tuple[dict[str, dict], list[str]]:
        """Per layer path the trimmed kernel and its padding, and a line per layer trimmed or kept."""
        return _plan(view.graph)

    def apply(self, model: Any, plan: tuple[dict[str, dict], list[str]], ctx: Context) -> PassResult:
        plans, lines = plan
        if not plans:
            return PassResult(model, False, list(lines))
        return PassResult(rebuild(model, lambda config: _edit(config, plans), _weights(plans)), True, list(lines))
