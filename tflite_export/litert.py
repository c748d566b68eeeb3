"""Running int8 models on the LiteRT interpreter (host CPU): batches, agreement with float, latency.

* :func:`run_litert`: a single-input, single-output model over a batch (quantizing the inputs);
* :func:`check_agreement`: the int8 model against the float Keras model (:class:`Agreement`);
* :func:`latency_us`: median and p90 invoke time after a warm-up (host figures, noisy: never a test).

Example:
    >>> raw, real, details = run_litert(tfl, x[:8])
    >>> raw.dtype, real.shape
    (dtype('int8'), (8, 10))
    >>> check_agreement(model, tfl, x[:64]).argmax_agreement > 0.9
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tflite_export.console import capture_output
from tflite_export.quantization import dequantize, dequantized_output_scale, quantize, scale_zero_point

__all__ = ["Agreement", "check_agreement", "compare_outputs", "float_outputs", "latency_us", "run_litert"]


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
    interp = Interpreter(model_content=bytes(tflite), num_threads=num_threads, experimental_op_resolver_type=kind)
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
        max_abs_diff: largest ``|float output - dequantized int8 output|``.
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


def check_agreement(model: Any, tflite: bytes, x: np.ndarray, *, resolver: str = "auto") -> Agreement:
    """Compare the float Keras model with its TFLite conversion on inputs ``x``.

    Args:
        model: the float Keras model.
        tflite: the converted model bytes.
        x: real-valued inputs ``(N, ...)``.
        resolver: LiteRT kernels, ``"auto"`` (XNNPACK) or ``"ref"``.

    Example:
        >>> check_agreement(model, tfl, x[:256]).argmax_agreement > 0.9
        True
    """
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        raise ValueError("check_agreement needs at least one sample")
    _, got, out = run_litert(tflite, x, resolver=resolver)
    return compare_outputs(float_outputs(model, x), got, out, tflite)


def float_outputs(model: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The float Keras model's outputs on ``x`` (inference mode, in batches), as float32.

    Example:
        >>> float_outputs(model, x[:3]).shape
        (3, 10)
    """
    x = np.asarray(x, dtype=np.float32)
    return np.concatenate(
        [np.asarray(model(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
    ).astype(np.float32)


def compare_outputs(reference: np.ndarray, got: np.ndarray, output_details: dict, tflite: bytes) -> Agreement:
    """:class:`Agreement` of float outputs ``reference`` with the int8 model's dequantized outputs ``got``.

    ``output_details`` is the LiteRT output tensor's (its scale is the output step); a float output
    is measured in steps of the int8 tensor its DEQUANTIZE reads, found in ``tflite``.
    """
    ref = np.asarray(reference, dtype=np.float32).reshape(got.shape)
    diff = np.abs(ref - got)
    scale, _ = scale_zero_point(output_details)
    if not scale:  # float output: use the step of the int8 tensor that DEQUANTIZE reads
        scale = dequantized_output_scale(tflite)
    flat_ref, flat_got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    return Agreement(
        n=len(ref),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        output_scale=scale,
        max_diff_steps=float(diff.max() / scale) if scale else float("nan"),
        argmax_agreement=float(np.mean(flat_ref.argmax(1) == flat_got.argmax(1))),
    )


def latency_us(
    tflite: bytes, sample: np.ndarray, resolver: str = "auto", runs: int = 100, warmup: int = 10, threads: int = 1
) -> tuple[float, float]:
    """Median and 90th percentile of ``invoke()`` in microseconds, after ``warmup`` invokes.

    ``resolver``: ``"auto"`` (XNNPACK) or ``"ref"`` (reference kernels). Host wall-clock figures:
    noisy on a shared machine and not what a microcontroller sees.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = {"auto": OpResolverType.AUTO, "ref": OpResolverType.BUILTIN_REF}[resolver]
    with capture_output():
        interp = Interpreter(model_content=tflite, num_threads=threads, experimental_op_resolver_type=kind)
        interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], quantize(sample.reshape(inp["shape"]), inp))
    for _ in range(warmup):
        interp.invoke()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        interp.invoke()
        times[i] = time.perf_counter() - t0
    return float(np.median(times) * 1e6), float(np.percentile(times, 90) * 1e6)
