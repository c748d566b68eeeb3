"""A smaller TFLite Micro arena by operator order: the same operators, run in another topological order.

TFLite Micro plans its tensor arena from the operator order of the main subgraph: each activation
tensor occupies its buffer from the operator that writes it to the last operator that reads it (graph
inputs from the first operator, graph outputs to the last), and the ``GreedyMemoryPlanner`` packs
those lifetimes. On a graph with branches (a residual shortcut, parallel branches merged by ``ADD``
or ``CONCATENATION``) several orders compute the same outputs, and the order decides which tensors
are alive at the same time. Liberis & Lane (*Neural networks on microcontrollers: saving memory at
inference via operator reordering*, arXiv:1910.05110) pick the order with the smallest peak of live
activation bytes by a dynamic programme over the sets of operators already run. Every operator
computes exactly what it computed before, so the outputs are bit-identical.

* :func:`peak_bytes`: the peak of live activation bytes of one order of a :class:`TensorGraph`.
* :func:`best_order`: the order with the smallest peak. The dynamic programme visits each set of
  executed operators that is closed under dependencies (a chain has ``n + 1`` of them, two parallel
  branches of ``a`` and ``b`` operators ``(a + 1)(b + 1)``); it is exact while those sets number at
  most ``max_states`` (100,000 by default). Above that limit it falls back to a greedy order (at
  each step the ready operator with the smallest peak while it runs, then the smallest live bytes
  after it, then the earliest in the original order) and ``OrderSearch.exact`` is False.
* :func:`refine_order`: many orders share the smallest peak, and TFLM's greedy planner packs them
  with more or fewer gaps. A local search (move one operator, keep the order valid and its peak not
  above the starting one) lowers a given cost; :func:`reorder_for_arena` uses the planner's arena as
  :func:`keras_wgsef.budget.hardware.plan_arena` lays it out (within a few dozen bytes of TFLM's).
* :func:`reorder_for_arena`: reads a ``.tflite`` file, searches the order, and rewrites the operator
  list of subgraph 0 in place: the offsets of its vector are permuted and no other byte changes.
  A model whose order is already the best (a plain chain has a single order) comes back unchanged.
* :func:`reorder_for_tflm`: what :func:`tflite_export.export` calls: reorders, measures the TFLM arena
  before and after with :func:`tflite_export.micro.tflm_min_arena`, keeps the order with the smaller
  measured arena and says so in a note.

Sizes are the tensor bytes rounded up to 16 (TFLM's buffer alignment). The peak is what the order
controls; the arena TFLM needs is at least that peak plus its own bookkeeping, and the greedy planner
may leave gaps, which is why the export measures both orders.

Example:
    >>> g = TensorGraph(                      # x -> wide -> merge <- narrow <- x
    ...     op_inputs=((0,), (0,), (1,), (2, 3)), op_outputs=((1,), (2,), (3,), (4,)),
    ...     sizes={0: 16, 1: 1024, 2: 64, 3: 16, 4: 16}, inputs=(0,), outputs=(4,))
    >>> peak_bytes(g, (0, 1, 2, 3))           # the wide tensor waits while the narrow branch runs
    1104
    >>> best_order(g)                         # finish the wide branch first
    OrderSearch(order=(0, 2, 1, 3), peak=1056, exact=True)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keras_wgsef.budget.lowered import LoweredModel

__all__ = [
    "DEFAULT_MAX_STATES",
    "OrderSearch",
    "ReorderReport",
    "TensorGraph",
    "TflmReorder",
    "best_order",
    "graph_of",
    "peak_bytes",
    "permute_operators",
    "refine_order",
    "reorder_for_arena",
    "reorder_for_tflm",
]

#: Sets of executed operators the exact search may visit before it falls back to the greedy order.
DEFAULT_MAX_STATES = 100_000
_ALIGN = 16  # TFLM's MicroArenaBufferAlignment()
# Operators whose effect is not only their output tensors (resource variables, control flow, random
# state): their relative order matters beyond the data dependencies, so such models keep their order.
_ORDERED_OPS = frozenset(
    {
        "ASSIGN_VARIABLE", "READ_VARIABLE", "VAR_HANDLE", "CALL_ONCE", "CALL", "IF", "WHILE",
        "RANDOM_UNIFORM", "RANDOM_STANDARD_NORMAL", "MULTINOMIAL",
    }
)  # fmt: skip
_OPERATORS_FIELD = 10  # vtable offset of SubGraph.operators (fields: tensors 4, inputs 6, outputs 8, operators 10)


@dataclass(frozen=True)
class TensorGraph:
    """Operators as the activation tensors they read and write.

    Attributes:
      op_inputs: per operator, the ids of the tensors it reads.
      op_outputs: per operator, the ids of the tensors it writes.
      sizes: bytes of each activation tensor; ids not listed (constants) are ignored.
      inputs: the graph's input tensors (alive from the first operator on).
      outputs: the graph's output tensors (alive until the last operator has run).
    """

    op_inputs: tuple[tuple[int, ...], ...]
    op_outputs: tuple[tuple[int, ...], ...]
    sizes: Mapping[int, int]
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.op_inputs) != len(self.op_outputs):
            raise ValueError(
                f"op_inputs has {len(self.op_inputs)} operators and op_outputs {len(self.op_outputs)}; "
                "give both lists one entry per operator"
            )
        written: dict[int, int] = {}
        for i, outs in enumerate(self.op_outputs):
            for t in outs:
                if t in written or t in self.inputs:
                    raise ValueError(f"tensor {t} is written twice (operator {i}); each tensor has one producer")
                written[t] = i

    @property
    def num_ops(self) -> int:
        return len(self.op_inputs)

    def producers(self) -> dict[int, int]:
        """``{tensor: operator that writes it}`` for the activation tensors."""
        return {t: i for i, outs in enumerate(self.op_outputs) for t in outs if t in self.sizes}

    def predecessors(self) -> list[int]:
        """Per operator, the bit mask of the operators whose outputs it reads."""
        prod = self.producers()
        return [sum({1 << prod[t] for t in ins if t in prod}) for ins in self.op_inputs]


class _Liveness:
    """Incremental live bytes of a :class:`TensorGraph` as operators run (shared by all searches)."""

    def __init__(self, graph: TensorGraph) -> None:
        sizes = graph.sizes
        self.preds = graph.predecessors()
        consumers: dict[int, int] = {}
        for i, ins in enumerate(graph.op_inputs):
            for t in ins:
                if t in sizes:
                    consumers[t] = consumers.get(t, 0) | (1 << i)
        self.consumers = consumers
        kept = set(graph.outputs)
        self.kept = kept
        self.start = sum(sizes[t] for t in set(graph.inputs) if t in sizes)
        # Inputs no operator reads die after the first operator (TFLM gives them the lifetime [0, 0]).
        self.unread_inputs = sum(
            sizes[t] for t in set(graph.inputs) if t in sizes and t not in consumers and t not in kept
        )
        self.writes = [sum(sizes[t] for t in set(outs) if t in sizes) for outs in graph.op_outputs]
        self.stays = [
            sum(sizes[t] for t in set(outs) if t in sizes and (t in kept or t in consumers))
            for outs in graph.op_outputs
        ]
        self.reads = [[(t, sizes[t]) for t in set(ins) if t in sizes and t not in kept] for ins in graph.op_inputs]

    def step(self, done: int, live: int, v: int) -> tuple[int, int]:
        """Running operator ``v`` after the set ``done``: ``(bytes alive while it runs, bytes alive after)``."""
        during = live + self.writes[v]
        after_done = done | (1 << v)
        freed = sum(b for t, b in self.reads[v] if not self.consumers[t] & ~after_done)
        if done == 0:
            freed += self.unread_inputs
        return during, live + self.stays[v] - freed

    def ready(self, done: int, n: int) -> Iterable[int]:
        return (v for v in range(n) if not done >> v & 1 and self.preds[v] & ~done == 0)


def peak_bytes(graph: TensorGraph, order: Sequence[int]) -> int:
    """The largest sum of live activation bytes while the operators run in ``order``.

    A tensor is alive from the operator that writes it (graph inputs: from the start) to the last
    operator that reads it (graph outputs: to the end), both included.

    Raises:
      ValueError: ``order`` is not a permutation of the operators that runs each after its inputs' producers.

    Example:
        >>> g = TensorGraph(((0,), (1,)), ((1,), (2,)), {0: 32, 1: 64, 2: 16}, (0,), (2,))
        >>> peak_bytes(g, [0, 1])
        96
    """
    n = graph.num_ops
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must list each of the {n} operators once, got {list(order)}")
    lv = _Liveness(graph)
    done, live, peak = 0, lv.start, lv.start
    for v in order:
        if lv.preds[v] & ~done:
            raise ValueError(f"order runs operator {v} before an operator whose output it reads")
        during, live = lv.step(done, live, v)
        peak = max(peak, during)
        done |= 1 << v
    return peak


@dataclass(frozen=True)
class OrderSearch:
    """The order :func:`best_order` found, its peak of live bytes, and whether it is proven smallest."""

    order: tuple[int, ...]
    peak: int
    exact: bool


def _greedy_order(graph: TensorGraph, lv: _Liveness) -> tuple[int, ...]:
    n = graph.num_ops
    done, live, order = 0, lv.start, []
    for _ in range(n):
        (_, live), v = min((lv.step(done, live, u), u) for u in lv.ready(done, n))
        order.append(v)
        done |= 1 << v
    return tuple(order)


def best_order(graph: TensorGraph, *, max_states: int = DEFAULT_MAX_STATES) -> OrderSearch:
    """The operator order with the smallest :func:`peak_bytes` (Liberis & Lane's dynamic programme).

    The search runs over the sets of operators already executed that are closed under dependencies;
    the best peak of a set is the smallest, over its last operator ``v``, of the larger of the best
    peak without ``v`` and the bytes alive while ``v`` runs. Among equal peaks the order of the first
    set reached is kept, and when the original order ``0, 1, ..., n-1`` is valid and as good it is returned.

    Args:
      graph: the operators and their activation tensors.
      max_states: the most sets the exact search visits; above it the greedy order of the module
        docstring is returned with ``exact=False``.

    Returns:
      An :class:`OrderSearch`.

    Example:
        >>> chain = TensorGraph(((0,), (1,)), ((1,), (2,)), {0: 32, 1: 64, 2: 16}, (0,), (2,))
        >>> best_order(chain)
        OrderSearch(order=(0, 1), peak=96, exact=True)
    """
    n = graph.num_ops
    original = tuple(range(n))
    lv = _Liveness(graph)
    layer: dict[int, tuple[int, int]] = {0: (lv.start, lv.start)}  # set -> (best peak, live bytes)
    back: dict[int, tuple[int, int]] = {}  # set -> (previous set, last operator)
    visited = 1
    exact = True
    for _ in range(n):
        nxt: dict[int, tuple[int, int]] = {}
        for done, (peak, live) in layer.items():
            for v in lv.ready(done, n):
                during, after = lv.step(done, live, v)
                cand = max(peak, during)
                s = done | (1 << v)
                if s not in nxt:
                    nxt[s] = (cand, after)
                    back[s] = (done, v)
                    visited += 1
                elif cand < nxt[s][0]:
                    nxt[s] = (cand, after)
                    back[s] = (done, v)
        layer = nxt
        if not layer:
            raise ValueError("the operators read each other's outputs in a cycle: no order runs them all")
        if visited > max_states:
            exact = False
            break
    if exact:
        full = (1 << n) - 1
        steps = []
        s = full
        while s:
            s, v = back[s]
            steps.append(v)
        order = tuple(reversed(steps))
        peak = layer[full][0] if n else lv.start
    else:
        order = _greedy_order(graph, lv)
        peak = peak_bytes(graph, order)
    if all(lv.preds[v] >> v == 0 for v in range(n)):  # the given order runs each operator after its inputs
        base = peak_bytes(graph, original)
        if base <= peak:
            order, peak = original, base
    return OrderSearch(order, peak, exact)


def refine_order(
    graph: TensorGraph, order: Sequence[int], cost: Callable[[tuple[int, ...]], int], *, max_evals: int = 5000
) -> tuple[int, ...]:
    """A local search from ``order`` for a lower ``cost`` among the orders whose peak is not higher.

    A move takes one operator to another position between its producers and its consumers; the
    first move that lowers ``cost`` without raising :func:`peak_bytes` above ``order``'s is taken,
    and the scan starts again, until no move helps or ``max_evals`` orders were tried.

    Example:
        >>> g = TensorGraph(((0,), (0,), (1, 2)), ((1,), (2,), (3,)), {0: 16, 1: 16, 2: 16, 3: 16}, (0,), (3,))
        >>> refine_order(g, (0, 1, 2), cost=lambda o: o.index(1))   # prefer operator 1 early
        (1, 0, 2)
    """
    preds = graph.predecessors()
    succs = [sum(1 << w for w in range(graph.num_ops) if preds[w] >> v & 1) for v in range(graph.num_ops)]
    best = tuple(order)
    bound, best_cost, evals = peak_bytes(graph, best), cost(best), 1
    improved = True
    while improved and evals < max_evals:
        improved = False
        for i, v in enumerate(best):
            rest = best[:i] + best[i + 1 :]
            lo = max((k + 1 for k, u in enumerate(rest) if preds[v] >> u & 1), default=0)
            hi = min((k for k, u in enumerate(rest) if succs[v] >> u & 1), default=len(rest))
            for j in range(lo, hi + 1):  # v's new index: after its producers, before its consumers
                if j == i:
                    continue
                cand = (*rest[:j], v, *rest[j:])
                evals += 1
                if peak_bytes(graph, cand) > bound:
                    continue
                c = cost(cand)
                if c < best_cost:
                    best, best_cost, improved = cand, c, True
                    break
                if evals >= max_evals:
                    break
            if improved or evals >= max_evals:
                break
    return best


def graph_of(tflite: bytes | bytearray | str | os.PathLike) -> TensorGraph:
    """The :class:`TensorGraph` of a ``.tflite`` model's main subgraph, sizes rounded up to 16 bytes.

    Reads the activation tensors of :func:`tflite_export.flatbuffer.lowered_model` (non-constant
    tensors; bytes are the elements of the stored shape times the element size).
    """
    from tflite_export.flatbuffer import lowered_model

    return _graph(lowered_model(tflite))


def _graph(lm: LoweredModel) -> TensorGraph:
    return TensorGraph(
        op_inputs=tuple(tuple(op.inputs) for op in lm.ops),
        op_outputs=tuple(tuple(op.outputs) for op in lm.ops),
        sizes={t: -(-tensor.nbytes // _ALIGN) * _ALIGN for t, tensor in lm.tensors.items()},
        inputs=tuple(lm.inputs),
        outputs=tuple(lm.outputs),
    )


def _planned_arena(lm: LoweredModel, order: Sequence[int]) -> int:
    """The arena TFLM's greedy planner lays out for the activations and scratch buffers in ``order``."""
    from keras_wgsef.budget.hardware import plan_arena
    from keras_wgsef.budget.lowered import LoweredModel

    return plan_arena(LoweredModel(lm.tensors, [lm.ops[i] for i in order], lm.inputs, lm.outputs, lm.names))


def permute_operators(tflite: bytes | bytearray | str | os.PathLike, order: Sequence[int]) -> bytes:
    """The model with the operators of subgraph 0 in ``order`` (``order[j]`` runs j-th); no other byte changes.

    The operator list is a flatbuffer vector of offsets to the operator tables: each entry is
    rewritten to point at the table of ``order[j]``. The tables themselves, the tensors, the buffers
    and the metadata are untouched.

    Raises:
      ValueError: ``order`` is not a permutation of the subgraph's operators.
    """
    from tflite_export.flatbuffer import load_schema, read_tflite

    data = bytearray(read_tflite(tflite))
    schema = load_schema()
    sg = schema.Model.GetRootAsModel(data, 0).Subgraphs(0)
    n = sg.OperatorsLength()
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must list each of the {n} operators of subgraph 0 once, got {list(order)}")
    tab = sg._tab
    start = tab.Vector(tab.Offset(_OPERATORS_FIELD))
    slots = [start + 4 * j for j in range(n)]
    tables = [tab.Indirect(a) for a in slots]
    if tables != [sg.Operators(j)._tab.Pos for j in range(n)]:
        raise RuntimeError("the flatbuffer's SubGraph.operators field is not where the schema puts it")
    for j, a in enumerate(slots):
        rel = tables[order[j]] - a
        if rel <= 0:  # a flatbuffer offset points forward
            raise RuntimeError("an operator table lies before the operator list; cannot permute the offsets in place")
        data[a : a + 4] = rel.to_bytes(4, "little")
    return bytes(data)


@dataclass(frozen=True)
class ReorderReport:
    """What :func:`reorder_for_arena` did.

    Attributes:
      peak_before: the peak of live activation bytes in the converter's order (16-byte rounded).
      peak_after: the peak in the order returned.
      planned_before: the greedy planner's arena for the activations in the converter's order
        (:func:`keras_wgsef.budget.hardware.plan_arena`; TFLM adds its fixed bookkeeping).
      planned_after: the same in the order returned.
      order: the original index of each operator in the new order.
      changed: whether the operators were reordered.
      exact: whether the order is proven best (False: the greedy fallback above ``max_states``).
      reason: why the order was kept, when it was.
    """

    peak_before: int
    peak_after: int
    planned_before: int
    planned_after: int
    order: tuple[int, ...]
    changed: bool
    exact: bool = True
    reason: str | None = None

    def __str__(self) -> str:
        if not self.changed:
            return f"operator order kept ({self.reason}); live activations peak {self.peak_before:,} bytes"
        how = "smallest peak" if self.exact else "greedy order (too many branches for the exact search)"
        return (
            f"operators reordered ({how}): live activations peak {self.peak_before:,} -> {self.peak_after:,} "
            f"bytes, planned {self.planned_before:,} -> {self.planned_after:,} bytes"
        )


def _ordered_ops(tflite: bytes) -> list[str]:
    """Operators or tensors whose order matters beyond data dependencies (resource variables, control flow)."""
    from tflite_export.flatbuffer import parse_model, summarize

    found = sorted({name for name in summarize(tflite).op_names if name in _ORDERED_OPS or name.startswith("CUSTOM")})
    model = parse_model(tflite)
    if any(t.isVariable for t in model.subgraphs[0].tensors or []):
        found.append("variable tensors")
    if len(model.subgraphs) > 1:
        found.append(f"{len(model.subgraphs)} subgraphs")
    return found


def reorder_for_arena(
    tflite: bytes | bytearray | str | os.PathLike, *, max_states: int = DEFAULT_MAX_STATES
) -> tuple[bytes, ReorderReport]:
    """Reorders the operators of the main subgraph for the smallest peak of live activations.

    :func:`best_order` finds the smallest peak; :func:`refine_order` then looks, among orders with
    that peak, for one that TFLM's greedy planner packs into a smaller arena. The new order is taken
    when its planned arena is smaller than the converter's order's, or equal with a smaller peak.

    Args:
      tflite: the model bytes or a path to a ``.tflite`` file.
      max_states: passed to :func:`best_order`.

    Returns:
      ``(model bytes, ReorderReport)``; the input bytes themselves when no order is better,
      or when the model has operators whose order matters beyond their tensors (resource variables,
      control flow, random number generators, custom operators, several subgraphs).

    Example:
        >>> same, rep = reorder_for_arena(tfl)    # a chain of operators: one order
        >>> same == tfl, rep.changed
        (True, False)
    """
    from tflite_export.flatbuffer import lowered_model, read_tflite

    data = read_tflite(tflite)
    lm = lowered_model(data)
    graph = _graph(lm)
    original = tuple(range(graph.num_ops))
    base, planned = peak_bytes(graph, original), _planned_arena(lm, original)
    ordered = _ordered_ops(data)
    if ordered:
        why = "its order matters beyond the tensors: " + ", ".join(ordered)
        return data, ReorderReport(base, base, planned, planned, original, False, True, why)
    found = best_order(graph, max_states=max_states)
    order = refine_order(graph, found.order, lambda o: _planned_arena(lm, o))
    peak, planned_after = peak_bytes(graph, order), _planned_arena(lm, order)
    if (planned_after, peak) >= (planned, base):
        why = "no order has a smaller planned arena or peak"
        return data, ReorderReport(base, base, planned, planned, original, False, found.exact, why)
    return permute_operators(data, order), ReorderReport(base, peak, planned, planned_after, order, True, found.exact)


@dataclass
class TflmReorder:
    """:func:`reorder_for_tflm`'s result: the model to export and a note for the report."""

    tflite: bytes
    report: ReorderReport
    arena_before: int | None = None
    arena_after: int | None = None
    notes: list[str] = field(default_factory=list)


def reorder_for_tflm(tflite: bytes, *, measure_arena: bool = True) -> TflmReorder:
    """Reorders the operators for the arena, keeping the order whose measured TFLM arena is smaller.

    With ``measure_arena`` (and TFLite Micro installed) the minimal arena of both orders is found
    by :func:`tflite_export.micro.tflm_min_arena`; the new order is kept only if its arena is not
    larger (the greedy planner can leave gaps that a smaller peak does not remove). Without the
    measurement the order with the smaller peak is kept.

    Example:
        >>> r = reorder_for_tflm(tfl)             # a chain: nothing to reorder, nothing measured
        >>> r.tflite == tfl, r.arena_before
        (True, None)
    """
    from tflite_export.micro import micro_missing, tflm_min_arena

    new, rep = reorder_for_arena(tflite)
    result = TflmReorder(new, rep)
    if not rep.changed:
        return result
    if not measure_arena or micro_missing() is not None:
        result.notes.append(f"{rep} (TFLM arena not measured for the converter's order)")
        return result
    result.arena_before = tflm_min_arena(tflite)[0]
    result.arena_after = tflm_min_arena(new)[0]
    arenas = f"TFLM arena {result.arena_before:,} -> {result.arena_after:,} bytes"
    if result.arena_after > result.arena_before:
        result.tflite = tflite
        result.notes.append(f"converter's operator order kept: the order with the smaller peak needs a larger {arenas}")
    else:
        result.notes.append(f"{rep}; {arenas}")
    return result
