"""Pass ``drop_zero_branches``: residual branches whose whole output is zero go, branch and all (``Add(x, 0) = x``).

A WGSEF ``layer`` group (or every output channel of a block) at zero makes a residual branch's
output exactly zero: the ``Add`` then returns its other input unchanged. Keeping one channel per
producer (what channel removal alone can do) would still spend the branch's MACs; here the zero
input leaves the ``Add`` (an ``Add`` left with one input disappears, its readers rewired to that
input) and every layer that fed only the branch goes with it. Which inputs are zero comes from
the channel analysis (:func:`keras_wgsef.graph.channels.droppable_inputs`, from the weights alone);
whether an input may go is the merge rule's own decision (``Merge.droppable``: any input of
``Add``, the last of ``Subtract``, none of ``Average``). Its notes are the removed layer paths.

Example (``model`` the doctest CNN, which has no residual branch: nothing to drop):
  >>> from tflite_export.passes import Context, GraphView
  >>> DropZeroBranches().plan(GraphView(model), Context())
  {}
"""

from __future__ import annotations

from typing import Any

from tflite_export.passes.base import Context, GraphView, Pass, PassResult
from tflite_export.passes.config import history_refs, is_functional, model_configs, output_refs, remove_tensors
from tflite_export.passes.rebuild import rebuild

__all__ = ["DropZeroBranches"]


def _edit(cfg: dict, prefix: str, drops: dict[str, list[int]], dropped: list[str]) -> None:
    """Removes the zero inputs of the merges in ``drops`` from one (Functional) model config."""
    replaced: dict[str, list] = {}  # a removed merge's name -> the history of its one remaining input
    for lc in list(cfg["layers"]):
        path = prefix + lc["config"]["name"]
        if path not in drops:
            continue
        node = lc["inbound_nodes"][0]
        refs = history_refs(node)
        doomed = [refs[i] for i in drops[path]]
        node["args"] = remove_tensors(node["args"], doomed)
        node["kwargs"] = remove_tensors(node.get("kwargs", {}), doomed)
        left = history_refs(node)
        if len(left) == 1:  # a merge of one tensor is that tensor
            replaced[lc["config"]["name"]] = list(left[0]["keras_history"])
            cfg["layers"].remove(lc)
            dropped.append(path)
    single = bool(cfg["output_layers"]) and isinstance(cfg["output_layers"][0], str)
    for name, history in replaced.items():  # rewire the readers (chains of removed merges too)
        while history[0] in replaced:
            history = replaced[history[0]]
        for lc in cfg["layers"]:
            for ref in history_refs(lc.get("inbound_nodes", [])):
                if ref["keras_history"][0] == name:
                    ref["keras_history"] = list(history)
        outs = [list(history) if ref[0] == name else ref for ref in output_refs(cfg)]
        cfg["output_layers"] = outs[0] if single else outs
    while True:  # layers nothing reads any more (the branch) go too
        read = {ref["keras_history"][0] for lc in cfg["layers"] for ref in history_refs(lc.get("inbound_nodes", []))}
        read |= {r[0] for r in output_refs(cfg)}
        unread = [lc for lc in cfg["layers"] if lc["class_name"] != "InputLayer" and lc["config"]["name"] not in read]
        if not unread:
            break
        for lc in unread:
            cfg["layers"].remove(lc)
            dropped.append(prefix + lc["config"]["name"])


class DropZeroBranches(Pass):
    """Removes the inputs of merges that are exactly zero, and the layers only they read."""

    name = "drop_zero_branches"
    way_out = "export with shrink=False (--no-shrink) to keep the layers as they are"

    def plan(self, view: GraphView, ctx: Context) -> dict[str, list[int]]:
        """Merge layer path -> the indices of its inputs that are zero and may go."""
        from keras_wgsef.graph.channels import droppable_inputs

        return droppable_inputs(view.analysis)

    def apply(self, model: Any, plan: dict[str, list[int]], ctx: Context) -> PassResult:
        if not plan:
            return PassResult(model, False, [])
        dropped: list[str] = []

        def edit(config: dict) -> None:
            for cfg, prefix in model_configs(config):
                if is_functional(cfg):  # a Sequential model has no merges
                    _edit(cfg, prefix, plan, dropped)

        new = rebuild(model, edit)
        return PassResult(new, True, sorted(dropped))
