"""Pass ``global_pool_as_average_pool``: global average pooling as a plain average pooling, the same function.

``GlobalAveragePooling2D`` converts to the TFLite ``MEAN`` operator, which TFLite Micro runs with a
generic reduction kernel (no CMSIS-NN version; measured on a Cortex-M4: ~134 instructions per input
element). An ``AveragePooling2D`` whose window is the whole feature map computes the same values and
converts to ``AVERAGE_POOL_2D``, which has an optimized kernel. The pass makes a new Keras model with
that substitution; the pass runner checks that its outputs equal the original's.

What a rewritten layer becomes (``gap`` the layer's name; the ``.tflite`` ops in brackets):

* ``GlobalAveragePooling2D(keepdims=False)`` over ``(H, W, C)`` ->
  ``AveragePooling2D((H, W), padding="valid")`` named ``gap_avgpool`` then ``Reshape((C,))`` named
  ``gap`` [``AVERAGE_POOL_2D``, ``RESHAPE``];
* ``GlobalAveragePooling2D(keepdims=True)`` -> ``AveragePooling2D((H, W))`` named ``gap``
  [``AVERAGE_POOL_2D``];
* ``GlobalAveragePooling1D`` over ``(T, C)`` -> ``AveragePooling1D(T)`` named ``gap_avgpool`` then
  ``Reshape((C,))`` named ``gap`` (``keepdims=True``: the pooling alone, named ``gap``); TensorFlow
  runs a 1-D pooling as a 2-D one, so the ``.tflite`` holds ``AVERAGE_POOL_2D`` between reshapes.

The last layer always keeps the original name, so every later layer, the model outputs and the layer
paths of :func:`keras_wgsef.graph.model_graph.flatten_model` (used by shrink and the cost model) stay
as they were; if ``gap_avgpool`` is taken, ``gap_avgpool_1``, ... is used. Layers are left alone
(and listed as kept) when their spatial size is not static, they are ``channels_first``, one layer
object is called on differently shaped inputs, or (1-D) the model has a masking layer or the layer
is called with a mask (a masked average is not a plain one). The other arguments of a call go to
the replacement as :func:`call_kwargs` says: ``mask=None`` and an unused ``training`` are dropped, a
value the replacement cannot take is refused (:class:`RewriteError` naming the layer and its path).
The model is rebuilt the way every pass rebuilds one (:mod:`tflite_export.passes.rebuild`).

The float outputs are equal (checked). The int8 models are not
bit-identical: ``AVERAGE_POOL_2D`` keeps its input's quantization step where ``MEAN`` gets one
fitted to the averages, so the outputs differ by a few LSB on trained CNNs (more where the averages
span a much narrower range than the features); :func:`record_saving` puts the measured difference
and the instruction saving into the export report.

Example (``model`` the doctest CNN, ending in ``GlobalAveragePooling2D(name="gap")``):
    >>> from tflite_export.passes import Context, GraphView
    >>> plans, kept = GlobalPoolAsAveragePool().plan(GraphView(model), Context())
    >>> list(plans), kept
    (['gap'], [])
"""

from __future__ import annotations

from typing import Any

from keras_wgsef.budget.lowering import AVERAGE_POOLS as _GAP
from keras_wgsef.budget.lowering import AveragePoolRewrite as _Plan
from keras_wgsef.budget.lowering import average_pool_rewrites as _plan
from tflite_export.passes.base import Context, GraphView, Pass, PassResult
from tflite_export.passes.check import RewriteError
from tflite_export.passes.config import insert_before, is_functional, layer_entry, model_configs, unique_name
from tflite_export.passes.rebuild import rebuild

__all__ = ["GlobalPoolAsAveragePool", "call_kwargs"]


