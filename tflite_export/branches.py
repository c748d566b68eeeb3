"""Residual branches whose whole output is zero are removed, branch and all (``Add(x, 0) = x``).

A WGSEF ``layer`` group (or every output channel of a block) at zero makes a residual branch's
output exactly zero: the ``Add`` then returns its other input unchanged. Keeping one channel per
producer (what channel removal alone can do) would still spend the branch's MACs; here the zero
input leaves the ``Add`` (an ``Add`` left with one input disappears, its readers rewired to that
input) and every layer that fed only the branch goes with it. Which inputs are zero comes from
the channel analysis (:func:`keras_wgsef.graph.channels.droppable_inputs`, from the weights alone);
whether an input may go is the merge rule's own decision (``Merge.droppable``: any input of
``Add``, the last of ``Subtract``, none of ``Average``). The result is checked against the
original model like every rebuilt model.

Example (``model`` the doctest CNN, which has no residual branch: nothing to drop):
  >>> new, dropped = drop_zero_branches(model)
  >>> dropped
  []
"""

from __future__ import annotations

from typing import Any

from keras_wgsef.graph.channels import analyze, droppable_inputs
from tflite_export.rebuild import rebuild_equal

__all__ = ["drop_zero_branches"]


def _history_refs(obj: Any) -> list[dict]:
    """Every keras tensor config (with its ``keras_history``) inside an inbound-node structure."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return [obj["config"]]
        return [t for v in obj.values() for t in _history_refs(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _history_refs(v)]
    return []


def _remove_tensors(obj: Any, doomed: list[dict]) -> Any:
    """``obj`` without the keras tensors in ``doomed`` (compared by identity)."""
    if isinstance(obj, (list, tuple)):
        return [_remove_tensors(v, doomed) for v in obj if not (isinstance(v, dict) and v.get("config") in doomed)]
    if isinstance(obj, dict) and obj.get("class_name") != "__keras_tensor__":
        return {k: _remove_tensors(v, doomed) for k, v in obj.items()}
    return obj


def _edit(cfg: dict, prefix: str, drops: dict[str, list[int]], dropped: list[str]) -> None:
    for lc in cfg["layers"]:
        if "input_layers" in lc.get("config", {}):  # a nested Functional model
            _edit(lc["config"], prefix + lc["config"]["name"] + "/", drops, dropped)
    replaced: dict[str, list] = {}  # a removed merge's name -> the history of its one remaining input
    for lc in list(cfg["layers"]):
        path = prefix + lc["config"]["name"]
        if path not in drops:
            continue
        node = lc["inbound_nodes"][0]
        refs = _history_refs(node)
        doomed = [refs[i] for i in drops[path]]
        node["args"] = _remove_tensors(node["args"], doomed)
        node["kwargs"] = _remove_tensors(node.get("kwargs", {}), doomed)
        left = _history_refs(node)
        if len(left) == 1:  # a merge of one tensor is that tensor
            replaced[lc["config"]["name"]] = list(left[0]["keras_history"])
            cfg["layers"].remove(lc)
            dropped.append(path)
    for name, history in replaced.items():  # rewire the readers (chains of removed merges too)
        while history[0] in replaced:
            history = replaced[history[0]]
        for lc in cfg["layers"]:
            for ref in _history_refs(lc.get("inbound_nodes", [])):
                if ref["keras_history"][0] == name:
                    ref["keras_history"] = list(history)
        outs = cfg["output_layers"]
        if outs and isinstance(outs[0], str):
            cfg["output_layers"] = list(history) if outs[0] == name else outs
        else:
            cfg["output_layers"] = [list(history) if ref[0] == name else ref for ref in outs]
    while True:  # layers nothing reads any more (the branch) go too
        read = {ref["keras_history"][0] for lc in cfg["layers"] for ref in _history_refs(lc.get("inbound_nodes", []))}
        outs = cfg["output_layers"]
        read |= {r[0] for r in ([outs] if outs and isinstance(outs[0], str) else outs)}
        unread = [lc for lc in cfg["layers"] if lc["class_name"] != "InputLayer" and lc["config"]["name"] not in read]
        if not unread:
            break
        for lc in unread:
            cfg["layers"].remove(lc)
            dropped.append(prefix + lc["config"]["name"])


def drop_zero_branches(
    model: Any, *, exclude: Any = None, rtol: float = 1e-5, sample: Any = None
) -> tuple[Any, list[str]]:
    """A copy of ``model`` without the residual branches whose output is exactly zero.

    Args:
      model: a built Functional model (Sequential models have no branches); never modified.
      exclude: regexes on layer paths treated as opaque by the channel analysis.
      rtol: tolerance of the output check (as in :func:`tflite_export.shrink.shrink`).
      sample: inputs for the output check (None: random ones, as in
        :func:`tflite_export.shrink.output_difference`).

    Returns:
      ``(new_model, dropped)``: ``dropped`` lists the layer paths removed (the merges left with
      one input and the layers only the zero branches read); ``(model, [])`` when there is nothing
      to drop (the model itself, not a copy).

    Raises:
      tflite_export.shrink.ShrinkError: the rebuilt model differs from the original.
    """
    from tflite_export.shrink import ShrinkError

    drops = droppable_inputs(analyze(model, exclude=exclude))
    if not drops:
        return model, []
    dropped: list[str] = []
    new = rebuild_equal(
        model,
        lambda config: _edit(config, "", drops, dropped),
        what="the model without its zero branches",
        error=ShrinkError,
        sample=sample,
        rtol=rtol,
    )
    return new, sorted(dropped)
