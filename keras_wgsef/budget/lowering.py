"""From a Keras model to the int8 TFLite graph it converts to, at any candidate widths.

:func:`lowering_template` reads the model once (its :func:`~keras_wgsef.graph.model_graph.flatten_model`
graph and the channel analysis) and returns a :class:`LoweringTemplate`: the operators the
TFLite converter emits, with each activation tensor's channels expressed as channel *classes*
(:mod:`keras_wgsef.graph.channels`). :meth:`LoweringTemplate.lower` then gives the
:class:`~keras_wgsef.budget.lowered.LoweredModel` for any set of kept channel classes, in
microseconds, which is what the budget controller needs to price a candidate support.

The rules mirror what ``tf.lite.TFLiteConverter`` does to a Keras model (TF 2.21, int8):

=====================================  =====================================================
Keras                                  int8 TFLite
=====================================  =====================================================
Conv1D/2D, Dense                       ``CONV_2D``, ``FULLY_CONNECTED`` (ReLU/ReLU6 fused)
DepthwiseConv1D/2D                     ``DEPTHWISE_CONV_2D``
SeparableConv2D                        ``DEPTHWISE_CONV_2D`` + ``CONV_2D``
BatchNormalization after one of those  folded (no operator); elsewhere ``MUL`` + ``ADD``
ReLU, ReLU6 after a fusable operator   fused (no operator); elsewhere ``RELU`` / ``RELU6``
Add, Multiply, Subtract, Concatenate   ``ADD``, ``MUL``, ``SUB``, ``CONCATENATION`` (ReLU fused into ADD/SUB/MUL)
MaxPooling1D/2D, AveragePooling1D/2D   ``MAX_POOL_2D``, ``AVERAGE_POOL_2D``
GlobalAveragePooling2D                 ``MEAN``; with ``gap_as_avgpool=True`` (what the exporter's
                                       pass ``global_pool_as_average_pool`` emits, on the layers
                                       :func:`average_pool_rewrites` names)
                                       ``AVERAGE_POOL_2D``, then ``SHAPE``, ``STRIDED_SLICE``,
                                       ``PACK`` (the dynamic batch) and ``RESHAPE``
GlobalAveragePooling1D                 ``MEAN``; with ``gap_as_avgpool=True``: ``EXPAND_DIMS``,
                                       ``AVERAGE_POOL_2D``, ``RESHAPE``, then the dynamic reshape
GlobalMaxPooling2D                     ``REDUCE_MAX``
Flatten, Reshape                       ``SHAPE``, ``STRIDED_SLICE``, ``PACK`` (the dynamic
                                       batch), ``RESHAPE``
ZeroPadding2D                          ``PAD``
Softmax / activation="softmax"         ``SOFTMAX``
Dropout and inference-time identities  nothing
other layers                           one operator named after the layer class
=====================================  =====================================================

TensorFlow runs the 1-D layers (Conv1D, DepthwiseConv1D, 1-D pooling) as 2-D operators on
``(1, T, C)``: each becomes ``EXPAND_DIMS`` (one per tensor and axis, shared by its consumers), the
2-D operator, and a ``RESHAPE`` to a constant shape back to ``(T, C)``. When every operand of an
``Add``/``Subtract``/``Multiply`` is such a squeeze used once, the converter moves the ``RESHAPE``
after the operator (a residual stack's strided stage). Equal axis and shape constants are stored
once (:attr:`~keras_wgsef.budget.lowered.Op.constants`).

Example:
  >>> import keras
  >>> L = keras.layers
  >>> x = keras.Input((8, 8, 1))
  >>> h = L.ReLU(name="r")(L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same", name="c")(x)))
  >>> m = keras.Model(x, L.Dense(2, name="head")(L.GlobalAveragePooling2D(name="gap")(h)))
  >>> t = lowering_template(m)
  >>> t.lower().op_kinds
  ['CONV_2D', 'MEAN', 'FULLY_CONNECTED']
  >>> t.lower(gap_as_avgpool=True).op_kinds[1:-1]
  ['AVERAGE_POOL_2D', 'SHAPE', 'STRIDED_SLICE', 'PACK', 'RESHAPE']
  >>> t.lower().ops[0].macs, t.lower(keep={t.class_of("c", 0): False}).ops[0].macs
  (2304, 1728)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from keras_wgsef.budget.lowered import LoweredModel, Op, Tensor
from keras_wgsef.graph.model_graph import Graph, flatten_model
from keras_wgsef.graph.rules import INFERENCE_IDENTITY

__all__ = [
    "AVERAGE_POOLS",
    "PRICED_PASSES",
    "AveragePoolRewrite",
    "LoweringTemplate",
    "average_pool_rewrites",
    "lowering_template",
]

#: the exporter's passes (``tflite_export.passes``, by name) whose result the lowering prices: the
#: kept widths, and global average pooling lowered as ``AVERAGE_POOL_2D`` (``gap_as_avgpool``)
PRICED_PASSES = ("remove_dead_channels", "global_pool_as_average_pool")

_FUSABLE = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL"}
_IDENTITY = {*INFERENCE_IDENTITY, "InputLayer"}


@dataclasses.dataclass
class _OpSpec:
    """One operator with its tensors as template tensor ids; sizes are computed at :meth:`lower`."""

    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    formula: str = "none"  # how MACs and weights follow from the tensors: conv, depthwise, dense, per_channel, none
    window: int = 1  # kh * kw for conv and depthwise (what their MACs and weights scale with)
    fused_activation: str | None = None
    has_bias: bool = True
    gap_alternative: bool = False  # a GlobalAveragePooling1D/2D (lowered as MEAN or AVERAGE_POOL_2D + RESHAPE)
    static_reshape: bool = False  # a RESHAPE to a constant shape (a 1-D layer's squeeze), not Flatten's dynamic one
    constants: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()  # see Op.constants


@dataclasses.dataclass
class LoweringTemplate:
    """The operators of the converted model with channel counts left open.

    Attributes:
      graph: the model's flat graph.
      spatial: the spatial shape of each template tensor (``(H, W)``; ``()`` for vectors, whose
        channels are all their elements, e.g. a flattened map).
      classes: channel class (a root id of the channel analysis) of every channel of each
        template tensor; a tensor's width at a candidate is the number of its channels whose
        class is kept.
      ops: the operators, in execution order.
      inputs / outputs: template tensor ids of the model's inputs and outputs.
      names: each template tensor's name: the path of the Keras layer that writes it (the graph
        inputs: their layer's), with ``:expand`` / ``:2d`` for a 1-D operator's EXPAND_DIMS
        input and 2-D output, ``:raw`` for an operator's output before a separate activation.
    """

    graph: Graph
    analysis: Any
    spatial: dict[int, tuple[int, ...]]
    classes: dict[int, np.ndarray]
    ops: list[_OpSpec]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    names: dict[int, str] = dataclasses.field(default_factory=dict)

    def class_of(self, layer_path: str, channel: int) -> int:
        """The channel class of output channel ``channel`` of the layer at ``layer_path``."""
        node = next(n for n in self.graph.nodes if n.path == layer_path)
        return int(self.analysis.roots(self.analysis.tensor_ids[node.outputs[0]][[channel]])[0])

    def widths(self, keep: Mapping[int, bool] | None = None) -> dict[int, int]:
        """Channels of each template tensor when the classes in ``keep`` mapped to False are removed."""
        dropped = {c for c, k in (keep or {}).items() if not k}
        out = {}
        for t, cls in self.classes.items():
            out[t] = int(cls.size - (np.isin(cls, list(dropped)).sum() if dropped else 0))
        return out

    def lower(self, keep: Mapping[int, bool] | None = None, *, gap_as_avgpool: bool = False) -> LoweredModel:
        """The :class:`LoweredModel` with the channel classes mapped to False in ``keep`` removed."""
        return self.lower_widths(self.widths(keep), gap_as_avgpool=gap_as_avgpool)

    def lower_widths(self, widths: Mapping[int, int], *, gap_as_avgpool: bool = False) -> LoweredModel:
        """The :class:`LoweredModel` at explicit per-tensor channel counts."""
        tensors = {t: Tensor(t, (*self.spatial[t], int(widths[t]))) for t in self.classes}
        ops: list[Op] = []
        next_id = max(self.classes, default=0) + 1
        for spec in self.ops:
            if spec.gap_alternative and gap_as_avgpool:
                src, dst = spec.inputs[0], spec.outputs[0]
                if len(tensors[src].shape) == 2:  # 1-D: AveragePooling1D(T) [+ Reshape((C,)) unless keepdims]
                    exp, mid, sq = next_id, next_id + 1, next_id + 2
                    next_id += 3
                    tensors[exp] = Tensor(exp, (1, *tensors[src].shape))
                    tensors[mid] = Tensor(mid, (1, 1, int(widths[dst])))
                    ops.append(Op("EXPAND_DIMS", (src,), (exp,), constants=(_axis(1),)))
                    ops.append(Op("AVERAGE_POOL_2D", (exp,), (mid,), window=spec.window))
                    if len(tensors[dst].shape) == 2:  # keepdims=True: the pooling's squeeze is the output
                        ops.append(_static_reshape(mid, dst, tensors))
                        continue
                    tensors[sq] = Tensor(sq, (1, int(widths[dst])))
                    ops.append(_static_reshape(mid, sq, tensors))
                    next_id = _dynamic_reshape(sq, dst, tensors, ops, next_id)
                    continue
                if len(tensors[dst].shape) == 3:  # keepdims=True: the pooling alone
                    ops.append(Op("AVERAGE_POOL_2D", (src,), (dst,), window=spec.window))
                    continue
                mid = next_id
                next_id += 1
                tensors[mid] = Tensor(mid, (1, 1, int(widths[dst])))
                ops.append(Op("AVERAGE_POOL_2D", (src,), (mid,), window=spec.window))
                next_id = _dynamic_reshape(mid, dst, tensors, ops, next_id)
                continue
            if spec.kind == "RESHAPE" and not spec.static_reshape:
                next_id = _dynamic_reshape(spec.inputs[0], spec.outputs[0], tensors, ops, next_id)
                continue
            if spec.static_reshape:
                ops.append(_static_reshape(spec.inputs[0], spec.outputs[0], tensors))
                continue
            ops.append(self._op(spec, tensors))
        # the converter's own tensors (a pooled average, a dynamic reshape's shape): named after the
        # layer output they lead to, and the operator that writes them
        names = dict(self.names)
        made_by = {t: op.kind.lower() for op in ops for t in op.outputs}
        for op in reversed(ops):
            owner = next((names[t].split(":")[0] for t in op.outputs if t in names), None)
            for t in op.inputs:
                if owner is not None and t not in names:
                    names[t] = f"{owner}:{made_by.get(t, 'in')}"
        return _in_flatbuffer_order(LoweredModel(tensors, ops, self.inputs, self.outputs, names))

    def _op(self, spec: _OpSpec, tensors: Mapping[int, Tensor]) -> Op:
        out = tensors[spec.outputs[0]]
        cout = out.shape[-1]
        if spec.formula == "conv":
            cin = tensors[spec.inputs[0]].shape[-1]
            w = spec.window * cin * cout
            return Op(spec.kind, spec.inputs, spec.outputs, macs=out.elements * spec.window * cin,
                      window=spec.window, weight_elems=w, bias_elems=cout, quant_channels=cout)  # fmt: skip
        if spec.formula == "depthwise":
            return Op(spec.kind, spec.inputs, spec.outputs, macs=out.elements * spec.window,
                      window=spec.window, weight_elems=spec.window * cout, bias_elems=cout,
                      quant_channels=cout)  # fmt: skip
        if spec.formula == "per_channel":  # a standalone BatchNormalization's MUL or ADD: one constant per channel
            return Op(spec.kind, spec.inputs, spec.outputs, weight_elems=cout)
        if spec.formula == "dense":
            cin = tensors[spec.inputs[0]].shape[-1]
            return Op(spec.kind, spec.inputs, spec.outputs, macs=out.elements * cin, weight_elems=cin * cout,
                      bias_elems=cout if spec.has_bias else 0, quant_channels=cout)  # fmt: skip
        return Op(spec.kind, spec.inputs, spec.outputs, window=spec.window, constants=spec.constants)


def _cfg(layer: Any) -> dict[str, Any]:
    try:
        return dict(layer.get_config())
    except Exception:  # layers without a config are lowered as one generic operator
        return {}


#: the global average poolings the exporter lowers as an average pooling (the pass
#: ``global_pool_as_average_pool``): class name -> (the pooling that replaces it, spatial rank)
AVERAGE_POOLS = {"GlobalAveragePooling2D": ("AveragePooling2D", 2), "GlobalAveragePooling1D": ("AveragePooling1D", 1)}


@dataclasses.dataclass
class AveragePoolRewrite:
    """A global average pooling the exporter replaces by an average pooling over the whole map."""

    path: str
    kind: str  # the Global* class name
    spatial: tuple[int, ...]
    channels: int
    keepdims: bool


def average_pool_rewrites(g: Graph) -> tuple[dict[str, AveragePoolRewrite], list[str]]:
    """The global average poolings lowered as ``AVERAGE_POOL_2D`` (by path), and a line per one that stays.

    The one decision of the exporter's pass ``global_pool_as_average_pool`` and of the lowering
    with ``gap_as_avgpool=True``: a pooling stays ``MEAN`` when its input shape is not static or
    differs between calls, it is ``channels_first``, or it averages under a mask.
    """
    import keras

    masked = any(
        isinstance(layer, keras.layers.Masking) or getattr(layer, "mask_zero", False) for layer in g.layers.values()
    )
    shapes: dict[str, set[tuple]] = {}
    mask_given: set[str] = set()  # called with a mask tensor (an explicit or propagated mask argument)
    for node in g.nodes:
        if type(node.layer).__name__ in AVERAGE_POOLS and type(node.layer).__module__.startswith("keras"):
            shapes.setdefault(node.path, set()).add(tuple(g.shapes[node.inputs[0]]))
            if len(node.inputs) > 1:
                mask_given.add(node.path)
    plans, kept = {}, []
    for path, seen in shapes.items():
        layer = g.layers[path]
        kind = type(layer).__name__
        rank = AVERAGE_POOLS[kind][1]
        reason = ""
        if len(seen) != 1:
            reason = f"called on {len(seen)} different input shapes"
        elif layer.data_format != "channels_last":
            reason = f"data_format {layer.data_format}"
        elif rank == 1 and masked:
            reason = "the model has a masking layer (a masked average is not a plain one)"
        elif path in mask_given:
            reason = "it is called with a mask (a masked average is not a plain one)"
        else:
            shape = next(iter(seen))
            dims = shape[1:]
            if len(dims) != rank + 1 or not all(isinstance(d, int) and d > 0 for d in dims):
                reason = f"input shape {shape} is not static"
        if reason:
            kept.append(f"kept {path} ({kind}): {reason}")
            continue
        dims = next(iter(seen))[1:]
        spatial = tuple(int(d) for d in dims[:-1])
        plans[path] = AveragePoolRewrite(path, kind, spatial, int(dims[-1]), bool(layer.keepdims))
    return plans, kept


def lowering_template(model: Any, analysis: Any = None) -> LoweringTemplate:
    """Reads ``model`` (or its flat graph) into a :class:`LoweringTemplate`.

    Args:
      model: a built Sequential or Functional Keras model, or its :func:`flatten_model` graph.
      analysis: its :func:`keras_wgsef.graph.channels.analyze` result (computed when None).
    """
    from keras_wgsef.graph.channels import analyze

    g = model if isinstance(model, Graph) else flatten_model(model)
    a = analysis if analysis is not None else analyze(g)
    spatial = {t: tuple(int(d) for d in s[1:-1]) for t, s in enumerate(g.shapes)}
    ids: dict[int, np.ndarray] = dict(enumerate(a.tensor_ids))
    alias: dict[int, int] = {t: t for t in g.inputs}  # Keras tensor -> the TFLite tensor that holds it
    producer: dict[int, _OpSpec] = {}
    consumers: dict[int, int] = {}
    for node in g.nodes:
        for t in node.inputs:
            consumers[t] = consumers.get(t, 0) + 1
    ops: list[_OpSpec] = []
    expanded: dict[tuple[int, int], int] = {}  # (tensor, axis) -> its EXPAND_DIMS output (one per pair)
    squeezes: dict[int, _OpSpec] = {}  # tensor -> the static RESHAPE that squeezes a 1-D operator's output into it

    pool_rewrites = average_pool_rewrites(g)[0]  # exactly those the exporter's pass rewrites
    names: dict[int, str] = {t: n.path for n in g.nodes for t in n.outputs}
    for t in g.inputs:
        names.setdefault(t, f"input{t}")

    def extra_tensor(like: int, channel_ids: np.ndarray, shape: tuple[int, ...] | None = None, suffix: str = "") -> int:
        t = len(spatial)
        spatial[t], ids[t] = (spatial[like] if shape is None else shape), channel_ids
        names[t] = f"{names.get(like, f't{like}')}{suffix}"
        return t

    def expand(t: int, axis: int) -> int:
        """TensorFlow runs a 1-D convolution or pooling as a 2-D one on ``(1, T, C)``."""
        if (t, axis) not in expanded:
            expanded[t, axis] = extra_tensor(t, ids[t], (1, *spatial[t]), ":expand")
            ops.append(_OpSpec("EXPAND_DIMS", (t,), (expanded[t, axis],), constants=(_axis(axis),)))
        return expanded[t, axis]

    def fusable_producer(t: int) -> _OpSpec | None:
        spec = producer.get(alias[t])
        return spec if spec is not None and consumers.get(t, 0) == 1 and spec.fused_activation is None else None

    for node in _execution_order(g):
        layer = node.layer
        cls = type(layer).__name__
        cfg = _cfg(layer)
        ins = [alias[t] for t in node.inputs]
        out = node.outputs[0]
        if cls in _IDENTITY or cls.startswith("Random"):
            alias[out] = ins[0]
            continue
        spec = _OpSpec(cls.upper(), tuple(dict.fromkeys(ins)), (out,))
        squeeze = None
        if cls in _ONE_D and len(g.shapes[node.inputs[0]]) == 3:
            # EXPAND_DIMS (shared by the consumers of a tensor), the 2-D operator, a static RESHAPE back
            mid = extra_tensor(out, ids[out], (1, *spatial[out]), ":2d")
            spec = _OpSpec(cls.upper(), (expand(ins[0], -3 if cls == "Conv1D" else 1),), (mid,))
            squeeze = _OpSpec("RESHAPE", (mid,), (out,), static_reshape=True)
        if (
            cls in ("Add", "Subtract", "Multiply")
            and len(ins) > 1
            and all(t in squeezes and consumers.get(k, 0) == 1 for t, k in zip(ins, node.inputs))
        ):
            # every operand is a single-use squeeze of the same shape: the converter moves the
            # RESHAPE after the operator, which then runs on the 2-D operators' outputs
            sources = [squeezes[t].inputs[0] for t in ins]
            if len({spatial[t] for t in sources}) == 1:
                for t in ins:
                    ops.remove(squeezes.pop(t))
                mid = extra_tensor(out, ids[out], spatial[sources[0]], ":2d")
                spec = _OpSpec(cls.upper(), tuple(dict.fromkeys(sources)), (mid,))
                squeeze = _OpSpec("RESHAPE", (mid,), (out,), static_reshape=True)
        if cls in ("Conv1D", "Conv2D"):
            spec.kind, spec.formula = "CONV_2D", "conv"
            spec.window = int(np.prod(cfg["kernel_size"]))
        elif cls in ("DepthwiseConv1D", "DepthwiseConv2D"):
            spec.kind, spec.formula = "DEPTHWISE_CONV_2D", "depthwise"
            spec.window = int(np.prod(cfg["kernel_size"]))
        elif cls == "SeparableConv2D":
            mid = extra_tensor(out, np.repeat(a.in_ids[node.path], int(cfg.get("depth_multiplier", 1))), suffix=":dw")
            ks = int(np.prod(cfg["kernel_size"]))
            ops.append(_OpSpec("DEPTHWISE_CONV_2D", (ins[0],), (mid,), "depthwise", ks))
            spec = _OpSpec("CONV_2D", (mid,), (out,), "conv", 1)
        elif cls == "Dense":
            spec.kind, spec.formula = "FULLY_CONNECTED", "dense"
        elif cls == "BatchNormalization":
            prev = fusable_producer(node.inputs[0])
            if prev is not None and prev.formula != "none":
                alias[out] = ins[0]  # folded into the convolution / dense before it
                continue
            mid = extra_tensor(out, ids[out], suffix=":mul")
            ops.append(_OpSpec("MUL", (ins[0],), (mid,), "per_channel"))
            spec = _OpSpec("ADD", (mid,), (out,), "per_channel")
        elif cls in ("ReLU", "Activation", "Softmax"):
            name = "softmax" if cls == "Softmax" else _activation_name(cls, cfg)
            prev = fusable_producer(node.inputs[0])
            if name in ("relu", "relu6") and prev is not None and prev.kind in _FUSABLE:
                prev.fused_activation = name
                alias[out] = ins[0]
                continue
            if name in (None, "linear"):
                alias[out] = ins[0]
                continue
            spec.kind = _ACTIVATION_OPS.get(name, name.upper())
        elif cls in ("Add", "Subtract", "Multiply", "Concatenate"):
            spec.kind = {"Add": "ADD", "Subtract": "SUB", "Multiply": "MUL", "Concatenate": "CONCATENATION"}[cls]
        elif cls in ("MaxPooling2D", "AveragePooling2D", "MaxPooling1D", "AveragePooling1D"):
            spec.kind = "MAX_POOL_2D" if cls.startswith("Max") else "AVERAGE_POOL_2D"
            spec.window = int(np.prod(cfg["pool_size"]))
        elif cls in ("GlobalAveragePooling2D", "GlobalAveragePooling1D"):
            spec.kind, spec.window = "MEAN", int(np.prod(spatial[node.inputs[0]]))
            rank = len(spatial[node.inputs[0]])  # the reduced axes: a scalar for one, a vector for more
            spec.constants = (_axis(1) if rank == 1 else ("INT32", (rank,), tuple(range(1, rank + 1))),)
            spec.gap_alternative = node.path in pool_rewrites
        elif cls in ("GlobalMaxPooling2D", "GlobalMaxPooling1D"):
            spec.kind, spec.window = "REDUCE_MAX", int(np.prod(spatial[node.inputs[0]]))
        elif cls in ("Flatten", "Reshape"):
            if tuple(g.shapes[out]) == tuple(g.shapes[node.inputs[0]]):
                alias[out] = ins[0]
                continue
            spec.kind = "RESHAPE"
        elif cls in ("ZeroPadding2D", "ZeroPadding1D"):
            spec.kind = "PAD"
        spec.has_bias = bool(cfg.get("use_bias", True))
        ops.append(spec)
        producer[out] = spec  # what a BatchNorm folds into and a ReLU fuses into (a squeeze commutes with both)
        alias[out] = out
        act = cfg.get("activation")
        if spec.formula != "none" and isinstance(act, str) and act != "linear":
            if act in ("relu", "relu6"):
                spec.fused_activation = act
            else:  # a separate activation operator on the convolution's output
                dst = spec.outputs[0]
                raw = extra_tensor(dst, ids[dst], suffix=":raw")
                spec.outputs = (raw,)
                ops.append(_OpSpec(_ACTIVATION_OPS.get(act, act.upper()), (raw,), (dst,)))
                producer[out] = ops[-1]
        if squeeze is not None:
            ops.append(squeeze)
            squeezes[out] = squeeze
    outputs = tuple(alias[t] for t in g.outputs)
    used = {t for s in ops for t in (*s.inputs, *s.outputs)} | set(g.inputs) | set(outputs)
    classes = {t: a.roots(ids[t]) for t in sorted(used)}
    return LoweringTemplate(g, a, {t: spatial[t] for t in classes}, classes, ops, tuple(g.inputs), outputs,
                            {t: names[t] for t in classes if t in names})  # fmt: skip


# the layers TensorFlow runs as 2-D operators between EXPAND_DIMS and a RESHAPE
_ONE_D = ("Conv1D", "DepthwiseConv1D", "MaxPooling1D", "AveragePooling1D")
_ACTIVATION_OPS = {"relu": "RELU", "relu6": "RELU6", "softmax": "SOFTMAX", "sigmoid": "LOGISTIC", "tanh": "TANH"}


def _in_flatbuffer_order(lm: LoweredModel) -> LoweredModel:
    """The tensors renumbered as the converter numbers them: the inputs, then each operator's outputs
    in execution order. The memory planner breaks ties between equal sizes by this order, so the
    planned arena depends on it (a 1-D model's many equal-sized squeezes)."""
    order = list(lm.inputs) + [t for op in lm.ops for t in op.outputs]
    listed = set(order)
    order += [t for t in sorted(lm.tensors) if t not in listed]
    new = {t: i for i, t in enumerate(dict.fromkeys(order))}
    ops = [
        dataclasses.replace(op, inputs=tuple(new[t] for t in op.inputs), outputs=tuple(new[t] for t in op.outputs))
        for op in lm.ops
    ]
    tensors = {new[t]: dataclasses.replace(x, id=new[t]) for t, x in lm.tensors.items()}
    names = {new[t]: n for t, n in lm.names.items() if t in new}
    return LoweredModel(tensors, ops, tuple(new[t] for t in lm.inputs), tuple(new[t] for t in lm.outputs), names)


def _axis(axis: int) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """The key of a scalar int32 axis constant (:attr:`Op.constants`)."""
    return ("INT32", (), (axis,))


def _static_reshape(src: int, dst: int, tensors: Mapping[int, Tensor]) -> Op:
    """A RESHAPE to a constant shape, ``[-1, *shape]`` (a 1-D operator's output squeezed back)."""
    shape = tensors[dst].shape
    return Op("RESHAPE", (src,), (dst,), constants=(("INT32", (len(shape) + 1,), (-1, *shape)),))


def _dynamic_reshape(src: int, dst: int, tensors: dict[int, Tensor], ops: list[Op], next_id: int) -> int:
    """A Keras ``Reshape``/``Flatten``: the batch stays dynamic, so the converter computes the target shape
    at run time (``SHAPE``, ``STRIDED_SLICE``, ``PACK`` on small int32 tensors) before ``RESHAPE``."""
    shp, batch, target = next_id, next_id + 1, next_id + 2
    rank = len(tensors[src].shape) + 1
    tensors[shp], tensors[batch] = Tensor(shp, (rank,), 4), Tensor(batch, (), 4)
    tensors[target] = Tensor(target, (len(tensors[dst].shape) + 1,), 4)
    ops.append(Op("SHAPE", (src,), (shp,)))
    ops.append(Op("STRIDED_SLICE", (shp,), (batch,)))
    ops.append(Op("PACK", (batch,), (target,)))
    ops.append(Op("RESHAPE", (src, target), (dst,)))
    return next_id + 3


def _execution_order(g: Graph) -> list[Any]:
    """The nodes in the order Keras runs them, which is the order the converter writes the operators.

    Keras' Functional model orders its nodes by depth (longest path to an output, deepest first);
    within a depth, by first discovery walking back from the outputs, inputs in call order
    (``keras.src.models.functional``'s graph map). Reproduced here on the flat graph.
    """
    producer = {t: n for n in g.nodes for t in n.outputs}
    post: list[Any] = []
    seen: set[int] = set()
    for out in g.outputs:  # depth-first, post-order, from each output
        stack = [(producer[out], False)] if out in producer else []
        while stack:
            node, done = stack.pop()
            if done:
                post.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            for t in reversed(node.inputs):
                if t in producer and id(producer[t]) not in seen:
                    stack.append((producer[t], False))
    depth: dict[int, int] = {}
    nodes: dict[int, Any] = {}
    for node in reversed(post):
        d = depth.setdefault(id(node), 0)
        nodes.setdefault(id(node), node)
        for t in node.inputs:
            if t in producer:
                p = producer[t]
                depth[id(p)] = max(d + 1, depth.get(id(p), 0))
                nodes.setdefault(id(p), p)
    order = sorted(depth, key=lambda i: -depth[i])  # stable: discovery order within a depth
    ordered = [nodes[i] for i in order]
    rest = [n for n in g.nodes if id(n) not in depth]  # not on a path to an output (never converted)
    return ordered + rest


def _activation_name(cls: str, cfg: Mapping[str, Any]) -> str | None:
    if cls == "ReLU":
        mx, slope, thr = cfg.get("max_value"), cfg.get("negative_slope", 0.0), cfg.get("threshold", 0.0)
        if slope or thr:
            return "leaky_relu"
        if mx is None:
            return "relu"
        return "relu6" if float(mx) == 6.0 else "relu_n"
    act = cfg.get("activation")
    return act if isinstance(act, str) else None
