"""The TFLite Micro arena operator by operator: which tensors are live, and which operator sets the peak.

:func:`memory_timeline` replays the ``GreedyMemoryPlanner`` port of :mod:`keras_wgsef.budget.hardware`
on the int8 graph a model converts to and reports, for every operator in execution order, the
buffers alive while it runs (activation tensors and the kernel's scratch buffers, with their
planned offsets), their bytes and the highest byte of the arena they reach. The operator whose
live buffers reach highest sets the planned (non-persistent) part of the arena; add the
persistent part (the tail: tensor structs, nodes, per-channel quantization, ...) and that is the
arena :func:`~keras_wgsef.budget.hardware.predict_arena_bytes` predicts, except where a
``Prepare`` or the planning itself needs more (:attr:`MemoryTimeline.arena` says which).

It answers "why does this model need this arena, and which layer would I narrow to shrink it":
the tensors live at the peak are the ones that cost arena bytes.

Example:
  >>> import keras
  >>> L = keras.layers
  >>> x = keras.Input((16, 16, 1))
  >>> h = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
  >>> h = L.Conv2D(4, 3, padding="same", activation="relu", name="c2")(L.MaxPooling2D(name="p")(h))
  >>> m = keras.Model(x, L.Dense(2, name="head")(L.GlobalAveragePooling2D(name="gap")(h)))
  >>> tl = memory_timeline(m)
  >>> tl.peak, tl.peak_op.kind, [b.name for b in tl.peak_op.live]   # the pooling: c1 and p live together
  (2560, 'MAX_POOL_2D', ['c1', 'p'])
  >>> tl.peak + tl.persistent == tl.arena
  True
  >>> print(tl.to_markdown().splitlines()[3])
  | 1 | MAX_POOL_2D | 2,560 | 2,560 | **peak** | c1 (16, 16, 8) 2,048 B @0; p (8, 8, 8) 512 B @2048 |
  >>> print(str(tl).splitlines()[4])
    3  AVERAGE_POOL_2D          272       272  c2 256, gap:average_pool_2d 16
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_wgsef.budget import hardware
from keras_wgsef.budget.lowered import LoweredModel

__all__ = ["LiveBuffer", "MemoryTimeline", "OpMemory", "memory_timeline"]


@dataclasses.dataclass(frozen=True)
class LiveBuffer:
    """One planned buffer alive during an operator.

    Attributes:
      name: the tensor's name (the Keras layer that writes it; ``scratch`` for a kernel's buffer).
      shape: the tensor's shape without the batch axis (``()`` for a scratch buffer).
      nbytes: the bytes planned for it (rounded up to 16).
      offset: where the planner puts it in the arena's non-persistent part.
      tensor: the tensor id in the lowered model (None for a scratch buffer).
    """

    name: str
    shape: tuple[int, ...]
    nbytes: int
    offset: int
    tensor: int | None

    def __str__(self) -> str:
        return f"{self.name} {self.shape} {self.nbytes:,} B @{self.offset}"


@dataclasses.dataclass(frozen=True)
class OpMemory:
    """The arena while one operator runs.

    Attributes:
      index: the operator's position in execution order.
      kind: its TFLite builtin name.
      live: the buffers alive, by offset.
      live_bytes: their bytes together.
      high: the highest byte they reach (offset + bytes): what the planned arena must hold here.
    """

    index: int
    kind: str
    live: tuple[LiveBuffer, ...]
    live_bytes: int
    high: int


@dataclasses.dataclass(frozen=True)
class MemoryTimeline(Sequence[OpMemory]):
    """Per operator, in execution order: :class:`OpMemory`; a sequence of them, plus the totals.

    Attributes:
      ops: the operators' :class:`OpMemory`.
      peak: the planned (non-persistent) arena: the highest ``high``, equal to
        :func:`~keras_wgsef.budget.hardware.plan_arena`.
      persistent: the persistent tail once the interpreter is ready (tensor and node structs,
        per-channel quantization, scratch handles, graph input/output tensors).
      arena: the predicted minimal arena (:func:`~keras_wgsef.budget.hardware.predict_arena_bytes`):
        ``peak + persistent`` unless a ``Prepare`` or the planning needs more.
    """

    ops: tuple[OpMemory, ...]
    peak: int
    persistent: int
    arena: int

    def __len__(self) -> int:
        return len(self.ops)

    def __getitem__(self, i: Any) -> Any:
        return self.ops[i]

    @property
    def peak_op(self) -> OpMemory:
        """The first operator whose live buffers reach the peak."""
        return next(o for o in self.ops if o.high == self.peak)

    def to_markdown(self, max_names: int = 6) -> str:
        """A Markdown table: operator, live bytes, highest byte, the peak marked, the live buffers."""
        rows = [
            "| # | operator | live bytes | arena high | | live buffers (name shape bytes @offset) |",
            "|---|---|---|---|---|---|",
        ]
        for o in self.ops:
            names = "; ".join(str(b) for b in o.live[:max_names])
            if len(o.live) > max_names:
                names += f"; ... {len(o.live) - max_names} more"
            mark = "**peak**" if o is self.peak_op else ""
            rows.append(f"| {o.index} | {o.kind} | {o.live_bytes:,} | {o.high:,} | {mark} | {names} |")
        rows.append("")
        rows.append(
            f"planned peak {self.peak:,} B (operator {self.peak_op.index}, {self.peak_op.kind}) + persistent "
            f"{self.persistent:,} B = {self.peak + self.persistent:,} B; predicted arena {self.arena:,} B"
        )
        return "\n".join(rows)

    def __str__(self) -> str:
        lines = [f"{'#':>3}  {'operator':<18} {'live B':>9} {'high B':>9}  live buffers"]
        for o in self.ops:
            mark = "*" if o is self.peak_op else " "
            names = ", ".join(f"{b.name} {b.nbytes:,}" for b in o.live)
            lines.append(f"{o.index:>3}{mark} {o.kind:<18} {o.live_bytes:>9,} {o.high:>9,}  {names}")
        lines.append(
            f"peak {self.peak:,} B at operator {self.peak_op.index} ({self.peak_op.kind}); persistent "
            f"{self.persistent:,} B; predicted arena {self.arena:,} B"
        )
        return "\n".join(lines)


def memory_timeline(source: Any, keep: Any = None, *, gap_as_avgpool: bool = True) -> MemoryTimeline:
    """The arena operator by operator for a model, a budget plan at given widths, or a lowered graph.

    Args:
      source: a built Keras model (lowered at its widths), a :class:`~keras_wgsef.BudgetPlan`
        (lowered at the support ``keep``), or a :class:`~keras_wgsef.budget.lowered.LoweredModel`
        (e.g. ``tflite_export.flatbuffer.lowered_model(tflite)``: the converted file's own graph).
      keep: for a ``BudgetPlan``, the boolean mask of the groups kept (default: all).
      gap_as_avgpool: for a Keras model, lower global average pooling as the exporter emits it
        (``AVERAGE_POOL_2D`` + reshape; a plan uses its own setting).

    Returns:
      the :class:`MemoryTimeline`.

    Raises:
      TypeError: ``source`` is none of these; ``keep`` given with a Keras model or lowered graph.
    """
    from keras_wgsef.budget.plan import BudgetPlan

    if isinstance(source, BudgetPlan):
        lm = source.lowered(np.ones(source.num_groups, bool) if keep is None else np.asarray(keep, bool))
    elif keep is not None:
        raise TypeError("keep is the group mask of a BudgetPlan; for a Keras model build it at the widths wanted.")
    elif isinstance(source, LoweredModel):
        lm = source
    elif hasattr(source, "layers") and hasattr(source, "inputs"):
        from keras_wgsef.budget.lowering import lowering_template

        lm = lowering_template(source).lower(gap_as_avgpool=gap_as_avgpool)
    else:
        raise TypeError(
            f"memory_timeline takes a Keras model, a BudgetPlan or a LoweredModel, got {type(source).__name__}."
        )
    return _timeline(lm)


def _timeline(lm: LoweredModel) -> MemoryTimeline:
    buffers = hardware.labelled_buffers(lm)
    offsets = hardware.plan_offsets(lm)
    ops = []
    for i, op in enumerate(lm.ops):
        live = []
        for (size, first, last, t), off in zip(buffers, offsets):
            if first <= i <= last:
                name, shape = ("scratch", ()) if t is None else (lm.name(t), lm.tensors[t].shape)
                live.append(LiveBuffer(name, shape, size, off, t))
        live.sort(key=lambda b: b.offset)
        ops.append(
            OpMemory(
                i,
                op.kind,
                tuple(live),
                sum(b.nbytes for b in live),
                max((b.offset + b.nbytes for b in live), default=0),
            )
        )
    tail = hardware.tail_structure(lm)
    persistent = tail["static"] + tail["channels"] + tail["scratch"] + tail["io"]
    peak = max((o.high for o in ops), default=0)
    return MemoryTimeline(tuple(ops), peak, persistent, hardware.predict_arena_bytes(lm))
