"""Full-integer (int8) TFLite conversion of Keras 3 models, with checks on LiteRT.

The path that works with TensorFlow 2.21 and Keras 3 (see ``design/stack.md``):
``tf.lite.TFLiteConverter.from_keras_model`` with ``Optimize.DEFAULT``, a representative
dataset, ``TFLITE_BUILTINS_INT8`` and int8 inference input/output types. Every tensor is
then affine-quantized, ``real = scale * (q - zero_point)``; :func:`quantize` and
:func:`dequantize` apply that map with the scale and zero point of an interpreter tensor.

Example:
    >>> tfl = to_tflite_int8(model, x_train[:200])              # doctest: +SKIP
    >>> agreement = check_agreement(model, tfl, x_test[:256])   # doctest: +SKIP
    >>> agreement.argmax_agreement, agreement.max_diff_steps     # doctest: +SKIP
    (0.996, 3.0)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CalibrationError",
    "ConversionError",
    "Agreement",
    "calibration_samples",
    "to_tflite_int8",
    "quantize",
    "dequantize",
    "run_litert",
    "check_agreement",
]

log = logging.getLogger(__name__)


class CalibrationError(ValueError):
    """The calibration (representative) data cannot be used for this model."""


class ConversionError(RuntimeError):
    """The TFLite converter failed, or its output does not run on LiteRT."""


@contextlib.contextmanager
def _quiet_fds(enabled: bool = True) -> Iterator[io.StringIO]:
    """Capture what C++ and Python write to stdout/stderr (file descriptors 1 and 2).

    The captured text is available from the yielded buffer after the block, so that it
    can be attached to an error message instead of being lost.
    """
    buf = io.StringIO()
    if not enabled:
        yield buf
        return
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    yield buf
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            buf.write(sink.read().decode("utf-8", errors="replace"))


def _model_input_shape(model: Any) -> tuple[int | None, ...]:
    inputs = model.inputs if getattr(model, "inputs", None) else None
    if inputs is None:
        raise CalibrationError(
            "the model has no defined input; build it first (e.g. keras.Input(shape) or "
            "model.build((None, ...))) before converting"
        )
    if len(inputs) != 1:
        raise CalibrationError(
            f"the model has {len(inputs)} inputs; only single-input models are supported"
        )
    return tuple(inputs[0].shape)


def _first_tensor(element: Any) -> Any:
    """Take the input part of a dataset/generator element: x, (x, y), [x] or {'x': ...}."""
    if isinstance(element, dict):
        if len(element) != 1:
            raise CalibrationError(
                "calibration elements are dicts with several keys; yield the input array only"
            )
        element = next(iter(element.values()))
    while isinstance(element, (tuple, list)):
        if not element:
            raise CalibrationError("a calibration element is an empty tuple/list")
        element = element[0]
    if hasattr(element, "numpy"):
        element = element.numpy()
    return np.asarray(element)


def _check_array(arr: np.ndarray, shape: tuple[int | None, ...], where: str) -> np.ndarray:
    """Return ``arr`` as a float32 batch, after checking dtype, shape and finiteness."""
    if arr.dtype.kind not in "f":
        raise CalibrationError(
            f"calibration data {where} has dtype {arr.dtype}; it must be floating point, "
            "preprocessed exactly as for training (e.g. x.astype('float32') / 255)"
        )
    feature = shape[1:]
    if arr.ndim == len(feature):  # a single unbatched sample
        arr = arr[None]
    if arr.ndim != len(shape) or any(
        d is not None and d != a for d, a in zip(feature, arr.shape[1:], strict=True)
    ):
        want = "(N, " + ", ".join("?" if d is None else str(d) for d in feature) + ")"
        raise CalibrationError(
            f"calibration data {where} has shape {tuple(arr.shape)} but the model expects {want}; "
            "pass samples shaped like the model input (add or drop axes, e.g. x[..., None])"
        )
    if not np.all(np.isfinite(arr)):
        raise CalibrationError(
            f"calibration data {where} contains NaN or infinite values; remove or fix those samples"
        )
    return arr.astype(np.float32, copy=False)


def calibration_samples(model: Any, data: Any, num_calibration: int | None = None) -> np.ndarray:
    """Validate calibration data and return it as one float32 array ``(N, *input_shape)``.

    Args:
        model: the Keras model whose single input the data feeds.
        data: a NumPy array ``(N, ...)``, a ``tf.data.Dataset`` (batched or not, elements
            ``x`` or ``(x, y)``), an iterable or generator of such elements, or a callable
            returning one (a TFLite ``representative_dataset`` yielding ``[x]`` works too).
        num_calibration: keep at most this many samples (default: all).

    Raises:
        CalibrationError: empty data, non-float dtype, wrong shape or non-finite values.

    Example:
        >>> calibration_samples(model, x_train, 200).shape   # doctest: +SKIP
        (200, 28, 28, 1)
    """
    shape = _model_input_shape(model)
    if num_calibration is not None and num_calibration < 1:
        raise CalibrationError(f"num_calibration must be >= 1, got {num_calibration}")
    if data is None:
        raise CalibrationError("no calibration data given; pass ~100-500 training samples")
    if isinstance(data, np.ndarray) or (hasattr(data, "shape") and hasattr(data, "dtype")
                                        and not hasattr(data, "element_spec")):
        arr = _check_array(np.asarray(data), shape, "(array)")
        arrays = [arr[:num_calibration]]
    else:
        if callable(data) and not hasattr(data, "element_spec"):
            data = data()
        if not isinstance(data, Iterable):
            raise CalibrationError(
                f"calibration data of type {type(data).__name__} is not supported; pass a NumPy "
                "array, a tf.data.Dataset, or a generator of input batches"
            )
        arrays, total = [], 0
        for i, element in enumerate(data):
            arr = _check_array(_first_tensor(element), shape, f"(element {i})")
            arrays.append(arr)
            total += len(arr)
            if num_calibration is not None and total >= num_calibration:
                break
    out = np.concatenate(arrays, axis=0) if arrays else np.zeros((0,), np.float32)
    if num_calibration is not None:
        out = out[:num_calibration]
    if out.shape[0] == 0:
        raise CalibrationError(
            "calibration data is empty; pass ~100-500 representative training samples"
        )
    return out


def to_tflite_int8(
    model: Any,
    representative: Any,
    *,
    num_calibration: int | None = None,
    int8_io: bool = True,
    check: bool = True,
    quiet: bool = True,
) -> bytes:
    """Convert a Keras model to a full-integer int8 TFLite flatbuffer.

    Weights and activations are int8 (biases int32); every operator must have an int8
    kernel (``TFLITE_BUILTINS_INT8``), so the result runs on TFLite Micro. The model is
    not modified.

    Args:
        model: a built single-input Keras 3 model.
        representative: calibration data (see :func:`calibration_samples`), preprocessed
            as for training; 100-500 samples are typical.
        num_calibration: use at most this many samples.
        int8_io: int8 input and output tensors (default). False keeps float32 I/O with
            quantize/dequantize operators at the edges.
        check: run the result once on LiteRT and log its agreement with the float model.
        quiet: capture the converter's console output (shown only if conversion fails).

    Returns:
        The ``.tflite`` bytes.

    Raises:
        CalibrationError: unusable calibration data.
        ConversionError: the converter failed (e.g. an operator without an int8 kernel).

    Example:
        >>> tfl = to_tflite_int8(model, x_train[:200])   # doctest: +SKIP
        >>> open("model.tflite", "wb").write(tfl)         # doctest: +SKIP
    """
    import tensorflow as tf

    samples = calibration_samples(model, representative, num_calibration)

    def representative_dataset() -> Iterator[list[np.ndarray]]:
        for i in range(len(samples)):
            yield [samples[i : i + 1]]

    with _quiet_fds(quiet) as captured:
        try:
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
            tflite = converter.convert()
            error = None
        except Exception as exc:  # converter errors carry the useful text in their message
            error = exc
    if error is not None:
        detail = " ".join(str(error).split())[:600]
        raise ConversionError(
            f"TFLite int8 conversion failed: {detail}. An operator without an int8 kernel is the "
            "usual cause: replace that layer or exclude it from the model"
            + (f" (converter log: {' '.join(captured.getvalue().split())[-400:]})" if quiet else "")
        ) from error
    if check:
        try:
            with _quiet_fds(quiet):
                agreement = check_agreement(model, tflite, samples[: min(len(samples), 64)])
        except Exception as exc:
            raise ConversionError(f"the converted model does not run on LiteRT: {exc}") from exc
        log.info("int8 vs float on %d calibration samples: %s", agreement.n, agreement)
    return bytes(tflite)


def _scale_zero_point(details: dict) -> tuple[float, int]:
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
    scale, zero_point = _scale_zero_point(details)
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
    scale, zero_point = _scale_zero_point(details)
    if q.dtype.kind == "f" or scale == 0.0:
        return q.astype(np.float32)
    return (scale * (q.astype(np.float32) - zero_point)).astype(np.float32)


def run_litert(
    tflite: bytes,
    x: np.ndarray,
    *,
    resolver: str = "auto",
    num_threads: int = 1,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Run a single-input, single-output model on LiteRT over a batch of inputs.

    Args:
        tflite: the model bytes.
        x: inputs ``(N, ...)``: real values (quantized here) or already the input dtype.
        resolver: ``"auto"`` (XNNPACK delegate) or ``"ref"`` (reference kernels).
        num_threads: interpreter threads.
        batch_size: samples per invoke when the model's batch dimension is dynamic.

    Returns:
        ``(raw, real, output_details)``: outputs in the output dtype, the same dequantized
        to float32, and the output tensor details.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = {"auto": OpResolverType.AUTO, "ref": OpResolverType.BUILTIN_REF}[resolver]
    interp = Interpreter(
        model_content=bytes(tflite), num_threads=num_threads, experimental_op_resolver_type=kind
    )
    inp = interp.get_input_details()[0]
    dynamic = len(inp["shape_signature"]) > 0 and inp["shape_signature"][0] == -1
    step = batch_size if dynamic else int(inp["shape"][0])
    x = np.asarray(x)
    outs, current = [], None
    for start in range(0, len(x), step):
        chunk = quantize(x[start : start + step], inp)
        if tuple(chunk.shape) != current:
            interp.resize_tensor_input(inp["index"], list(chunk.shape), strict=False)
            interp.allocate_tensors()
            current = tuple(chunk.shape)
        interp.set_tensor(inp["index"], chunk)
        interp.invoke()
        out = interp.get_output_details()[0]
        outs.append(interp.get_tensor(out["index"]).copy())
    out = interp.get_output_details()[0]
    raw = np.concatenate(outs, axis=0)
    return raw, dequantize(raw, out), out


@dataclass(frozen=True)
class Agreement:
    """How closely the int8 model follows the float model on the same inputs.

    Attributes:
        n: number of samples compared.
        max_abs_diff: largest |float output - dequantized int8 output|.
        mean_abs_diff: mean of the same.
        output_scale: the output tensor's quantization step (0 for float outputs).
        max_diff_steps: ``max_abs_diff / output_scale``: the error in output LSBs.
        argmax_agreement: fraction of samples whose argmax (predicted class) is equal.
    """

    n: int
    max_abs_diff: float
    mean_abs_diff: float
    output_scale: float
    max_diff_steps: float
    argmax_agreement: float

    def __str__(self) -> str:
        return (
            f"argmax agreement {100 * self.argmax_agreement:.1f} % over {self.n} samples, "
            f"max |diff| {self.max_abs_diff:.4g} ({self.max_diff_steps:.1f} output steps)"
        )


def _dequantized_output_scale(tflite: bytes) -> float:
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


def check_agreement(model: Any, tflite: bytes, x: np.ndarray, *, resolver: str = "auto") -> Agreement:
    """Compare the float Keras model with its TFLite conversion on inputs ``x``.

    Args:
        model: the float Keras model.
        tflite: the converted model bytes.
        x: real-valued inputs ``(N, ...)``.
        resolver: LiteRT kernels, ``"auto"`` (XNNPACK) or ``"ref"``.

    Example:
        >>> check_agreement(model, tfl, x_test[:256]).argmax_agreement   # doctest: +SKIP
        0.996
    """
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        raise ValueError("check_agreement needs at least one sample")
    ref = np.concatenate(
        [np.asarray(model(x[i : i + 256], training=False)) for i in range(0, len(x), 256)]
    ).astype(np.float32)
    _, got, out = run_litert(tflite, x, resolver=resolver)
    ref = ref.reshape(got.shape)
    diff = np.abs(ref - got)
    scale, _ = _scale_zero_point(out)
    if not scale:  # float output: use the step of the int8 tensor that DEQUANTIZE reads
        scale = _dequantized_output_scale(tflite)
    flat_ref, flat_got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    return Agreement(
        n=len(x),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        output_scale=scale,
        max_diff_steps=float(diff.max() / scale) if scale else float("nan"),
        argmax_agreement=float(np.mean(flat_ref.argmax(1) == flat_got.argmax(1))),
    )