def call_kwargs(kwargs: dict, path: str, kind: str, replacement: Any) -> dict:
    """The keyword arguments of a replaced layer's call that its ``replacement`` layer class receives.

    A Functional config records each call's keyword arguments (``{"mask": None}`` for a
    ``GlobalAveragePooling1D`` called without one, ``{"training": False}`` where the user passed it).
    A None value is dropped (Keras fills in the default), and so is ``training`` where the replacement's
    ``call`` does not take it (it computes the same in training and inference). A value the
    replacement does not take otherwise (a real mask tensor, anything else) would be lost: refused.

    Args:
      kwargs: the serialized keyword arguments of the call (``inbound_nodes[i]["kwargs"]``).
      path, kind: the replaced layer's path in the model and its class name, for the message.
      replacement: the class of the layer that receives the call.

    Raises:
      RewriteError: a non-None argument the replacement cannot take; the message names the layer, its
        path and the argument.

    Example:
      >>> import keras
      >>> call_kwargs({"mask": None, "training": False}, "gap", "GlobalAveragePooling1D", keras.layers.Reshape)
      {}
    """
    import inspect

    accepted = inspect.signature(replacement.call).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    kept = {}
    for name, value in kwargs.items():
        if value is None or (name == "training" and "training" not in accepted):
            continue
        if name not in accepted and not takes_any:
            what = "a mask" if name == "mask" or name.endswith("_mask") else f"the argument {name}={value!r}"
            raise RewriteError(
                f"cannot replace layer {path!r} ({kind}) with {replacement.__name__}: it is called with {what}, "
                f"which {replacement.__name__} does not take, so the result would change; export with "
                "cheaper_ops=False (--keep-mean)"
            )
        kept[name] = value
    return kept


def _edit_config(config: dict, plans: dict[str, _Plan], lines: list[str]) -> None:
    import keras

    for cfg, prefix in model_configs(config):
        functional = is_functional(cfg)
        names = {lc["config"]["name"] for lc in cfg["layers"]}
        for lc in list(cfg["layers"]):
            name = lc["config"]["name"]
            plan = plans.get(prefix + name)
            if plan is None or lc["class_name"] != plan.kind or (functional and len(lc.get("inbound_nodes", [])) != 1):
                if plan is not None:
                    lines.append(f"kept {plan.path} ({plan.kind}): the layer is called more than once")
                continue
            pool_class = getattr(keras.layers, _GAP[plan.kind][0])
            size = plan.spatial if len(plan.spatial) > 1 else plan.spatial[0]
            window = "x".join(map(str, plan.spatial))
            what = f"{plan.path}: {plan.kind} over {window}x{plan.channels} -> {pool_class.__name__}({size!r})"
            nodes = [
                {**node, "kwargs": call_kwargs(node.get("kwargs", {}), plan.path, plan.kind, pool_class)}
                for node in lc.get("inbound_nodes", [])
            ]
            at = cfg["layers"].index(lc)
            if plan.keepdims:
                pool = layer_entry(pool_class(size, padding="valid", name=name), lc)
                pool["inbound_nodes"] = nodes
                cfg["layers"][at] = pool
                lines.append(f"{what} {name}")
                continue
            pool_name = unique_name(f"{name}_avgpool", names)
            pool = layer_entry(pool_class(size, padding="valid", name=pool_name), lc)
            reshape = layer_entry(keras.layers.Reshape((plan.channels,), name=name), lc)
            reshape["inbound_nodes"] = nodes
            cfg["layers"][at] = reshape
            insert_before(cfg, reshape, [pool], [[None, *([1] * len(plan.spatial)), plan.channels]])
            lines.append(f"{what} {pool_name} + Reshape(({plan.channels},)) {name}")


class GlobalPoolAsAveragePool(Pass):
    """Replaces each global average pooling by an average pooling over the whole map (``AVERAGE_POOL_2D``)."""

    name = "global_pool_as_average_pool"
    way_out = "export with cheaper_ops=False (--keep-mean) to keep MEAN"

    def plan(self, view: GraphView, ctx: Context) -> tuple[dict[str, _Plan], list[str]]:
        """The layers to rewrite (by path), and a line per candidate left alone with the reason."""
        return _plan(view.graph)

    def apply(self, model: Any, plan: tuple[dict[str, _Plan], list[str]], ctx: Context) -> PassResult:
        plans, kept = plan
        if not plans:
            return PassResult(model, False, list(kept))
        rewritten: list[str] = []
        new = rebuild(model, lambda config: _edit_config(config, plans, rewritten))
        changed = any(not line.startswith("kept ") for line in rewritten)
        return PassResult(new if changed else model, changed, rewritten + kept)
