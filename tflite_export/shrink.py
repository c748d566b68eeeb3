"""Physical removal of dead channels: a new, thinner Keras model with the same outputs.

A channel class (see :mod:`keras_wgsef.graph.channels`) is **dead** when every place that reads it
through a kernel (a Conv/Dense input slice, a Dense after Flatten at positions ``s*C + c``) sees an
exact zero or reads it with an all-zero slice of its kernel (an input-channel group at zero: the
channel is computed but never used, so the producer's output channel goes too), and it is neither
a model input/output channel nor read by an opaque layer. Exact zeros
are propagated through the graph from the weights alone:

* producer channel ``c``: ``bias[c] = 0``, ``kernel[..., i, c] = 0`` for every input channel ``i``
  not known to be zero, and ``act(0) = 0``;
* BatchNorm: ``gamma = beta = 0``, or a zero input with ``beta = 0`` and ``gamma*mean = 0``;
  depthwise: (zero input or zero kernel slice) and zero bias;
* ``Add``/``Average``/``Maximum``: all inputs zero; ``Multiply``: any input zero; ``f(0) = 0`` layers
  pass zeros on, others (``sigmoid``) make them nonzero.

So a channel whose whole WGSEF group is zero is dead, and so is, e.g., a nonzero filter whose
BatchNorm has ``gamma = beta = 0``. A zero filter with a nonzero bias (or BN beta) emits a constant:
it is kept, and the report says where the constant is read (folding it into the next bias is exact
only without zero padding, so it is not done). Removing dead channels changes no output; the new
model is checked against the original on ``sample`` (or random normal input):
``max |y_new - y| <= rtol * max(1, max |y|)``, else :class:`ShrinkError` is raised.

Example (``model`` a small CNN whose ``conv1`` feeds ``bn1``): zero half of conv1's filters, cut them out.
  >>> import keras
  >>> sparse = keras.models.clone_model(model)
  >>> sparse.set_weights(model.get_weights())
  >>> k, b = sparse.get_layer("conv1").get_weights()
  >>> k[..., 4:], b[4:] = 0.0, 0.0
  >>> sparse.get_layer("conv1").set_weights([k, b])
  >>> gamma, beta, mean, var = sparse.get_layer("bn1").get_weights()
  >>> gamma[4:], beta[4:] = 0.0, 0.0
  >>> sparse.get_layer("bn1").set_weights([gamma, beta, mean, var])
  >>> small, report = shrink(sparse, x[:32], return_report=True)
  >>> small.get_layer("conv1").filters, report.plan.widths["conv1"], report.max_abs_diff <= report.tolerance
  (4, (8, 4), True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

from keras_wgsef.graph.channels import ChannelAnalysis, analyze, zero_channels
from keras_wgsef.graph.costs import count_macs, count_params
from keras_wgsef.graph.model_graph import layer_variables, matches, weight_names
from tflite_export.branches import drop_zero_branches
from tflite_export.kernels import trim_zero_borders
from tflite_export.rebuild import rebuild

__all__ = ["ShrinkError", "ShrinkPlan", "ShrinkReport", "output_difference", "plan_shrink", "shrink"]


class ShrinkError(RuntimeError):
    """The shrunk model would differ from the original (or could not be built)."""


@dataclasses.dataclass
class ShrinkPlan:
    """What :func:`shrink` removes: per layer the output channels kept, and what stays and why.

    Attributes:
      channels: layer path -> indices of the output channels that stay (every layer with an output).
      widths: layer path -> (channels before, channels after).
      not_removed: ``(channel label, reason)`` for channels that look prunable (some part is zero)
        but stay.
      analysis: the channel analysis the plan is based on.
      dead: the dead channel classes (roots).
    """

    channels: dict[str, np.ndarray]
    widths: dict[str, tuple[int, int]]
    not_removed: list[tuple[str, str]]
    analysis: ChannelAnalysis
    dead: set[int]

    def table(self) -> str:
        rows = [f"{p:40s} {b:6d} -> {a:6d}" for p, (b, a) in self.widths.items() if b != a]
        notes = [f"  kept {lab}: {why}" for lab, why in self.not_removed]
        return "\n".join(["layer                                    channels", *rows, *notes])

    __str__ = table


@dataclasses.dataclass
class ShrinkReport:
    """Per-layer channels, parameters and MACs before and after, plus the verification result."""

    plan: ShrinkPlan
    params: dict[str, tuple[int, int]]
    macs: dict[str, tuple[int, int]]
    max_abs_diff: float
    tolerance: float
    dropped: list[str] = dataclasses.field(default_factory=list)  # layers of zero residual branches
    trimmed: list[str] = dataclasses.field(default_factory=list)  # kernels without their zero borders

    def _changed(self) -> list[tuple[str, tuple[int, int], tuple[int, int], tuple[int, int]]]:
        """``(path, channels, params, MACs)`` (each before, after) of every layer that changed."""
        rows = []
        for path, params in self.params.items():
            if path == "total":
                continue
            widths, macs = self.plan.widths.get(path, (0, 0)), self.macs.get(path, (0, 0))
            if (widths[0], macs[0], params[0]) != (widths[1], macs[1], params[1]):
                rows.append((path, widths, params, macs))
        return rows

    def _notes(self) -> list[str]:
        """Removed branches, trimmed kernels and the channels kept, with their reasons."""
        notes = [f"removed zero residual branches: {', '.join(self.dropped)}"] if self.dropped else []
        return notes + list(self.trimmed) + [f"kept {lab}: {why}" for lab, why in self.plan.not_removed]

    def table(self) -> str:
        lines = [f"{'layer':36s} {'channels':>13s} {'params':>19s} {'MACs':>25s}"]
        for path, (wb, wa), (b, a), (mb, ma) in self._changed():
            lines.append(f"{path:36s} {wb:5d} -> {wa:5d} {b:8d} -> {a:8d} {mb:11d} -> {ma:11d}")
        pb, pa = self.params["total"]
        mb, ma = self.macs["total"]
        lines.append(f"{'total':36s} {'':13s} {pb:8d} -> {pa:8d} {mb:11d} -> {ma:11d}")
        lines += [f"  {note}" for note in self._notes()]
        lines.append(f"max |output difference| {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g})")
        return "\n".join(lines)

    __str__ = table

    def to_markdown(self) -> str:
        """The layers that changed as a Markdown table (channels, parameters, MACs), then the notes.

        A notebook shows it for a bare ``report`` (``_repr_markdown_``).
        """
        lines = ["| layer | channels | params | MACs |", "|---|---|---|---|"]
        for path, (wb, wa), (b, a), (mb, ma) in self._changed():
            lines.append(f"| {path} | {wb} -> {wa} | {b:,} -> {a:,} | {mb:,} -> {ma:,} |")
        (pb, pa), (mb, ma) = self.params["total"], self.macs["total"]
        lines.append(f"| **total** | | {pb:,} -> {pa:,} | {mb:,} -> {ma:,} |")
        notes = [*self._notes(), f"max abs output difference {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g})"]
        return "\n".join([*lines, "", *(f"- {n}" for n in notes)]) + "\n"

    _repr_markdown_ = to_markdown


def plan_shrink(model: Any, *, multiple: int = 1, exclude: str | Iterable[str] | None = None) -> ShrinkPlan:
    """Finds the dead channels of ``model`` (see the module docstring); builds nothing.

    Args:
      model: a built Sequential or Functional model.
      multiple: round every kept producer width up to a multiple of this (4 or 8 for SIMD kernels),
        keeping the largest-norm dead channels as padding; a producer keeps at least one channel.
      exclude: regexes on layer paths: matching producers keep all channels; matching layers without
        a channel rule are treated as opaque.
    """
    if int(multiple) < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}.")
    a = analyze(model, exclude=exclude)
    g = a.graph
    for path in a.out_ids:
        if matches(exclude, path):
            a.pin(a.out_ids[path], f"producer {path} is excluded")
    zero = zero_channels(a)
    pinned = a.pinned_roots()
    nonzero_at: dict[int, str] = {}
    seen: set[int] = set()
    for node in g.nodes:
        rule = a.rules[node.path]
        for t in [node.inputs[i] for i in rule.read_inputs(len(node.inputs))]:
            unread = rule.unread_inputs(_weights(node.layer), len(a.tensor_ids[t]))
            for r, z, u in zip(a.roots(a.tensor_ids[t]).tolist(), zero[t].tolist(), unread.tolist()):
                seen.add(r)
                if not (z or u):
                    nonzero_at.setdefault(r, f"nonzero where {node.path} ({type(node.layer).__name__}) reads it")
    candidates: set[int] = set()
    for node in g.nodes:
        for t in node.outputs:
            candidates |= {r for r, z in zip(a.roots(a.tensor_ids[t]).tolist(), zero[t].tolist()) if z}
    for path, ids in a.out_ids.items():  # a zero filter (even with a nonzero bias) is worth a note
        k = _output_kernel(a, path)
        candidates |= {r for r, z in zip(a.roots(ids).tolist(), np.all(k == 0, axis=0).tolist()) if z}
    dead = {r for r in seen if r not in pinned and r not in nonzero_at}
    for path, own in a.channels.items():  # channels inside a layer (attention heads) its rule finds zero
        if own.inner is not None:
            z = a.rules[path].zero_inner(_weights(g.layers[path]), own)
            if z is not None:
                dead |= {r for r, zr in zip(a.roots(own.inner).tolist(), z.tolist()) if zr and r not in pinned}
    kept = [(r, pinned.get(r) or nonzero_at.get(r, "")) for r in sorted(candidates - dead)]
    dead, padded = _round_widths(a, dead, int(multiple))
    kept += [(r, why) for r, why in padded]
    keep: dict[str, np.ndarray] = {}
    widths: dict[str, tuple[int, int]] = {}
    for node in g.nodes:
        ids = a.roots(a.tensor_ids[node.outputs[0]])
        mask = np.array([r not in dead for r in ids.tolist()], bool)
        keep.setdefault(node.path, np.flatnonzero(mask))
        widths.setdefault(node.path, (len(ids), int(mask.sum())))
    return ShrinkPlan(keep, widths, [(_label(a, r), why) for r, why in kept if why], a, dead)


def _label(a: ChannelAnalysis, root: int) -> str:
    for path, ids in a.out_ids.items():
        for c, r in enumerate(a.roots(ids).tolist()):
            if r == root:
                return f"{path}:{c}"
    return f"channel {root}"


def _round_widths(a: ChannelAnalysis, dead: set[int], multiple: int) -> tuple[set[int], list[tuple[int, str]]]:
    dead, padded = set(dead), []
    changed = True
    while changed:
        changed = False
        for path, ids in a.out_ids.items():
            roots = a.roots(ids).tolist()
            n_keep = sum(r not in dead for r in roots)
            target = min(len(roots), max(multiple, -(-n_keep // multiple) * multiple))
            if n_keep >= target:
                continue
            norms = np.sqrt((_output_kernel(a, path) ** 2).sum(0))
            for c in sorted((c for c, r in enumerate(roots) if r in dead), key=lambda c: -norms[c]):
                if n_keep >= target:
                    break
                if roots[c] in dead:
                    dead.discard(roots[c])
                    padded.append((roots[c], f"kept to round {path} up to a multiple of {multiple} (or at least 1)"))
                    n_keep = sum(r not in dead for r in roots)
                    changed = True
    return dead, padded


def _weights(layer: Any) -> dict[str, np.ndarray]:
    import keras

    return {k: np.asarray(keras.ops.convert_to_numpy(w)) for k, w in layer_variables(layer).items()}


def _output_kernel(a: ChannelAnalysis, path: str) -> np.ndarray:
    """The producer's kernel as a ``(-1, n_out)`` matrix (its rule says which weight and axis)."""
    k = a.rules[path].output_kernel(_weights(a.graph.layers[path]))
    if k is None:
        raise TypeError(f"the rule of {path!r} ({type(a.rules[path]).__name__}) makes channels but names no kernel.")
    return k


