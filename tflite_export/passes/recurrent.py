"""Pass ``unroll_recurrent``: recurrent layers unrolled over their (static) time steps.

A Keras 3 ``LSTM``/``GRU``/``SimpleRNN`` converts to a TensorFlow while loop over TensorList
operators, which have no int8 TFLite kernel. Unrolled (``unroll=True``), the same layer is a
fixed chain of ``FULLY_CONNECTED``, ``LOGISTIC``, ``TANH``, ``MUL`` and ``ADD`` per step, which
quantize and run on TFLite Micro. Only layers whose input has a static number of steps are
unrolled (wrapped ones, ``Bidirectional``, included).

Example (``model`` the doctest CNN has no recurrent layer):
  >>> from tflite_export.passes import Context, GraphView
  >>> UnrollRecurrent().plan(GraphView(model), Context())
  {}
"""

from __future__ import annotations

from typing import Any

from tflite_export.passes.base import Context, GraphView, Pass, PassResult
from tflite_export.passes.config import model_configs
from tflite_export.passes.rebuild import rebuild

__all__ = ["UnrollRecurrent"]


def _unroll_edit(config: dict, steps: dict[str, int], lines: list[str]) -> None:
    for cfg, prefix in model_configs(config):
        for lc in cfg.get("layers", []):
            conf = lc.get("config", {})
            path = prefix + conf.get("name", "")
            if "layers" in conf or path not in steps:
                continue
            for c in _recurrent_configs(conf):
                c["unroll"] = True
            lines.append(f"{path}: {lc['class_name']} unrolled over {steps[path]} steps")


def _recurrent_configs(conf: dict) -> list[dict]:
    """The config itself and those of wrapped layers (Bidirectional), where ``unroll`` is False."""
    nested = [conf.get(k, {}).get("config", {}) for k in ("layer", "backward_layer") if isinstance(conf.get(k), dict)]
    return [c for c in (conf, *nested) if c.get("unroll") is False]


class UnrollRecurrent(Pass):
    """Sets ``unroll=True`` on every recurrent layer whose input has a static number of steps."""

    name = "unroll_recurrent"

    def plan(self, view: GraphView, ctx: Context) -> dict[str, int]:
        """Layer path -> its number of time steps, for the recurrent layers to unroll."""
        g = view.graph
        steps = {}
        for node in g.nodes:
            shape: tuple = tuple(g.shapes[node.inputs[0]]) if node.inputs else ()
            if _recurrent_configs(node.layer.get_config()) and len(shape) >= 3 and shape[1] is not None:
                steps[node.path] = int(shape[1])
        return steps

    def apply(self, model: Any, plan: dict[str, int], ctx: Context) -> PassResult:
        if not plan:
            return PassResult(model, False, [])
        lines: list[str] = []
        return PassResult(rebuild(model, lambda config: _unroll_edit(config, plan, lines)), True, lines)
