"""The affine int8 map of TFLite tensors: ``real = scale * (q - zero_point)``.

:func:`quantize` and :func:`dequantize` apply it with the scale and zero point of an interpreter
tensor (LiteRT ``get_input_details()[i]`` or TFLM ``get_input_details(i)``);
:func:`dequantized_output_scale` finds the step of a float output's int8 source tensor.

Example:
  >>> quantize(np.array([0.0, 1.0]), {"dtype": np.int8, "quantization": (1 / 255, -128)})
  array([-128,  127], dtype=int8)
"""

from __future__ import annotations

import numpy as np

__all__ = ["dequantize", "dequantized_output_scale", "quantize", "scale_zero_point"]


def scale_zero_point(details: dict) -> tuple[float, int]:
    """Per-tensor scale and zero point from LiteRT or TFLM tensor details."""
    qp = details.get("quantization_parameters")
    if qp is not None and len(qp.get("scales", [])) > 0:
        return float(qp["scales"][0]), int(qp["zero_points"][0])
    scale, zero_point = details.get("quantization", (0.0, 0))
    return float(scale), int(zero_point)


def quantize(x: np.ndarray, details: dict) -> np.ndarray:
    """Map real values to a tensor's integer type: ``q = clip(round(x / scale) + zp)``.

    Float tensors (scale 0) are returned as their dtype unchanged. Arrays already of the
    tensor's integer dtype are returned as they are.

    Args:
        x: real-valued input.
        details: interpreter tensor details (LiteRT ``get_input_details()[i]`` or TFLM
            ``get_input_details(i)``).

    Example:
        >>> quantize(np.array([0.0, 1.0]), {"dtype": np.int8, "quantization": (1 / 255, -128)})
        array([-128,  127], dtype=int8)
    """
    dtype = np.dtype(details["dtype"])
    x = np.asarray(x)
    if x.dtype == dtype:
        return x
    scale, zero_point = scale_zero_point(details)
    if dtype.kind == "f" or scale == 0.0:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(x.astype(np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, details: dict) -> np.ndarray:
    """Map a tensor's integers back to real values: ``x = scale * (q - zp)`` (float32).

    Example:
        >>> dequantize(np.array([-128, 127], np.int8), {"dtype": np.int8, "quantization": (0.5, -128)})
        array([  0. , 127.5], dtype=float32)
    """
    q = np.asarray(q)
    scale, zero_point = scale_zero_point(details)
    if q.dtype.kind == "f" or scale == 0.0:
        return q.astype(np.float32)
    return (scale * (q.astype(np.float32) - zero_point)).astype(np.float32)


def dequantized_output_scale(tflite: bytes) -> float:
    """Scale of the int8 tensor feeding the DEQUANTIZE that produces output 0 (0.0 if none)."""
    from tflite_export.flatbuffer import load_schema, parse_model

    schema = load_schema()
    model = parse_model(tflite)
    graph = model.subgraphs[0]
    target = int(graph.outputs[0])
    for op in graph.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        if builtin == schema.BuiltinOperator.DEQUANTIZE and target in list(op.outputs):
            q = graph.tensors[int(op.inputs[0])].quantization
            if q is not None and q.scale is not None and len(q.scale) > 0:
                return float(q.scale[0])
    return 0.0
