"""Predicted hardware costs of an int8 TFLite graph: flash bytes, TFLite Micro arena, instructions.

The budget controller needs, for every candidate set of widths, the three figures that
``tflite_export`` *measures* on a converted model: the ``.tflite`` size (flash), the smallest
TFLite Micro tensor arena (``tflite_export.micro.tflm_min_arena``) and the x86 callgrind
instruction count of one ``MicroInterpreter::Invoke()`` with the reference kernels
(``tflite_export.micro.count_instructions``). This module predicts them from a
:class:`~keras_wgsef.budget.lowered.LoweredModel`, with NumPy only. The constants live in
:mod:`keras_wgsef.budget.coefficients` (fitted by ``benchmarks/calibrate_costs.py``).

**Arena** (:func:`predict_arena_bytes`). TFLite Micro (``micro_allocator.cc``) splits the arena
into a *head* (non-persistent: the activation tensors and scratch buffers laid out by the
``GreedyMemoryPlanner``, plus temporary allocations while the graph is prepared) and a *tail*
(persistent structures, allocated downwards from the end). The smallest arena is the largest
of the demands at three moments of ``AllocateTensors()``:

* each operator's ``Prepare`` (:func:`_prepare_demands`): the tail so far, plus in the head the
  scratch-buffer request list (16 B x (12 + requests so far)) and the temporary ``TfLiteTensor``
  copies the kernel asks for (64 B each, plus 24 B + 4 + 4 x channels of quantization data);
* the planning (``CommitStaticMemoryPlan``): the request list, one 32 B ``AllocationInfo`` per
  tensor (constants included) and scratch buffer, and 40 B of planner state per planned buffer;
* the end: ``plan_arena(model)`` + the final tail.

:func:`plan_arena` replays the ``GreedyMemoryPlanner`` exactly: every activation tensor (bytes
rounded up to 16) and every kernel scratch buffer (``MEAN``/``SUM`` on int8: an int32
accumulator per output element, the iteration index and the resolved axes) lives from the
operator that first writes it (the graph inputs: from the start) to the last that reads it (the
graph outputs: to the end); buffers are placed largest first (ties: the later-added first), each
at the lowest offset where it fits between the buffers that are alive at the same time. The tail
is ``tail_base + 24 x tensors (constants included) + tail_per_op[kind]`` (the node, its parsed
options and the kernel's ``OpData``), plus 2 x round16(4 x channels) of per-channel output
multipliers and shifts of ``CONV_2D``/``DEPTHWISE_CONV_2D``/``FULLY_CONNECTED``, 8 B per scratch
buffer and ``tail_io`` per graph input and output (a persistent ``TfLiteTensor``, its
quantization and its pointer). The struct sizes are those of a 64-bit host build (the measuring one).

**Flash** (:func:`predict_flash_bytes`). The flatbuffer holds the constant buffers (int8 kernels,
int32 biases: ``round4(bytes) + 4`` each), the per-channel quantization of every kernel *and* bias
(float32 scale + int64 zero point: ~12 B per channel), per-tensor and per-operator records
(shape, type, quantization, operator inputs/outputs and options, one ``OperatorCode`` per kind)
and the tensor names::

    flash = base + data + sum_k per[k] x feature_k + sum over operators per_op[kind] + names

with the features of :func:`flash_features` (channels, activation tensors, their ranks, the
quantized ones, constant tensors, operator operands, distinct kinds). The names are the one part
the graph does not determine: the converter joins the Keras names of the layers it fuses
(``model_1/relu1_1/Relu;model_1/bn1_1/batchnorm/add_1;...``), 10-30 % of a small model's file.
They do not change with the widths, so pass ``name_bytes`` measured once on any width of the
architecture (``tflite_export.flatbuffer.tensor_name_bytes``); without it
:func:`estimate_name_bytes` uses per-kind averages (within ~10 % on the benchmark models).

**Instructions** (:func:`predict_instructions`). A per-``Invoke`` constant plus, over operators,
a non-negative linear model per operator kind of regressors derived from
:meth:`Op.features <keras_wgsef.budget.lowered.Op.features>` (:func:`instruction_features`).
The reference kernels skip the taps that fall into zero padding, so convolutions and pooling are
costed by their *effective* MACs and taps (``CONV_2D``: 8 instructions per effective MAC, plus
per-tap, per-row and per-output terms); stride and padding are inferred from the tensor shapes
and ``window`` (``kh x kw``, square when possible; a few small maps are ambiguous, e.g. 5x5 VALID
stride 1 and SAME stride 2 both turn 8 pixels into 4: SAME stride 2 is assumed). Operator kinds
the calibration did not cover use a conservative fallback: the largest per-operator constant,
plus the largest per-element cost times the input elements and the largest per-MAC cost times
the MACs of the calibrated kinds.

Example:
  >>> from keras_wgsef.budget.lowered import LoweredModel, Op, Tensor
  >>> t = {0: Tensor(0, (8, 8, 1)), 1: Tensor(1, (8, 8, 8)), 2: Tensor(2, (4, 4, 8))}
  >>> ops = [Op("CONV_2D", (0,), (1,), macs=8 * 8 * 9 * 8, window=9, weight_elems=72, bias_elems=8,
  ...           quant_channels=8), Op("MAX_POOL_2D", (1,), (2,), window=4)]
  >>> lm = LoweredModel(t, ops, (0,), (2,))
  >>> plan_arena(lm)   # conv output at 0, pool output at 512, the input (dead by then) shares its place
  640
  >>> sorted(predict(lm))
  ['arena_bytes', 'flash_bytes', 'instructions']
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_wgsef.budget.coefficients import COEFFICIENTS
from keras_wgsef.budget.lowered import LoweredModel, Op

__all__ = [
    "FLASH_FEATURES",
    "KERNEL_OPS",
    "constant_tensors",
    "estimate_name_bytes",
    "flash_features",
    "instruction_features",
    "labelled_buffers",
    "name_counts",
    "plan_arena",
    "plan_offsets",
    "planner_buffers",
    "predict",
    "predict_arena_bytes",
    "predict_flash_bytes",
    "predict_instructions",
    "tail_structure",
]

#: Operators with a kernel (weights) operand: per-channel output multipliers and shifts in the tail.
KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")

# --- TFLite Micro on a 64-bit host: alignment and struct sizes (micro_allocator.cc & co.) ---------
_ALIGN = 16  # MicroArenaBufferAlignment()
_EVAL_TENSOR = 24  # sizeof(TfLiteEvalTensor): one per tensor of the subgraph, constants included
_NODE = 64  # sizeof(NodeAndRegistration)
_TFLITE_TENSOR = 64  # sizeof(TfLiteTensor) (TF_LITE_STATIC_MEMORY build)
_AFFINE_QUANT = 24  # sizeof(TfLiteAffineQuantization)
_ALLOCATION_INFO = 32  # sizeof(AllocationInfo)
_PLANNER_PER_BUFFER = 40  # GreedyMemoryPlanner::per_buffer_size()
_SCRATCH_REQUEST = 16  # sizeof(internal::ScratchBufferRequest)
_MAX_SCRATCH_PER_OP = 12  # kMaxScratchBuffersPerOp
_SCRATCH_HANDLE = 8  # sizeof(ScratchBufferHandle)

# Temporary TfLiteTensor copies each kernel's Prepare asks for, in order: "in"/"out" an activation
# (one scale), "w"/"b" the kernel/bias (per-channel scales), "c" an unquantized constant operand.
_PREPARE_TEMPS: dict[str, tuple[str, ...]] = {
    "CONV_2D": ("out", "in", "w", "in", "w", "b", "out"),
    "DEPTHWISE_CONV_2D": ("out", "in", "w", "in", "w", "b", "out"),
    "FULLY_CONNECTED": ("in", "w", "b", "out"),
    "MEAN": ("in", "out", "c", "in", "c", "out"),  # PrepareMeanOrSumHelper, then PrepareSimple
    "SUM": ("in", "out", "c", "in", "c", "out"),
    "REDUCE_MAX": ("in", "out", "c"),
    "PAD": ("in", "c", "out"),
    "PADV2": ("in", "c", "in", "out"),
    "ADD": ("in", "in", "out"),
    "MUL": ("in", "in", "out"),
    "SUB": ("in", "in", "out"),
}
# Operands of each operator kind (TFLite arity); those that are not activation tensors are constants.
_ARITY = {
    "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 3, "TRANSPOSE_CONV": 4, "MEAN": 2, "SUM": 2,
    "REDUCE_MAX": 2, "REDUCE_MIN": 2, "RESHAPE": 2, "PAD": 2, "PADV2": 3, "STRIDED_SLICE": 4, "EXPAND_DIMS": 2,
}  # fmt: skip
_REDUCE_OPS = ("MEAN", "SUM")


def _round_up(n: int, a: int = _ALIGN) -> int:
    return (int(n) + a - 1) // a * a


# ------------------------------------------------------------------------------------------------
# Memory planner
# ------------------------------------------------------------------------------------------------


def _scratch_sizes(op: Op, model: LoweredModel) -> list[int]:
    """Scratch buffers (bytes) the reference kernel requests in Prepare (reduce_common.cc)."""
    if op.kind in _REDUCE_OPS and op.inputs and op.outputs:
        inp, out = model.tensors[op.inputs[0]], model.tensors[op.outputs[0]]
        rank = len(inp.shape) + 1  # with the batch axis
        if len(out.shape) < len(inp.shape):  # keep_dims=False: the reduced axes are gone
            num_axis = len(inp.shape) - len(out.shape)
        else:  # keep_dims=True: the reduced axes have size 1 (4 x num_axis rounds to 16 anyway)
            num_axis = max(1, sum(a != b for a, b in zip(inp.shape, out.shape)))
        sizes = [4 * rank, 4 * num_axis]
        if inp.dtype_bytes <= 2:  # int8/int16: an int32 accumulator per output element
            sizes.insert(0, 4 * out.elements)
        return sizes
    if op.kind == "REDUCE_MAX" and op.inputs:
        return [4 * (len(model.tensors[op.inputs[0]].shape) + 1), 4 * 2]
    return []


def planner_buffers(model: LoweredModel) -> list[tuple[int, int, int]]:
    """``(bytes rounded up to 16, first op, last op)`` of every buffer TFLM plans, in its order.

    Activation tensors come first, by tensor id (TFLM adds them in flatbuffer order), then the
    scratch buffers of each operator in execution order. Lifetimes are
    :meth:`LoweredModel.lifetimes`; a scratch buffer lives during its operator only.
    """
    return [b[:3] for b in labelled_buffers(model)]


def labelled_buffers(model: LoweredModel) -> list[tuple[int, int, int, int | None]]:
    """:func:`planner_buffers` with the tensor id of each (``None`` for a kernel's scratch buffer)."""
    life = model.lifetimes()
    out: list[tuple[int, int, int, int | None]] = [
        (_round_up(model.tensors[t].nbytes), *life[t], t) for t in sorted(life) if model.tensors[t].nbytes > 0
    ]
    for i, op in enumerate(model.ops):
        out += [(_round_up(s), i, i, None) for s in _scratch_sizes(op, model) if s > 0]
    return out


def plan_offsets(model: LoweredModel) -> list[int]:
    """The offset the ``GreedyMemoryPlanner`` gives each buffer of :func:`planner_buffers`."""
    return _greedy_offsets(planner_buffers(model))


def _greedy_offsets(buffers: Sequence[tuple[int, ...]]) -> list[int]:
    """Offsets ``GreedyMemoryPlanner::CalculateOffsetsIfNeeded`` gives (no offline-planned buffers)."""
    n = len(buffers)
    offsets = [0] * n
    if n == 0:
        return offsets
    # Reverse insertion order, then a stable sort by decreasing size (ReverseSortInPlace).
    order = sorted(range(n), key=lambda i: (-buffers[i][0], -i))
    placed: list[tuple[int, int]] = [(0, order[0])]  # (offset, buffer), sorted by offset
    keys = [0]
    for b in order[1:]:
        size, first, last = buffers[b]
        candidate = 0
        for off, other in placed:  # walk the offset-ordered list of buffers alive at the same time
            _, o_first, o_last = buffers[other]
            if o_first > last or first > o_last:
                continue
            if off - candidate >= size:
                break
            candidate = max(candidate, off + buffers[other][0])
        offsets[b] = candidate
        pos = bisect.bisect_right(keys, candidate)
        keys.insert(pos, candidate)
        placed.insert(pos, (candidate, b))
    return offsets


def plan_arena(model: LoweredModel) -> int:
    """Bytes of the non-persistent head that TFLM's ``GreedyMemoryPlanner`` lays out.

    The planner places the buffers of :func:`planner_buffers` largest first, each at the lowest
    offset where it does not overlap (in memory) a placed buffer that is alive at the same time;
    the result is the highest end offset.

    Example:
      >>> from keras_wgsef.budget.lowered import LoweredModel, Op, Tensor
      >>> t = {0: Tensor(0, (100,)), 1: Tensor(1, (40,)), 2: Tensor(2, (30,)), 3: Tensor(3, (10,))}
      >>> ops = [Op("FULLY_CONNECTED", (0,), (1,)), Op("FULLY_CONNECTED", (1,), (2,)),
      ...        Op("FULLY_CONNECTED", (2,), (3,))]
      >>> plan_arena(LoweredModel(t, ops, (0,), (3,)))   # 112 + 48, then 32 and 16 reuse the 112
      160
    """
    buffers = planner_buffers(model)
    offsets = _greedy_offsets(buffers)
    return max((o + b[0] for o, b in zip(offsets, buffers)), default=0)


# ------------------------------------------------------------------------------------------------
# Arena
# ------------------------------------------------------------------------------------------------


def _constant_operands(op: Op, model: LoweredModel | None = None) -> int:
    """Constant tensors an operator reads: kernel, bias, and the constant operands of its kind.

    The kernel and bias count when present (``weight_elems``, ``bias_elems``); other operands of
    the kind's arity that are not activation tensors are constants (reduction axes, shape,
    paddings; ``STRIDED_SLICE`` has 3, of which the converter shares the equal end and strides);
    ``PACK`` packs its activation inputs with constants up to the length of its output.
    """
    if op.kind in KERNEL_OPS or op.kind == "TRANSPOSE_CONV":
        return int(op.weight_elems > 0) + int(op.bias_elems > 0) + (op.kind == "TRANSPOSE_CONV")
    if op.kind == "PACK" and model is not None and op.outputs:
        out = model.tensors[op.outputs[0]].shape
        return max(0, (out[0] if len(out) == 1 else 0) - len(op.inputs))
    return max(0, _ARITY.get(op.kind, 0) - len(op.inputs)) + (-1 if op.kind == "STRIDED_SLICE" else 0)


def constant_tensors(model: LoweredModel) -> int:
    """Constant tensors of the flatbuffer: every operator's constant operands, equal small constants once.

    :func:`_constant_operands` per operator, less those whose :attr:`Op.constants` key an earlier
    operator already has (the converter stores equal axes and shapes once: a 1-D model's
    ``EXPAND_DIMS`` share their axis, its squeezes to the same shape their shape).
    """
    seen: set[Any] = set()
    n = 0
    for op in model.ops:
        n += _constant_operands(op, model)
        n -= sum(k in seen for k in op.constants)
        seen.update(op.constants)
    return n


def _channel_arrays(op: Op, model: LoweredModel) -> int:
    """Per-channel output multipliers and shifts a kernel's Prepare allocates in the tail."""
    if op.kind not in KERNEL_OPS or not op.weight_elems:
        return 0
    if op.kind == "FULLY_CONNECTED":
        channels = max(1, op.quant_channels)
    else:  # the kernel's output channels, per-channel quantized or not
        out = model.tensors[op.outputs[0]] if op.outputs else None
        channels = out.shape[-1] if out is not None and out.shape else max(1, op.quant_channels)
    return 2 * _round_up(4 * channels)


def _temp_bytes(op: Op, model: LoweredModel) -> int:
    """Head bytes of the temporary TfLiteTensors one Prepare allocates (they are freed together)."""
    roles = _PREPARE_TEMPS.get(op.kind)
    if roles is None:
        if op.kind == "CONCATENATION":
            roles = ("in", "out", *("in",) * len(op.inputs))
        else:
            roles = ("in",) * len(op.inputs) + ("out",) * len(op.outputs)
    channels = max(1, op.quant_channels)
    p = 0
    for role in roles:
        if role == "b" and not op.bias_elems:
            continue
        p = _round_up(p, 8) + _TFLITE_TENSOR
        if role == "c":
            continue
        scales = channels if role in ("w", "b") else 1
        p = _round_up(p, 8) + _AFFINE_QUANT
        p = _round_up(p, 4) + 4 + 4 * scales
    return p


def tail_structure(model: LoweredModel, coefficients: Mapping[str, Any] | None = None) -> dict[str, int]:
    """The persistent tail, by stage: ``static`` (before Prepare), ``channels``, ``scratch``, ``io``.

    ``static = tail_base + 24 x (activation + constant tensors) + sum tail_per_op[kind]``; unknown
    kinds use ``tail_per_op_default``.
    """
    c = (coefficients or COEFFICIENTS)["arena"]
    per_op: Mapping[str, int] = c["tail_per_op"]
    n_tensors = len(model.tensors) + constant_tensors(model)
    static = int(c["tail_base"]) + _EVAL_TENSOR * n_tensors
    static += sum(_NODE + int(per_op.get(op.kind, c["tail_per_op_default"])) for op in model.ops)
    scratch = sum(len(_scratch_sizes(op, model)) for op in model.ops)
    return {
        "static": static,
        "channels": sum(_channel_arrays(op, model) for op in model.ops),
        "scratch": _round_up(_SCRATCH_HANDLE * scratch) if scratch else 0,
        "io": int(c["tail_io"]) * (len(model.inputs) + len(model.outputs)),
        "tensors": n_tensors,
        "scratch_buffers": scratch,
    }


def _prepare_demands(model: LoweredModel, tail: Mapping[str, int]) -> list[int]:
    """Arena needed during each operator's Prepare: its head (requests + temps) + the tail then.

    The tail includes the operator's own per-channel arrays: ``CONV_2D`` and ``DEPTHWISE_CONV_2D``
    allocate them before their last temporaries; ``FULLY_CONNECTED`` after them, where they may
    overlap a few bytes of temporaries that are no longer read (counted anyway: at most 32 B
    conservative).
    """
    demands = []
    channels = scratch = 0
    for op in model.ops:
        channels += _channel_arrays(op, model)
        head = _SCRATCH_REQUEST * (_MAX_SCRATCH_PER_OP + scratch) + _temp_bytes(op, model)
        demands.append(_round_up(head, 8) + tail["static"] + channels)
        scratch += len(_scratch_sizes(op, model))
    return demands


def predict_arena_bytes(model: LoweredModel, coefficients: Mapping[str, Any] | None = None) -> int:
    """Smallest TFLite Micro arena (``tflm_min_arena``) for the model: the largest phase demand.

    ``max(prepare demands, planning demand, plan_arena + tail)`` (see the module docstring).
    """
    tail = tail_structure(model, coefficients)
    before_io = tail["static"] + tail["channels"] + tail["scratch"]
    n_plan = len(planner_buffers(model))
    head = _SCRATCH_REQUEST * (_MAX_SCRATCH_PER_OP + tail["scratch_buffers"]) + 8
    head = _round_up(head, 8) + _ALLOCATION_INFO * (tail["tensors"] + tail["scratch_buffers"])
    planning = _round_up(head) + _PLANNER_PER_BUFFER * n_plan + before_io
    final = _round_up(plan_arena(model)) + before_io + tail["io"]
    return int(max([final, planning, *_prepare_demands(model, tail)]))


# ------------------------------------------------------------------------------------------------
# Flash
# ------------------------------------------------------------------------------------------------


FLASH_FEATURES = ("data", "channels", "tensors", "ranks", "quantized", "constants", "operands", "kinds")


def flash_features(model: LoweredModel) -> dict[str, float]:
    """Regressors of the flash model's structural part (names excluded).

    ``data``: bytes of the kernel and bias buffers (``round4(bytes) + 4`` each); ``channels``:
    per-channel quantization entries of kernels and biases; ``tensors``/``ranks``/``quantized``:
    activation tensors, their ranks (batch axis included) and those with quantization (int8 and
    int16); ``constants``: constant tensors; ``operands``: operator input and output entries;
    ``kinds``: distinct operator kinds (one ``OperatorCode`` each).
    """
    data = channels = operands = 0
    for op in model.ops:
        if op.weight_elems:
            data += _round_up(op.weight_elems, 4) + 4
        if op.bias_elems:
            data += 4 * op.bias_elems + 4
        if op.kind in KERNEL_OPS and op.weight_elems:
            channels += max(1, op.quant_channels) * (1 + int(op.bias_elems > 0))
        operands += len(op.inputs) + len(op.outputs) + _constant_operands(op, model)
    constants = constant_tensors(model)
    acts = list(model.tensors.values())
    return {
        "data": float(data),
        "channels": float(channels),
        "tensors": float(len(acts)),
        "ranks": float(sum(len(t.shape) + 1 for t in acts)),
        "quantized": float(sum(t.dtype_bytes <= 2 for t in acts)),
        "constants": float(constants),
        "operands": float(operands),
        "kinds": float(len(set(model.op_kinds))),
    }


def name_counts(model: LoweredModel) -> dict[str, dict[str, int]]:
    """Per kind: operators (``ops``) and their outputs that are not graph outputs (``outputs``)."""
    ops: dict[str, int] = {}
    outputs: dict[str, int] = {}
    final = set(model.outputs)
    for op in model.ops:
        ops[op.kind] = ops.get(op.kind, 0) + 1
        outputs[op.kind] = outputs.get(op.kind, 0) + sum(t not in final for t in op.outputs)
    return {"ops": ops, "outputs": outputs}


def estimate_name_bytes(model: LoweredModel, coefficients: Mapping[str, Any] | None = None) -> int:
    """Flatbuffer bytes of the tensor names, estimated: the graph does not determine them.

    ``names.input x inputs + names.output x outputs + sum over operators of names.per_op[kind]``
    (its constants' names) ``+ names.per_output[kind]`` per output that is not a graph output:
    averages over the calibration models (conv/depthwise layers mostly followed by BatchNorm and
    ReLU, model and layer names of 3-12 characters). The converter joins the names of the Keras
    layers it fuses (``model_1/relu1_1/Relu;model_1/bn1_1/batchnorm/add_1;...``), so real names
    can be half or twice as long. Names do not change with the widths: measuring them once on any
    width of an architecture (``tflite_export.flatbuffer.tensor_name_bytes``) and passing
    ``name_bytes`` to :func:`predict_flash_bytes` is exact.
    """
    c = (coefficients or COEFFICIENTS)["flash"]["names"]
    per_op: Mapping[str, float] = c["per_op"]
    per_output: Mapping[str, float] = c["per_output"]
    counts = name_counts(model)
    total = float(c["input"]) * len(model.inputs) + float(c["output"]) * len(model.outputs)
    total += sum(n * float(per_op.get(k, c["per_op_default"])) for k, n in counts["ops"].items())
    total += sum(n * float(per_output.get(k, c["per_output_default"])) for k, n in counts["outputs"].items())
    return round(total)


def predict_flash_bytes(
    model: LoweredModel, coefficients: Mapping[str, Any] | None = None, *, name_bytes: int | None = None
) -> int:
    """Size of the int8 ``.tflite`` file (see the module docstring for the formula).

    Args:
      model: the lowered graph.
      coefficients: the fitted constants (default: :mod:`keras_wgsef.budget.coefficients`).
      name_bytes: the flatbuffer bytes of the tensor names when known (e.g. measured with
        ``tflite_export.flatbuffer.tensor_name_bytes`` on another width of the same
        architecture: names do not depend on widths); default: :func:`estimate_name_bytes`.
    """
    c = (coefficients or COEFFICIENTS)["flash"]
    f = flash_features(model)
    total = float(c["base"]) + f["data"]
    total += sum(float(c["per"][k]) * f[k] for k in FLASH_FEATURES if k != "data")
    per_op: Mapping[str, float] = c["per_op"]
    total += sum(float(per_op.get(op.kind, c["per_op_default"])) for op in model.ops)
    total += estimate_name_bytes(model, coefficients) if name_bytes is None else int(name_bytes)
    return round(total)


# ------------------------------------------------------------------------------------------------
# Instructions
# ------------------------------------------------------------------------------------------------

_WINDOW_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D")


def _axis_geometry(size: int, out: int, k: int) -> tuple[int, int] | None:
    """``(stride, pad_before)`` that turn ``size`` into ``out`` with a ``k`` window, or None.

    The shapes do not always tell: an 8-pixel axis gives 4 outputs with a 5-tap window at stride
    1 VALID and at stride 2 SAME. Strides 1 and 2 come first (SAME before VALID, then the smaller
    stride), then larger strides (pooling windows) the same way.
    """
    strides = range(1, max(size, 1) + 1)
    for group in ([s for s in strides if s <= 2], [s for s in strides if s > 2]):
        for s in group:
            if -(-size // s) == out:  # SAME
                return s, max((out - 1) * s + k - size, 0) // 2
        for s in group:
            if size >= k and (size - k) // s + 1 == out:  # VALID
                return s, 0
    return None


def _valid_pairs(size: int, out: int, k: int) -> tuple[int, int]:
    """(output position, tap) pairs along one axis that fall inside the input, and all of them."""
    geometry = _axis_geometry(size, out, k)
    if geometry is None:
        return out * k, out * k
    s, pad = geometry
    pos = np.arange(out)[:, None] * s + np.arange(k)[None, :] - pad
    return int(np.count_nonzero((pos >= 0) & (pos < size))), out * k


def _window(op: Op, model: LoweredModel) -> tuple[int, int, int, int] | None:
    """``(valid y pairs, valid x pairs, kh, kw)`` of a convolution or pooling, or None."""
    if not op.inputs or not op.outputs:
        return None
    shape_in, shape_out = model.tensors[op.inputs[0]].shape, model.tensors[op.outputs[0]].shape
    if len(shape_in) != 3 or len(shape_out) != 3:
        return None
    (h, w, _), (ho, wo, _) = shape_in, shape_out
    best: tuple[int, int, int, int] | None = None
    best_score = None
    for kh in range(1, op.window + 1):
        if op.window % kh:
            continue
        kw = op.window // kh
        gy, gx = _axis_geometry(h, ho, kh), _axis_geometry(w, wo, kw)
        # a window taller or wider than its input is unlikely (a 1-D layer's is 1 x k on a 1 x T map)
        score = (gy is None) + (gx is None), (kh > h) + (kw > w), abs(kh - kw)
        if best_score is None or score < best_score:
            best_score = score
            best = (_valid_pairs(h, ho, kh)[0], _valid_pairs(w, wo, kw)[0], kh, kw)
    return best


def instruction_features(op: Op, model: LoweredModel) -> dict[str, float]:
    """Regressors of one operator's instruction count (a linear model per kind).

    Always: ``one``, the :meth:`Op.features` (``macs``, ``taps``, ``in_elems``, ``out_elems``,
    ``out_channels``), ``out_pixels`` (output elements per channel), ``out_bytes``. Convolutions
    and pooling add the effective counts the reference kernels execute (taps in zero padding
    skipped): ``macs_eff``, ``taps_eff``, ``rows`` (output elements x kh: the filter-row loop),
    ``rows_eff`` (filter rows inside the input) and ``row_taps`` (taps of those rows);
    broadcasting element-wise operators add ``bcast_elems``; ``CONCATENATION`` adds ``copies``
    (one block copy per input per outer index); ``SOFTMAX`` adds ``rows`` (softmax rows).
    """
    f: dict[str, float] = {k: float(v) for k, v in op.features(model).items()}
    f["one"] = 1.0
    out = model.tensors[op.outputs[0]] if op.outputs else None
    channels = max(1.0, f["out_channels"])
    f["out_pixels"] = f["out_elems"] / channels
    f["out_bytes"] = float(sum(model.tensors[t].nbytes for t in op.outputs))
    if op.kind in _WINDOW_OPS:
        geo = _window(op, model)
        if geo is not None and out is not None:
            vy, vx, kh, kw = geo
            ho, wo, _ = out.shape
            nominal = ho * kh * wo * kw
            frac = vy * vx / nominal if nominal else 1.0
            f["macs_eff"] = f["macs"] * frac
            f["taps_eff"] = f["taps"] * frac
            f["rows"] = f["out_elems"] * kh
            f["rows_eff"] = f["out_elems"] * vy / max(1, ho)
            f["row_taps"] = f["rows_eff"] * kw
        else:
            f["macs_eff"], f["taps_eff"], f["row_taps"] = f["macs"], f["taps"], f["taps"]
            f["rows"] = f["rows_eff"] = f["out_elems"]
    elif op.kind in ("ADD", "MUL", "SUB") and out is not None:
        same = all(model.tensors[t].shape == out.shape for t in op.inputs)
        f["bcast_elems"] = 0.0 if same else f["out_elems"]
    elif op.kind == "CONCATENATION" and out is not None:
        axis = _concat_axis(op, model)
        outer = math.prod(out.shape[:axis]) if axis is not None else f["out_pixels"]
        f["copies"] = float(outer * max(1, len(op.inputs)))
    elif op.kind == "SOFTMAX" and out is not None:
        f["rows"] = f["out_elems"] / max(1, out.shape[-1] if out.shape else 1)
    return f


def _concat_axis(op: Op, model: LoweredModel) -> int | None:
    out = model.tensors[op.outputs[0]].shape
    shapes = [model.tensors[t].shape for t in op.inputs]
    if any(len(s) != len(out) for s in shapes):
        return None
    for axis in range(len(out)):
        rest = out[:axis] + out[axis + 1 :]
        if sum(s[axis] for s in shapes) == out[axis] and all(s[:axis] + s[axis + 1 :] == rest for s in shapes):
            return axis
    return None


def _op_instructions(op: Op, model: LoweredModel, c: Mapping[str, Any]) -> float:
    f = instruction_features(op, model)
    coef = c["per_op"].get(op.kind)
    if coef is None:
        coef = c["fallback"]
    return float(sum(float(v) * f.get(name, 0.0) for name, v in coef.items()))


def predict_instructions(model: LoweredModel, coefficients: Mapping[str, Any] | None = None) -> int:
    """x86 callgrind instructions of one TFLM ``Invoke()`` (reference kernels): per-op linear models."""
    c = (coefficients or COEFFICIENTS)["instructions"]
    total = float(c["invoke"]) + sum(_op_instructions(op, model, c) for op in model.ops)
    return round(total)


def predict(
    model: LoweredModel, coefficients: Mapping[str, Any] | None = None, *, name_bytes: int | None = None
) -> dict[str, int]:
    """All three predictions: ``flash_bytes``, ``arena_bytes``, ``instructions``.

    ``name_bytes``: see :func:`predict_flash_bytes`.
    """
    return {
        "flash_bytes": predict_flash_bytes(model, coefficients, name_bytes=name_bytes),
        "arena_bytes": predict_arena_bytes(model, coefficients),
        "instructions": predict_instructions(model, coefficients),
    }