def _sliced_weights(a: ChannelAnalysis, path: str, dead: set[int]) -> dict[str, np.ndarray] | None:
    own = a.channels.get(path)
    if own is None:
        return None
    return a.rules[path].slice_weights(_weights(a.graph.layers[path]), a.keep_mask(dead), own)


def _edit_config(cfg: dict, prefix: str, plan: ShrinkPlan, nested_inputs: dict[str, list[int]]) -> None:
    a = plan.analysis
    cfg.pop("build_input_shape", None)
    input_refs = [] if "input_layers" not in cfg else _refs(cfg["input_layers"])
    for lc in cfg["layers"]:
        lc.pop("build_config", None)
        lc.pop("compile_config", None)
        name = lc["config"]["name"]
        path = prefix + name
        if lc["class_name"] == "InputLayer":
            if prefix:
                idx = next((i for i, r in enumerate(input_refs) if r[0] == name), 0)
                t = nested_inputs[prefix][idx]
                width = int(a.keep_mask(plan.dead)(a.tensor_ids[t]).sum())
                shape = list(lc["config"]["batch_shape"])
                lc["config"]["batch_shape"] = [*shape[:-1], width]
            continue
        if "layers" in lc["config"]:
            _edit_config(lc["config"], path + "/", plan, nested_inputs)
            continue
        rule = a.rules.get(path)
        if path not in plan.channels or rule is None:
            continue
        before, kept = plan.widths[path]
        rule.edit_config(lc["config"], kept, before)
        if path in a.channels:
            rule.edit_inner_config(
                lc["config"], a.channels[path], a.keep_mask(plan.dead), _weights(a.graph.layers[path])
            )


