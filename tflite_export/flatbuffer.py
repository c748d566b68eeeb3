"""Read a ``.tflite`` flatbuffer: operator list, parameter count and MACs per operator.

The TFLite schema bindings (``schema_py_generated``) ship inside ``ai_edge_litert``,
``tflite_micro`` and TensorFlow; :func:`load_schema` imports the first that is present
(``ai_edge_litert`` first, because it does not import TensorFlow).

MACs (multiply-accumulates) per inference are counted for the operators that do the
arithmetic work of a network, with ``O`` the output tensor and the filter layouts that
TFLite uses:

* ``CONV_2D`` (filter ``[C_out, K_h, K_w, C_in / groups]``): ``|O| * K_h * K_w * C_in / groups``
* ``DEPTHWISE_CONV_2D`` (filter ``[1, K_h, K_w, C_out]``): ``|O| * K_h * K_w``
* ``FULLY_CONNECTED`` (weights ``[units, K]``): ``|O| * K``
* ``TRANSPOSE_CONV`` (filter ``[C_out, K_h, K_w, C_in]``): ``|input| * K_h * K_w * C_out``
* ``BATCH_MATMUL``: ``|O| * K`` (``K`` the contracted dimension)

Bias additions, pooling, activations and element-wise operators count 0 MACs, the usual
convention (it reproduces Keras-level MAC counts of convolutions and dense layers).

Parameters are the elements of constant tensors that carry weights: float tensors and
quantized tensors (those with a scale), each buffer counted once. Integer shape or axis
operands (e.g. the reduction indices of ``MEAN``) are not parameters.

:func:`lowered_model` reads the main subgraph into the plain description of
:mod:`keras_wgsef.budget.lowered` that the hardware cost models (:mod:`keras_wgsef.budget.hardware`)
predict flash, arena and instructions from.

Example:
    >>> from tflite_export.flatbuffer import lowered_model, summarize
    >>> s = summarize(tfl)                  # conv1-bn1-relu, pool, conv2-relu, mean, dense
    >>> s.macs, s.op_names[:2]
    (23200, ['CONV_2D', 'MAX_POOL_2D'])
    >>> lm = lowered_model(tfl)
    >>> [(op.kind, op.window, op.weight_elems, op.bias_elems, op.quant_channels) for op in lm.ops]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('CONV_2D', 9, 72, 8, 8), ('MAX_POOL_2D', 4, 0, 0, 0), ('CONV_2D', 9, 1152, 16, 16),
     ('MEAN', 16, 0, 0, 0), ('FULLY_CONNECTED', 1, 160, 10, 10)]
"""

from __future__ import annotations

import importlib
import os
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from keras_wgsef.budget.lowered import LoweredModel

__all__ = [
    "ModelSummary",
    "OpInfo",
    "load_schema",
    "lowered_model",
    "parse_model",
    "read_tflite",
    "summarize",
    "tensor_name_bytes",
]

_SCHEMA_MODULES = (
    "ai_edge_litert.schema_py_generated",
    "tflite_micro.tensorflow.lite.micro.python.schema_py_generated",
    "tensorflow.lite.python.schema_py_generated",
)
_schema_cache: ModuleType | None = None

# TensorType enum values that hold floating point numbers.
_FLOAT_TYPES = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"}


def load_schema() -> ModuleType:
    """Import the TFLite flatbuffer schema bindings from the first package that has them.

    Returns:
        The ``schema_py_generated`` module.

    Raises:
        ImportError: none of ai_edge_litert, tflite_micro or tensorflow is installed.
    """
    global _schema_cache
    if _schema_cache is not None:
        return _schema_cache
    errors = []
    for name in _SCHEMA_MODULES:
        try:
            _schema_cache = importlib.import_module(name)
            return _schema_cache
        except ImportError as exc:  # try the next provider
            errors.append(f"{name}: {exc}")
    from keras_wgsef._install import install_hint

    raise ImportError(
        "cannot read .tflite files: no TFLite schema module found (ai-edge-litert, tflite-micro or tensorflow); "
        f"install the `export` extra, {install_hint('export')}. Tried: " + "; ".join(errors)
    )


