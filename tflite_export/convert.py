"""Full-integer (int8) TFLite conversion of Keras 3 models, with checks on LiteRT.

The path that works with TensorFlow 2.21 and Keras 3:
``tf.lite.TFLiteConverter.from_keras_model`` with ``Optimize.DEFAULT``, a representative
dataset, ``TFLITE_BUILTINS_INT8`` and int8 inference input/output types. Every tensor is
then affine-quantized, ``real = scale * (q - zero_point)`` (:mod:`tflite_export.quantization`).

Example (``model`` a small Keras CNN, ``x`` 8x8 digits):
    >>> tfl = to_tflite_int8(model, x[:100])
    >>> tfl[4:8]
    b'TFL3'
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from tflite_export.console import capture_output

__all__ = ["CalibrationError", "ConversionError", "calibration_samples", "to_tflite_int8"]

log = logging.getLogger(__name__)


#: operators the dynamic batch leaves behind (a recurrent layer's zero state, attention's reshapes)
#: that TFLite Micro cannot run on computed shapes; a model that has them converts with batch 1
BATCH_DEPENDENT_OPS = {"FILL", "REDUCE_PROD"}


class CalibrationError(ValueError):
    """The calibration (representative) data cannot be used for this model."""


class ConversionError(RuntimeError):
    """The TFLite converter failed, or its output does not run on LiteRT."""


def _model_input_shape(model: Any) -> tuple[int | None, ...]:
    inputs = model.inputs if getattr(model, "inputs", None) else None
    if inputs is None:
        raise CalibrationError(
            "the model has no defined input; build it first (e.g. keras.Input(shape) or "
            "model.build((None, ...))) before converting"
        )
    if len(inputs) != 1:
        raise CalibrationError(f"the model has {len(inputs)} inputs; only single-input models are supported")
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) > 1:
        raise CalibrationError(
            f"the model has {len(outputs)} outputs; the int8 export, its checks and the report take single-output "
            "models: export keras.Model(model.inputs, model.outputs[i]) for the output you deploy"
        )
    return tuple(inputs[0].shape)


def _first_tensor(element: Any) -> Any:
    """Take the input part of a dataset/generator element: x, (x, y), [x] or {'x': ...}."""
    if isinstance(element, dict):
        if len(element) != 1:
            raise CalibrationError("calibration elements are dicts with several keys; yield the input array only")
        element = next(iter(element.values()))
    while isinstance(element, (tuple, list)):
        if not element:
            raise CalibrationError("a calibration element is an empty tuple/list")
        element = element[0]
    if hasattr(element, "numpy"):
        element = element.numpy()
    return np.asarray(element)


def _check_array(arr: np.ndarray, shape: tuple[int | None, ...], where: str, integer: bool = False) -> np.ndarray:
    """Return ``arr`` as a float32 batch (int32 for a model with integer inputs: token ids), checked."""
    if integer:
        if arr.dtype.kind not in "iu":
            raise CalibrationError(
                f"calibration data {where} has dtype {arr.dtype}; the model takes integer inputs (token ids), "
                "so pass them as integers, as for training"
            )
    elif arr.dtype.kind not in "f":
        raise CalibrationError(
            f"calibration data {where} has dtype {arr.dtype}; it must be floating point, "
            "preprocessed exactly as for training (e.g. x.astype('float32') / 255)"
        )
    feature = shape[1:]
    if arr.ndim == len(feature):  # a single unbatched sample
        arr = arr[None]
    if arr.ndim != len(shape) or any(d is not None and d != a for d, a in zip(feature, arr.shape[1:], strict=True)):
        want = "(N, " + ", ".join("?" if d is None else str(d) for d in feature) + ")"
        raise CalibrationError(
            f"calibration data {where} has shape {tuple(arr.shape)} but the model expects {want}; "
            "pass samples shaped like the model input (add or drop axes, e.g. x[..., None])"
        )
    if integer:
        return arr.astype(np.int32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise CalibrationError(f"calibration data {where} contains NaN or infinite values; remove or fix those samples")
    return arr.astype(np.float32, copy=False)


def calibration_samples(model: Any, data: Any, num_calibration: int | None = None) -> np.ndarray:
    """Validate calibration data and return it as one float32 array ``(N, *input_shape)`` (int32 for integer inputs).

    Args:
        model: the Keras model whose single input the data feeds.
        data: a NumPy array ``(N, ...)``, a ``tf.data.Dataset`` (batched or not, elements
            ``x`` or ``(x, y)``), an iterable or generator of such elements, or a callable
            returning one (a TFLite ``representative_dataset`` yielding ``[x]`` works too).
        num_calibration: keep at most this many samples (default: all).

    Raises:
        CalibrationError: empty data, non-float dtype, wrong shape or non-finite values.

    Example:
        >>> calibration_samples(model, x, 200).shape
        (200, 8, 8, 1)
    """
    shape = _model_input_shape(model)
    integer = "int" in str(model.inputs[0].dtype)  # token ids (Embedding): the input stays int32
    if num_calibration is not None and num_calibration < 1:
        raise CalibrationError(f"num_calibration must be >= 1, got {num_calibration}")
    if data is None:
        raise CalibrationError("no calibration data given; pass ~100-500 training samples")
    if isinstance(data, np.ndarray) or (
        hasattr(data, "shape") and hasattr(data, "dtype") and not hasattr(data, "element_spec")
    ):
        arr = _check_array(np.asarray(data), shape, "(array)", integer)
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
            arr = _check_array(_first_tensor(element), shape, f"(element {i})", integer)
            arrays.append(arr)
            total += len(arr)
            if num_calibration is not None and total >= num_calibration:
                break
    out = np.concatenate(arrays, axis=0) if arrays else np.zeros((0,), np.float32)
    if num_calibration is not None:
        out = out[:num_calibration]
    if out.shape[0] == 0:
        raise CalibrationError("calibration data is empty; pass ~100-500 representative training samples")
    return out


def _convert(model: Any, representative_dataset: Any, int8_io: bool, quiet: bool) -> bytes:
    import tensorflow as tf

    with capture_output(quiet) as captured, warnings.catch_warnings():
        # said on every int8-I/O conversion; the input's scale comes from the representative data instead
        # of the legacy mean/std statistics it asks for, so it is noise to a user of the export
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected", category=UserWarning)
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
            f"TFLite int8 conversion failed: {_failing_op(str(error), model)}{detail}. An operator without an "
            "int8 kernel is the usual cause: replace that layer or exclude it from the model"
            + (f" (converter log: {' '.join(captured.getvalue().split())[-400:]})" if quiet else "")
        ) from error
    return bytes(tflite)


def _failing_op(message: str, model: Any) -> str:
    """``"operator X (from layer 'name', Class) has no int8 TFLite kernel. "`` read from a converter error."""
    import re

    op = re.search(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message) or re.search(
        r'fused\["(\w+):', message
    )
    if op is None:
        return ""
    names = {layer.name: type(layer).__name__ for layer in getattr(model, "layers", [])}
    scope = re.search(r'fused\["\w+:", "([^"@]+)', message)
    parts = scope.group(1).split("/")[1:] if scope else []  # model scope, then the layer ("odd_1": call 1)
    candidates = [q for p in parts for q in (p, re.sub(r"_\d+$", "", p))]
    layer = next((q for q in candidates if q in names), None)
    where = f" (from layer {layer!r}, {names[layer]})" if layer else ""
    return f"operator {op.group(1)}{where} has no int8 TFLite kernel. "


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
    not modified. The passes of :data:`tflite_export.passes.CONVERT` run first (recurrent layers
    unrolled over their static time steps: the same function, checked), and a model whose
    dynamic-batch conversion leaves :data:`BATCH_DEPENDENT_OPS` (attention, recurrent state) is
    converted after :data:`tflite_export.passes.BATCH_OF_ONE` (a fixed batch of one, checked),
    which TFLite Micro runs.

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
        >>> tfl = to_tflite_int8(model, x[:200])
        >>> (tmp / "model.tflite").write_bytes(tfl) == len(tfl)
        True
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ConversionError(
            f"int8 conversion runs on the TensorFlow backend, and Keras runs on {keras.backend.backend()!r}: "
            "save the model (model.save('m.keras')) and export it with `wgsef-export m.keras ...` (which uses "
            "TensorFlow), or set KERAS_BACKEND=tensorflow before importing Keras."
        )
    samples = calibration_samples(model, representative, num_calibration)
    from tflite_export.passes import BATCH_OF_ONE, CONVERT, Context, run_passes

    ctx = Context(sample=samples[:8])
    run = run_passes(model, CONVERT, ctx)  # TensorList loops have no int8 kernel
    model = run.model
    for name, result in run.results:
        for line in result.notes:
            log.info("converted after %s: %s", name, line)

    def representative_dataset() -> Iterator[list[np.ndarray]]:
        for i in range(len(samples)):
            yield [samples[i : i + 1]]

    tflite = _convert(model, representative_dataset, int8_io, quiet)
    from tflite_export.flatbuffer import summarize

    if set(summarize(tflite).op_names) & BATCH_DEPENDENT_OPS:  # TFLM cannot run them on computed shapes
        tflite = _convert(run_passes(model, BATCH_OF_ONE, ctx).model, representative_dataset, int8_io, quiet)
        log.info("converted with a fixed batch of 1 (the dynamic batch left FILL / REDUCE_PROD operators)")
    if check:
        try:
            from tflite_export.litert import check_agreement

            with capture_output(quiet):
                agreement = check_agreement(model, tflite, samples[: min(len(samples), 64)])
        except Exception as exc:
            raise ConversionError(f"the converted model does not run on LiteRT: {exc}") from exc
        log.info("int8 vs float on %d calibration samples: %s", agreement.n, agreement)
    return bytes(tflite)
