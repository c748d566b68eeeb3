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

Example:
    >>> from tflite_export.flatbuffer import summarize
    >>> s = summarize(tfl)                  # conv1-bn1-relu, pool, conv2-relu, mean, dense
    >>> s.macs, s.op_names[:2]
    (23200, ['CONV_2D', 'MAX_POOL_2D'])
"""

from __future__ import annotations

import importlib
import os
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["ModelSummary", "OpInfo", "load_schema", "parse_model", "read_tflite", "summarize"]

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
    raise ImportError(
        "cannot read .tflite files: no TFLite schema module found; install ai-edge-litert "
        "(pip install ai-edge-litert). Tried: " + "; ".join(errors)
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
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        name = op_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.customCode
            name = f"CUSTOM({custom.decode() if isinstance(custom, bytes) else custom})"
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