def read_tflite(tflite: bytes | bytearray | str | os.PathLike) -> bytes:
    """Return the model bytes from bytes or a path to a ``.tflite`` file.

    Raises:
        ValueError: the data is not a TFLite flatbuffer (no ``TFL3`` identifier).
    """
    if isinstance(tflite, (bytes, bytearray, memoryview)):
        data = bytes(tflite)
    else:
        with open(tflite, "rb") as f:
            data = f.read()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(
            "not a TFLite model: the flatbuffer identifier 'TFL3' is missing; pass the bytes "
            "returned by to_tflite_int8() or a .tflite file written by the TFLite converter"
        )
    return data


def parse_model(tflite: bytes | bytearray | str | os.PathLike) -> Any:
    """Parse a model into the schema's object API (``ModelT``)."""
    schema = load_schema()
    data = read_tflite(tflite)
    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))


@dataclass(frozen=True)
class OpInfo:
    """One operator of the main subgraph."""

    index: int
    name: str
    input_shapes: tuple[tuple[int, ...] | None, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    macs: int
    params: int


@dataclass(frozen=True)
class ModelSummary:
    """What the flatbuffer says about a model (main subgraph, batch size as stored)."""

    ops: tuple[OpInfo, ...]
    params: int
    macs: int
    weight_bytes: int
    input_shapes: tuple[tuple[int, ...], ...]
    input_types: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    output_types: tuple[str, ...]
    num_subgraphs: int
    op_counts: dict[str, int] = field(default_factory=dict)

    @property
    def op_names(self) -> list[str]:
        """Operator names in execution order."""
        return [op.name for op in self.ops]


def _enum_names(enum_cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _op_name(model: Any, op: Any, op_names: dict[int, str]) -> str:
    """The builtin name of an operator (``CUSTOM(name)`` for custom ones)."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    name = op_names.get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM":
        custom = code.customCode
        name = f"CUSTOM({custom.decode() if isinstance(custom, bytes) else custom})"
    return name


def _shape(tensor: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))


def _is_weight(tensor: Any, buffer: Any, type_names: dict[int, str]) -> bool:
    has_data = buffer is not None and (
        (buffer.data is not None and len(buffer.data) > 0) or getattr(buffer, "size", 0) > 0
    )
    if not has_data:
        return False
    if type_names.get(tensor.type, "") in _FLOAT_TYPES:
        return True
    q = tensor.quantization
    return q is not None and q.scale is not None and len(q.scale) > 0


def _macs(name: str, ins: list[tuple[int, ...] | None], outs: list[tuple[int, ...]], options: Any) -> int:
    out = int(np.prod(outs[0])) if outs else 0
    if name == "CONV_2D" and len(ins) > 1 and ins[1]:
        _, kh, kw, cin = ins[1]
        return out * kh * kw * cin
    if name == "DEPTHWISE_CONV_2D" and len(ins) > 1 and ins[1]:
        _, kh, kw, _ = ins[1]
        return out * kh * kw
    if name == "FULLY_CONNECTED" and len(ins) > 1 and ins[1]:
        return out * ins[1][-1]
    if name == "TRANSPOSE_CONV" and len(ins) > 2 and ins[1] and ins[2]:
        cout, kh, kw, _ = ins[1]
        return int(np.prod(ins[2])) * kh * kw * cout
    if name == "BATCH_MATMUL" and ins and ins[0]:
        adj_x = bool(getattr(options, "adjX", False))
        k = ins[0][-2] if adj_x else ins[0][-1]
        return out * k
    return 0


def summarize(tflite: bytes | bytearray | str | os.PathLike) -> ModelSummary:
    """Count operators, parameters and MACs of a ``.tflite`` model.

    Args:
        tflite: the model bytes or a path to a ``.tflite`` file.

    Returns:
        A :class:`ModelSummary` of the main subgraph (subgraph 0).

    Example:
        >>> summarize(tfl).macs   # 64*9*8 + 16*9*8*16 + 16*10
        23200
    """
    schema = load_schema()
    model = parse_model(tflite)
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    graph = model.subgraphs[0]
    tensors = graph.tensors or []
    counted_buffers: set[int] = set()
    ops: list[OpInfo] = []
    total_params = 0
    for i, op in enumerate(graph.operators or []):
        name = _op_name(model, op, op_names)
        inputs = [int(t) for t in (op.inputs if op.inputs is not None else [])]
        ins = [(_shape(tensors[t]) if t >= 0 else None) for t in inputs]
        outs = [_shape(tensors[t]) for t in (op.outputs if op.outputs is not None else [])]
        params = 0
        for t in inputs:
            if t < 0:
                continue
            tensor = tensors[t]
            buf = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
            if tensor.buffer not in counted_buffers and _is_weight(tensor, buf, type_names):
                counted_buffers.add(tensor.buffer)
                params += int(np.prod(_shape(tensor)))
        total_params += params
        ops.append(OpInfo(i, name, tuple(ins), tuple(outs), _macs(name, ins, outs, op.builtinOptions), params))
    weight_bytes = 0
    for b in counted_buffers:
        buf = model.buffers[b]
        weight_bytes += len(buf.data) if buf.data is not None else int(getattr(buf, "size", 0))
    return ModelSummary(
        ops=tuple(ops),
        params=total_params,
        macs=sum(op.macs for op in ops),
        weight_bytes=weight_bytes,
        input_shapes=tuple(_shape(tensors[t]) for t in graph.inputs),
        input_types=tuple(type_names.get(tensors[t].type, "?") for t in graph.inputs),
        output_shapes=tuple(_shape(tensors[t]) for t in graph.outputs),
        output_types=tuple(type_names.get(tensors[t].type, "?") for t in graph.outputs),
        num_subgraphs=len(model.subgraphs),
        op_counts=dict(Counter(op.name for op in ops)),
    )


# Bytes per element of the TensorType enum names (activation tensors of the lowered model).
_TYPE_BYTES = {
    "INT8": 1, "UINT8": 1, "BOOL": 1, "INT4": 1, "INT16": 2, "UINT16": 2, "FLOAT16": 2, "BFLOAT16": 2,
    "INT32": 4, "UINT32": 4, "FLOAT32": 4, "INT64": 8, "UINT64": 8, "FLOAT64": 8, "COMPLEX64": 8,
}  # fmt: skip
# Operators whose second input is the kernel (weights), per-channel quantized along its output axis.
_KERNEL_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


def _has_data(buffer: Any) -> bool:
    return buffer is not None and ((buffer.data is not None and len(buffer.data) > 0) or getattr(buffer, "size", 0) > 0)


def lowered_model(tflite: bytes | bytearray | str | os.PathLike) -> LoweredModel:
    """Read the main subgraph into a :class:`keras_wgsef.budget.lowered.LoweredModel`.

    Activation tensors are the non-constant tensors (no buffer data) that an operator or the
    graph reads or writes, with the shape stored without its leading batch axis and
    ``dtype_bytes`` from their type. Constant operands are not tensors there; they fill each
    operator's ``weight_elems`` (int8 or float kernels and other quantized or float constants),
    ``bias_elems`` (quantized int32/int64 constants: biases) and ``quant_channels`` (the
    kernel's per-channel scale count when above 1, else 0). ``macs`` are those of
    :func:`summarize`; ``window`` is ``kh * kw`` of the filter (``CONV_2D``,
    ``DEPTHWISE_CONV_2D``), of the pool options (``MAX_POOL_2D``, ``AVERAGE_POOL_2D``,
    ``L2_POOL_2D``), the reduced elements per output element (``MEAN``, ``SUM``) and 1 otherwise.

    Args:
        tflite: the model bytes or a path to a ``.tflite`` file.

    Returns:
        The operators in execution order and their activation tensors; tensor ids are the
        flatbuffer's tensor indices.

    Example:
        >>> lm = lowered_model(tfl)
        >>> lm.op_kinds, lm.tensors[lm.inputs[0]].shape
        (['CONV_2D', 'MAX_POOL_2D', 'CONV_2D', 'MEAN', 'FULLY_CONNECTED'], (8, 8, 1))
    """
    from keras_wgsef.budget.lowered import LoweredModel, Op, Tensor

    schema = load_schema()
    model = parse_model(tflite)
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    graph = model.subgraphs[0]
    fb_tensors = graph.tensors or []
    buffers = model.buffers or []

    def constant(t: int) -> bool:
        b = fb_tensors[t].buffer
        return 0 <= b < len(buffers) and _has_data(buffers[b])

    tensors: dict[int, Tensor] = {}

    def activation(t: int) -> int:
        if t not in tensors:
            shape = _shape(fb_tensors[t])
            nbytes = _TYPE_BYTES.get(type_names.get(fb_tensors[t].type, ""), 1)
            tensors[t] = Tensor(t, tuple(shape[1:]) if len(shape) > 1 else shape, nbytes)
        return t

    graph_inputs = tuple(activation(int(t)) for t in (graph.inputs if graph.inputs is not None else []))
    ops: list[Op] = []
    for op in graph.operators or []:
        name = _op_name(model, op, op_names)
        inputs = [int(t) for t in (op.inputs if op.inputs is not None else [])]
        outputs = [int(t) for t in (op.outputs if op.outputs is not None else [])]
        ins = [(_shape(fb_tensors[t]) if t >= 0 else None) for t in inputs]
        outs = [_shape(fb_tensors[t]) for t in outputs]
        weight_elems = bias_elems = quant_channels = 0
        act_in: list[int] = []
        keys: dict[tuple[str, tuple[int, ...], tuple[int, ...]], None] = {}
        for k, t in enumerate(inputs):
            if t < 0:
                continue
            if not constant(t):
                act_in.append(activation(t))
                continue
            tensor = fb_tensors[t]
            kind = type_names.get(tensor.type, "")
            q = tensor.quantization
            scales = len(q.scale) if q is not None and q.scale is not None else 0
            elems = int(np.prod(_shape(tensor)))
            if kind in ("INT32", "INT64") and scales > 0:
                bias_elems += elems
            elif kind in _FLOAT_TYPES or scales > 0:
                weight_elems += elems
            elif kind == "INT32" and name not in _KERNEL_OPS:  # an axis or a shape: stored once per value
                values = np.frombuffer(bytes(buffers[fb_tensors[t].buffer].data), "<i4")
                keys[(kind, tuple(int(d) for d in _shape(tensor)), tuple(int(v) for v in values))] = None
            if k == 1 and name in _KERNEL_OPS and scales > 1:
                quant_channels = scales
        window = 1
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D") and len(ins) > 1 and ins[1] and len(ins[1]) == 4:
            window = int(ins[1][1] * ins[1][2])
        elif name in ("MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D") and op.builtinOptions is not None:
            window = int(op.builtinOptions.filterHeight * op.builtinOptions.filterWidth)
        elif name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD") and ins and ins[0] and outs:
            window = max(1, int(np.prod(ins[0])) // max(1, int(np.prod(outs[0]))))
        ops.append(
            Op(
                kind=name,
                inputs=tuple(act_in),
                outputs=tuple(activation(t) for t in outputs),
                macs=_macs(name, ins, outs, op.builtinOptions),
                window=window,
                weight_elems=weight_elems,
                bias_elems=bias_elems,
                quant_channels=quant_channels,
                constants=tuple(keys),
            )
        )
    graph_outputs = tuple(activation(int(t)) for t in (graph.outputs if graph.outputs is not None else []))
    names = {t: (fb_tensors[t].name or b"").decode("utf-8", "replace") for t in tensors}
    return LoweredModel(tensors=tensors, ops=ops, inputs=graph_inputs, outputs=graph_outputs, names=names)


def tensor_name_bytes(tflite: bytes | bytearray | str | os.PathLike) -> int:
    """Bytes the tensor names of the main subgraph take in the flatbuffer.

    Each name is a flatbuffer string: a 4-byte length, the characters and a terminating zero,
    padded to 4 bytes. The converter derives the names from the Keras model and layer names, not
    from the widths, so the figure measured on one width of an architecture holds for all
    (``keras_wgsef.budget.hardware.predict_flash_bytes(..., name_bytes=...)``).

    Example:
        >>> 0 < tensor_name_bytes(tfl) < len(tfl)
        True
    """
    graph = parse_model(tflite).subgraphs[0]
    return sum((4 + len(t.name or b"") + 1 + 3) // 4 * 4 for t in graph.tensors or [])
