"""Measure an int8 ``.tflite`` model the way a firmware engineer needs it.

:func:`measure` gathers, into a :class:`Report` (TFLM parts from :mod:`tflite_export.micro`):

* from the flatbuffer: file bytes, parameters, MACs, operator list;
* on LiteRT (host CPU, 1 thread by default): latency median and p90 after a warm-up, with
  XNNPACK (``OpResolverType.AUTO``) and with the reference kernels (``BUILTIN_REF``).
  These are *host* figures; they do not predict microcontroller time;
* on TFLite Micro (reference kernels, as on a microcontroller): the smallest tensor arena
  with which the interpreter can be built (binary search; the allocator's own total is
  recorded too), and the instruction count of one ``MicroInterpreter::Invoke()`` under
  valgrind callgrind: deterministic, the figure to compare models by;
* with labels: int8 accuracy on LiteRT and on TFLM, and how closely TFLM's outputs follow
  LiteRT's (in output LSBs; kernels may round differently by 1-2 LSB).

The TFLM figures need the ``micro`` extra (tflite-micro, Linux x86_64) and instruction counts also
valgrind; without them those figures are None and a note says which figure needs what.

Arena sizes are measured on a 64-bit host; a 32-bit microcontroller build needs a little less
for the interpreter's own structures, so they are safe upper bounds (add the usual margin).

Example:
    >>> r = measure(tfl, x[:100], y[:100], latency=False, instructions=False)
    >>> r.file_bytes == len(tfl), 0.0 <= r.accuracy_litert <= 1.0, r.tflm_arena_bytes > 0
    (True, True, True)
    >>> r.save(tmp / "report.json"); Report.load(tmp / "report.json") == r
    True
    >>> "| .tflite bytes |" in compare(r, r)
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from keras_wgsef.tables import format_table
from tflite_export.console import StageProgress, capture_output
from tflite_export.flatbuffer import read_tflite, summarize
from tflite_export.litert import compare_outputs, float_outputs, latency_us, run_litert
from tflite_export.micro import (
    ArenaProbe,
    count_instructions_many,
    micro_missing,
    run_tflm,
    tflm_interpreter,
    tflm_min_arena,
    working_arena,
)
from tflite_export.quantization import dequantized_output_scale, quantize
from tflite_export.versions import tool_versions

#: the version of the layout of :meth:`Report.to_dict` (``report.json``, ``wgsef-export --json``)
SCHEMA_VERSION = 1

__all__ = ["SCHEMA_VERSION", "Report", "accuracy_applies", "class_accuracy", "compare", "measure"]


@dataclass
class Report:
    """Figures of one int8 model. Prints as a Markdown table; saves and loads as JSON.

    Latencies are host figures (the host CPU through LiteRT), not MCU figures; the
    TFLM arena and instruction count are what to compare models by. ``budget`` holds the bounds
    of a budgeted export, their measured and predicted figures and the groups removed after
    measurement (:mod:`tflite_export.budget_fit`). ``rewrites`` lists the
    cheaper-operator substitutions :func:`tflite_export.export` made (:mod:`tflite_export.rewrite`);
    ``tflm_instructions_without_rewrite`` is the instruction count of the same model converted
    without them (so the saving is ``tflm_instructions_without_rewrite - tflm_instructions``).
    ``tools`` holds the versions of keras-wgsef, Keras, TensorFlow, LiteRT and tflite-micro that
    measured it (:func:`tflite_export.versions.tool_versions`; None for one not installed), and
    ``schema_version`` the layout of the JSON form.
    """

    name: str = "model"
    file_bytes: int = 0
    params: int = 0
    macs: int = 0
    weight_bytes: int = 0
    ops: list[str] = field(default_factory=list)
    input_shape: list[int] = field(default_factory=list)
    input_type: str = ""
    output_type: str = ""
    host: str = ""
    latency_runs: int = 0
    latency_warmup: int = 0
    num_threads: int = 1
    litert_xnnpack_median_us: float | None = None
    litert_xnnpack_p90_us: float | None = None
    litert_ref_median_us: float | None = None
    litert_ref_p90_us: float | None = None
    tflm_arena_bytes: int | None = None
    tflm_arena_reported: int | None = None
    tflm_instructions: int | None = None
    tflm_instructions_without_rewrite: int | None = None
    rewrites: list[str] = field(default_factory=list)
    budget: dict[str, Any] | None = None
    n_eval: int = 0
    accuracy_litert: float | None = None
    n_tflm: int = 0
    accuracy_tflm: float | None = None
    tflm_vs_litert_max_lsb: int | None = None
    tflm_vs_litert_argmax_agreement: float | None = None
    float_accuracy: float | None = None
    int8_vs_float_argmax_agreement: float | None = None
    int8_vs_float_max_steps: float | None = None
    notes: list[str] = field(default_factory=list)
    tools: dict[str, str | None] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    _ROWS = (
        ("file_bytes", ".tflite bytes", "int"),
        ("params", "parameters", "int"),
        ("macs", "MACs / inference", "int"),
        ("float_accuracy", "float accuracy %", "pct"),
        ("accuracy_litert", "int8 accuracy % (LiteRT)", "pct"),
        ("accuracy_tflm", "int8 accuracy % (TFLM)", "pct"),
        ("int8_vs_float_argmax_agreement", "int8 vs float argmax agreement %", "pct"),
        ("int8_vs_float_max_steps", "int8 vs float max diff (output steps)", "f1"),
        ("tflm_vs_litert_max_lsb", "TFLM vs LiteRT max diff (LSB)", "int"),
        ("tflm_arena_bytes", "TFLM arena bytes (minimal)", "int"),
        ("tflm_instructions", "TFLM instructions / inference", "int"),
        ("tflm_instructions_without_rewrite", "TFLM instructions / inference without the op rewrite", "int"),
        ("litert_xnnpack_median_us", "host latency LiteRT XNNPACK median us", "f1"),
        ("litert_xnnpack_p90_us", "host latency LiteRT XNNPACK p90 us", "f1"),
        ("litert_ref_median_us", "host latency LiteRT reference median us", "f1"),
        ("litert_ref_p90_us", "host latency LiteRT reference p90 us", "f1"),
    )

    @staticmethod
    def _fmt(value: Any, kind: str) -> str:
        if value is None:
            return "n/a"
        if kind == "int":
            return f"{int(value):,}"
        if kind == "pct":
            return f"{100 * value:.2f}"
        return f"{value:.1f}"

    def record_agreement(self, agreement: Any, where: str = "") -> None:
        """Stores an int8-vs-float :class:`tflite_export.litert.Agreement` (and a note saying on what)."""
        self.int8_vs_float_argmax_agreement = agreement.argmax_agreement
        self.int8_vs_float_max_steps = agreement.max_diff_steps
        self.notes.append(f"int8 vs float{f' ({where})' if where else ''}: {agreement}")

    def to_markdown(self) -> str:
        """The report as a Markdown table (plus notes)."""
        rows = [
            (label, self._fmt(getattr(self, attr), kind))
            for attr, label, kind in self._ROWS  # the count without the rewrite only when something was rewritten
            if not (attr == "tflm_instructions_without_rewrite" and self.tflm_instructions_without_rewrite is None)
        ]
        rows.append(("operators", ", ".join(self.ops)))
        lines = [format_table((self.name, "value"), rows, markdown=True)]
        extra = [
            f"host: {self.host}; latency over {self.latency_runs} runs after "
            f"{self.latency_warmup} warm-up, {self.num_threads} thread(s); "
            f"accuracy on {self.n_eval} samples (TFLM: {self.n_tflm})"
        ]
        extra += [f"cheaper operator: {line}" for line in self.rewrites]
        if self.budget:
            b = self.budget
            extra += [
                f"budget {c}: measured {b['measured'][c]:,} of {bound:,} (predicted {b['predicted'][c]:,})"
                for c, bound in b["bounds"].items()
            ]
            removed = b["removed_after_measurement"]
            extra.append(
                f"budget: {len(removed)} group(s) removed after measurement ({', '.join(removed[:8])}"
                f"{', ...' if len(removed) > 8 else ''})"
                if removed
                else "budget: the trained support met every bound as measured; nothing removed"
            )
        return "\n".join(lines + [""] + [f"- {n}" for n in extra + self.notes]) + "\n"

    __str__ = to_markdown
    _repr_markdown_ = to_markdown  # a notebook renders the table, not the dataclass repr

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write the report as JSON."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Report:
        """Read a report written by :meth:`save` (unknown keys are ignored)."""
        with open(path) as f:
            data = json.load(f)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def compare(a: Report, b: Report) -> str:
    """Side-by-side Markdown table of two reports with the ratio ``b / a`` per figure.

    Example:
        >>> a, b = Report(name="dense", file_bytes=1000), Report(name="sparse", file_bytes=400)
        >>> print(compare(a, b).splitlines()[2])
        | .tflite bytes | 1,000 | 400 | 0.400 |
    """
    rows = []
    for attr, label, kind in Report._ROWS:
        va, vb = getattr(a, attr), getattr(b, attr)
        if va is None and vb is None:
            continue
        ratio = f"{vb / va:.3f}" if va and vb is not None and kind != "pct" else ""
        rows.append((label, Report._fmt(va, kind), Report._fmt(vb, kind), ratio))
    header = ("metric", a.name, b.name, f"{b.name} / {a.name}")
    note = "Latencies are host (LiteRT on this CPU) figures, not MCU figures."
    return f"{format_table(header, rows, markdown=True)}\n\n{note}\n"


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y)).astype(np.int64)


def accuracy_applies(output_shape: tuple[int, ...], y: np.ndarray) -> str | None:
    """None when argmax accuracy means something here, else the reason it does not.

    It does for a ``(batch, classes)`` output (``classes >= 2``) with integer class labels in range
    (or one-hot rows of the same width); not for a segmentation map, a regression output or float
    targets, where the argmax over a flattened output would be reported as an accuracy.

    Example:
        >>> accuracy_applies((1, 10), np.array([3, 7])) is None
        True
        >>> accuracy_applies((1, 8, 8, 2), np.zeros((2, 8, 8)))
        'the output (1, 8, 8, 2) is not a (batch, classes) vector'
    """
    shape = tuple(int(s) for s in output_shape)
    if len(shape) != 2 or shape[-1] < 2:
        return f"the output {shape} is not a (batch, classes) vector"
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[-1] == shape[-1]:
        return None  # one-hot
    if y.ndim > 1 and not (y.ndim == 2 and y.shape[-1] == 1):
        return f"the labels have shape {y.shape}, not one class index per sample"
    flat = y.reshape(len(y))
    if not (np.issubdtype(flat.dtype, np.integer) or np.all(np.equal(np.mod(flat, 1), 0))):
        return "the labels are not integer class indices"
    if flat.size and (flat.min() < 0 or flat.max() >= shape[-1]):
        return f"the labels range over [{flat.min()}, {flat.max()}], outside the {shape[-1]} classes"
    return None


def class_accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    """Fraction of samples whose argmax output is the label (class indices or one-hot).

    The one place where accuracy is computed: for the float model, LiteRT and TFLite Micro alike.
    Raises for outputs and labels :func:`accuracy_applies` refuses.

    Example:
        >>> class_accuracy(np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), np.array([1, 0, 0]))
        0.6666666666666666
    """
    out = np.asarray(outputs)
    why = accuracy_applies((1, *out.shape[1:]), y)
    if why is not None:
        raise ValueError(f"no classification accuracy here: {why}.")
    labels = _labels(y)
    if len(labels) != len(out):
        raise ValueError(f"{len(out)} outputs but {len(labels)} labels; pass one label per sample")
    return float(np.mean(out.reshape(len(out), -1).argmax(1) == labels))


def measure(
    tflite: bytes | str | os.PathLike,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    *,
    name: str = "model",
    runs: int = 100,
    warmup: int = 10,
    num_threads: int = 1,
    latency: bool = True,
    arena: bool = True,
    instructions: bool | Literal["auto"] = "auto",
    tflm_samples: int = 1000,
    lsb_tolerance: int = 2,
    float_model: Any = None,
    without_rewrite: bytes | None = None,
    progress: StageProgress | None = None,
) -> Report:
    """Measure a ``.tflite`` model: size, MACs, host latency, TFLM arena and instructions.

    Args:
        tflite: model bytes or path.
        x: real-valued inputs ``(N, ...)`` (quantized here); the first sample drives the
            latency and instruction runs (zeros when omitted).
        y: labels (class indices or one-hot) for the int8 accuracy.
        name: the model's name in tables.
        runs, warmup: timed and warm-up invokes per LiteRT latency figure.
        num_threads: LiteRT threads.
        latency, arena: measure these (both on by default; the arena needs tflite-micro, the
            ``micro`` extra: without it ``tflm_arena_bytes`` is None and a note says so).
        instructions: ``True`` counts (error if valgrind or tflite-micro is missing), ``"auto"``
            counts when both are installed and notes the skip otherwise, ``False`` skips.
        tflm_samples: at most this many samples run on TFLM (one invoke each); 0 skips the TFLM
            accuracy (``accuracy_tflm`` stays None and a note says so).
        lsb_tolerance: TFLM vs LiteRT output difference that is noted as acceptable.
        float_model: the Keras model the ``.tflite`` came from: with ``x`` its float accuracy
            (with ``y``) and the int8-vs-float agreement are reported too.
        without_rewrite: the same model converted without the operator rewrite
            (:mod:`tflite_export.rewrite`): its instruction count is taken in the same callgrind
            run and stored as ``tflm_instructions_without_rewrite``.
        progress: reports the stages as they start (:class:`tflite_export.console.StageProgress`).

    Raises:
        UnsupportedOpError (tflite_export.micro): an operator has no TFLite Micro kernel.

    Example:
        >>> measure(tfl, x[:50], y[:50], latency=False, arena=False, instructions=False).n_eval
        50
    """
    data = read_tflite(tflite)
    summary = summarize(data)
    report = Report(
        name=name, file_bytes=len(data), params=summary.params, macs=summary.macs,
        weight_bytes=summary.weight_bytes, ops=summary.op_names,
        input_shape=list(summary.input_shapes[0]), input_type=summary.input_types[0],
        output_type=summary.output_types[0], host=f"{platform.machine()} {platform.system()} "
        f"({os.cpu_count()} CPUs), LiteRT host figures, not MCU figures",
        latency_runs=runs if latency else 0, latency_warmup=warmup, num_threads=num_threads,
        tools=tool_versions(),
    )  # fmt: skip
    progress = progress or StageProgress(0)
    no_micro = micro_missing()
    skipped: list[str] = []  # the TFLM figures not measured because tflite-micro is missing
    if tflm_samples < 0:
        raise ValueError(f"measure: tflm_samples must be >= 0 (0: no TFLM accuracy), got {tflm_samples}")
    if x is not None:
        x = np.asarray(x)
        if len(x) == 0:
            raise ValueError("measure: x is empty; pass at least one sample or None")
    sample = x[:1] if x is not None else np.zeros(summary.input_shapes[0], np.float32)
    if latency or (x is not None and (y is not None or float_model is not None)):
        progress.start("LiteRT", ("latency, " if latency else "") + "int8 outputs on the LiteRT interpreter")
    if latency:
        report.litert_xnnpack_median_us, report.litert_xnnpack_p90_us = latency_us(
            data, sample, "auto", runs, warmup, num_threads
        )
        report.litert_ref_median_us, report.litert_ref_p90_us = latency_us(
            data, sample, "ref", max(1, runs // 4), max(1, warmup // 4), num_threads
        )
    if x is not None and (y is not None or float_model is not None):
        with capture_output():
            raw, real, out_details = run_litert(data, x, num_threads=num_threads)
    arena_size = None
    if no_micro is not None:
        skipped += ["arena"] if arena else []
    elif arena:
        progress.start("arena search", "the smallest TFLite Micro arena (binary search)")
        arena_size, report.tflm_arena_reported = tflm_min_arena(data)
        report.tflm_arena_bytes = arena_size
    else:
        with ArenaProbe(data) as probe:  # still fail early on unsupported operators
            arena_size = working_arena(probe, data)
    no_accuracy = None if y is None else accuracy_applies(summary.output_shapes[0], y)
    if no_accuracy is not None:
        report.notes.append(f"accuracy not reported: {no_accuracy} (argmax accuracy would mean nothing)")
        y = None
    if x is not None and y is not None:
        labels = _labels(y)
        if len(labels) != len(x):
            raise ValueError(f"measure: {len(x)} inputs but {len(labels)} labels; pass matching x and y")
        pred = raw.reshape(len(x), -1)
        report.n_eval = len(x)
        report.accuracy_litert = class_accuracy(pred, labels)
        n = min(len(x), tflm_samples)
        if n == 0:
            report.notes.append("TFLM accuracy not measured (tflm_samples=0)")
        elif no_micro is not None:
            skipped.append("TFLM accuracy")
        else:
            progress.start("TFLM accuracy", f"{n} samples, one invoke each")
            micro = run_tflm(data, x[:n], arena_size=arena_size).reshape(n, -1)
            report.n_tflm = n
            report.accuracy_tflm = class_accuracy(micro, labels[:n])
            if micro.dtype.kind == "f":  # float outputs: count in steps of the int8 tensor before DEQUANTIZE
                step = dequantized_output_scale(data) or 1.0
                diff = np.rint(np.abs(micro.astype(np.float64) - pred[:n]) / step).astype(np.int64)
            else:
                diff = np.abs(micro.astype(np.int64) - pred[:n].astype(np.int64))
            report.tflm_vs_litert_max_lsb = int(diff.max())
            report.tflm_vs_litert_argmax_agreement = float(np.mean(micro.argmax(1) == pred[:n].argmax(1)))
            if diff.max() > lsb_tolerance:
                report.notes.append(
                    f"TFLM and LiteRT outputs differ by up to {int(diff.max())} LSB (tolerance {lsb_tolerance})"
                )
    if float_model is not None and x is not None:
        reference = float_outputs(float_model, x)
        if y is not None:
            report.float_accuracy = class_accuracy(reference, y)
        report.record_agreement(compare_outputs(reference[:1000], real[:1000], out_details, data))
    if instructions and no_micro is not None:
        if instructions is True:
            raise ImportError(micro_missing("instructions=True counts instructions on TFLite Micro"))
        skipped.append("instructions")
    elif instructions:
        assert arena_size is not None  # found above whenever TFLite Micro is installed
        inp = summary.input_shapes[0]
        details = tflm_interpreter(data, arena_size).get_input_details(0)
        xq = quantize(np.asarray(sample).reshape(inp), details)
        items = [(data, xq, arena_size)]
        if without_rewrite is not None:  # same input tensor (same calibration); an arena with room to spare
            other = read_tflite(without_rewrite)
            items.append((other, xq, max(2 * arena_size, 64 * 1024, 10 * len(other))))
        try:
            if shutil.which("valgrind") is not None:
                progress.start("callgrind", f"instructions of {len(items)} inference(s) under valgrind, 10 s or more")
            counts = count_instructions_many(items)
            report.tflm_instructions = counts[0]
            if without_rewrite is not None:
                report.tflm_instructions_without_rewrite = counts[1]
        except FileNotFoundError as exc:
            if instructions is True:
                raise
            report.notes.append(f"instruction count skipped: {exc}")
    else:
        report.notes.append("instruction count not requested")
    if skipped:
        report.notes.append(str(micro_missing(f"not measured: {', '.join(skipped)}")))
    return report
