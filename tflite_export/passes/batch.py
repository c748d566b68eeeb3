"""Pass ``batch_of_one``: the model with a fixed batch of one sample (what a microcontroller runs).

Converted with a dynamic batch, some layers compute shapes at run time (``REDUCE_PROD``, ``FILL``
with computed dimensions: attention's reshapes, a recurrent layer's zero state), which TFLite
Micro cannot run; with the batch fixed they fold into constants. The converter retries with this
pass when the dynamic-batch flatbuffer has such operators (:data:`tflite_export.passes.BATCH_OF_ONE`);
the runner checks its outputs on one sample at a time, as the model now takes them.

Example (``model`` the doctest CNN):
  >>> from tflite_export.passes import Context, GraphView
  >>> len(BatchOfOne().plan(GraphView(model), Context()))  # the one input, its batch not fixed yet
  1
"""

from __future__ import annotations

from typing import Any

from tflite_export.passes.base import Context, GraphView, Pass, PassResult
from tflite_export.passes.rebuild import rebuild

__all__ = ["BatchOfOne"]


class BatchOfOne(Pass):
    """Fixes the batch axis of every model input to 1."""

    name = "batch_of_one"

    def plan(self, view: GraphView, ctx: Context) -> list[str]:
        """The names of the input layers whose batch axis is not 1 yet."""
        return [t.name.split(":")[0] for t in view.model.inputs if t.shape[0] != 1]

    def apply(self, model: Any, plan: list[str], ctx: Context) -> PassResult:
        if not plan:
            return PassResult(model, False, [])

        def edit(config: dict) -> None:
            for lc in config.get("layers", []):
                if lc.get("class_name") == "InputLayer":
                    lc["config"]["batch_shape"] = [1, *list(lc["config"]["batch_shape"])[1:]]

        return PassResult(rebuild(model, edit), True, [f"inputs {', '.join(plan)} take a batch of 1"])
