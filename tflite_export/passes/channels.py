"""Pass ``remove_dead_channels``: the dead channels of every layer are cut out of the weights and configs.

A channel class (see :mod:`keras_wgsef.graph.channels`) is **dead** when every place that reads it
through a kernel (a Conv/Dense input slice, a Dense after Flatten at positions ``s*C + c``) sees an
exact zero or reads it with an all-zero slice of its kernel (an input-channel group at zero: the
channel is computed but never used, so the producer's output channel goes too), and it is neither
a model input/output channel nor read by an opaque layer. Exact zeros are propagated through the
graph from the weights alone (:mod:`tflite_export.shrink` lists the rules). :func:`plan_shrink` is
the pass's plan; :func:`tflite_export.shrink.shrink` runs it with the other shrinking passes.

Example (``model`` the doctest CNN, dense: every channel stays):
  >>> plan = plan_shrink(model)
  >>> plan.dead
  set()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

from keras_wgsef.graph.channels import ChannelAnalysis, analyze, zero_channels
from keras_wgsef.graph.model_graph import layer_variables, matches, weight_names
from tflite_export.passes.base import Context, GraphView, Pass, PassResult
from tflite_export.passes.config import is_functional, model_configs, output_refs
from tflite_export.passes.rebuild import rebuild

__all__ = ["RemoveDeadChannels", "ShrinkPlan", "plan_shrink"]


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
    return _plan(analyze(model, exclude=exclude), multiple, exclude)


def _plan(a: ChannelAnalysis, multiple: int, exclude: str | Iterable[str] | None) -> ShrinkPlan:
    """:func:`plan_shrink` on an analysis made before; the analysis is not changed."""
    g = a.graph
    zero = zero_channels(a)
    pinned = a.pinned_roots()
    for path, ids in a.out_ids.items():
        if matches(exclude, path):
            for r in a.roots(ids).tolist():
                pinned.setdefault(r, f"producer {path} is excluded")
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


def _slices_anything(a: ChannelAnalysis, dead: set[int]) -> bool:
    """Whether some layer's weights get smaller: dead channels, or a rule's own trims with none
    (e.g. ``MultiHeadAttention``'s key and value dimensions that are zero in every head)."""
    if dead:
        return True
    for path in a.channels:
        values = _sliced_weights(a, path, dead)
        layer = a.graph.layers[path]
        if values is not None and any(
            values[name].shape != w.shape for name, w in zip(weight_names(layer), layer.get_weights())
        ):
            return True
    return False


def _edit_config(config: dict, plan: ShrinkPlan, nested_inputs: dict[str, list[int]]) -> None:
    """Sets the kept widths (and inner channels) in every layer config, nested models included."""
    a = plan.analysis
    for cfg, prefix in model_configs(config):
        cfg.pop("build_input_shape", None)
        input_refs = output_refs(cfg, "input_layers") if is_functional(cfg) else []
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
            rule = a.rules.get(path)
            if "layers" in lc["config"] or path not in plan.channels or rule is None:
                continue
            before, kept = plan.widths[path]
            rule.edit_config(lc["config"], kept, before)
            if path in a.channels:
                rule.edit_inner_config(
                    lc["config"], a.channels[path], a.keep_mask(plan.dead), _weights(a.graph.layers[path])
                )


class RemoveDeadChannels(Pass):
    """Cuts the dead channels out of every layer (weights sliced, widths set in the configs)."""

    name = "remove_dead_channels"
    way_out = "export with shrink=False (--no-shrink) to keep the layers as they are"

    def plan(self, view: GraphView, ctx: Context) -> ShrinkPlan:
        """The :class:`ShrinkPlan` of the view's model (on its cached channel analysis)."""
        if int(ctx.multiple) < 1:
            raise ValueError(f"multiple must be >= 1, got {ctx.multiple}.")
        return _plan(view.analysis, int(ctx.multiple), ctx.exclude)

    def apply(self, model: Any, plan: ShrinkPlan, ctx: Context) -> PassResult:
        if not _slices_anything(plan.analysis, plan.dead):  # nothing to remove: the same model
            return PassResult(model, False, [f"kept {lab}: {why}" for lab, why in plan.not_removed])
        a = plan.analysis

        def sliced(path: str, old_layer: Any) -> list[np.ndarray] | None:
            values = _sliced_weights(a, path, plan.dead)
            return None if values is None else [values[name] for name in weight_names(old_layer)]

        new = rebuild(model, lambda config: _edit_config(config, plan, a.graph.submodel_inputs), sliced)
        notes = [f"{p}: {b} -> {k} channels" for p, (b, k) in plan.widths.items() if b != k]
        return PassResult(new, True, notes + [f"kept {lab}: {why}" for lab, why in plan.not_removed])