def _refs(x: Any) -> list:
    return [x] if isinstance(x, (list, tuple)) and len(x) == 3 and isinstance(x[0], str) else list(x)


def _predict(model: Any, x: Any) -> list[np.ndarray]:
    import keras

    y = model(x, training=False)
    y = y if isinstance(y, (list, tuple)) else [y]
    return [np.asarray(keras.ops.convert_to_numpy(t), np.float64) for t in y]


def output_difference(model: Any, new: Any, sample: Any = None, rtol: float = 1e-5) -> tuple[float, float, bool]:
    """``(max |y_new - y|, tolerance, same)`` of two models on ``sample`` (the check of every rebuilt model).

    ``sample`` None draws 4 random normal inputs (seed 0) of ``model``'s input shapes; the
    tolerance is ``rtol * max(1, max |y|)``; ``same`` also requires equal output shapes.
    """
    if sample is None:
        for t in model.inputs:
            if str(t.dtype) == "string":
                raise ValueError(
                    f"model input {t.name!r} takes strings, so no random sample can be drawn for the output check; "
                    "pass a sample of real inputs (shrink(model, sample) / output_difference(model, new, sample))."
                )
        rng = np.random.default_rng(0)
        sample = [rng.standard_normal((4, *[int(s) for s in t.shape[1:]])).astype(np.float32) for t in model.inputs]
        sample = sample[0] if len(sample) == 1 else sample
    y0, y1 = _predict(model, sample), _predict(new, sample)
    shapes_equal = len(y0) == len(y1) and all(p.shape == q.shape for p, q in zip(y0, y1))
    diff = max(float(np.max(np.abs(p - q))) if p.size else 0.0 for p, q in zip(y0, y1)) if shapes_equal else np.inf
    tol = rtol * max(1.0, max(float(np.max(np.abs(p))) if p.size else 0.0 for p in y0))
    return diff, tol, bool(shapes_equal and diff <= tol)


def shrink(
    model: Any,
    sample: Any = None,
    *,
    multiple: int = 1,
    rtol: float = 1e-5,
    exclude: str | Iterable[str] | None = None,
    trim_kernels: bool = True,
    return_report: bool = False,
) -> Any:
    """A new model without the dead channels of ``model``, checked to give the same outputs.

    Args:
      model: a built Sequential or Functional model; never modified.
      sample: inputs for the check (an array, or a list for several inputs); None draws 4 random
        normal inputs (seed 0) of the model's input shapes.
      multiple: round kept producer widths up to a multiple of this (see :func:`plan_shrink`).
      rtol: the check passes when ``max |y_new - y| <= rtol * max(1, max |y|)``.
      exclude: regexes on layer paths (see :func:`plan_shrink`).
      trim_kernels: also cut all-zero border rows and columns off convolution kernels (filter-shape
        sparsity; :func:`tflite_export.kernels.trim_zero_borders`).
      return_report: also return a :class:`ShrinkReport`.

    Returns:
      The new model (same layer names, uncompiled: the training optimizer's groups belong to the
      old shapes), or ``(model, report)`` with ``return_report=True``.

    Raises:
      ShrinkError: if the rebuilt model's outputs differ beyond the tolerance.
      keras_wgsef.graph.rules.UnsupportedLayerError: a layer without a channel rule.
    """

    samples = sample if isinstance(sample, (list, tuple)) else [] if sample is None else [sample]
    for s, t in zip(samples, getattr(model, "inputs", None) or []):  # (subclassed models: refused below)
        if str(t.dtype) == "string" and np.asarray(s).dtype.kind not in "USO":
            raise ValueError(
                f"shrink: model input {t.name!r} takes strings, but its sample has dtype {np.asarray(s).dtype}; "
                "pass the strings the model reads."
            )
    for s in samples:
        arr = np.asarray(s)
        if arr.size == 0 or len(arr) == 0:
            raise ValueError(
                "shrink: the sample is empty, so the output check could not run; pass some inputs or None."
            )
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ValueError("shrink: the sample has NaN or inf values; pass finite inputs (or None for random ones).")
    original = model
    model, dropped = drop_zero_branches(model, exclude=exclude, rtol=rtol, sample=sample)  # Add(x, 0) = x
    plan = plan_shrink(model, multiple=multiple, exclude=exclude)
    a = plan.analysis
    # The new model is returned uncompiled (rebuild drops the compile config): the training
    # optimizer's groups describe the old shapes (compile it again to fine-tune).

    def sliced(path: str, old_layer: Any) -> list[np.ndarray] | None:
        values = _sliced_weights(a, path, plan.dead)
        return None if values is None else [values[name] for name in weight_names(old_layer)]

    try:
        new = rebuild(model, lambda config: _edit_config(config, "", plan, a.graph.submodel_inputs), sliced)
    except Exception as e:
        raise ShrinkError(f"could not rebuild the thinner model: {type(e).__name__}: {e}") from e
    trimmed: list[str] = []
    if trim_kernels:
        new, trimmed = trim_zero_borders(new, sample, rtol=rtol)
    diff, tol, same = output_difference(original, new, sample, rtol)
    if not same:
        raise ShrinkError(
            f"the shrunk model differs from the original: max |difference| {diff:.3g} > tolerance {tol:.3g}. "
            "This is a bug or a layer rule that does not hold; please report it with the model."
        )
    if not return_report:
        return new
    p0, p1, m0, m1 = count_params(original), count_params(new), count_macs(original), count_macs(new)
    report = ShrinkReport(
        plan,
        {k: (p0[k], p1.get(k, 0)) for k in p0},
        {k: (m0[k], m1.get(k, 0)) for k in m0},
        diff,
        tol,
        dropped,
        trimmed,
    )
    return new, report
