"""What a pass is: a name, a pure plan on a read-only view of the model, and an apply that rebuilds.

* :class:`Context`: what every pass is given: the caller's sample (the check runs on it; random
  inputs only when the caller has none), the tolerance, the excluded layers, the width multiple.
* :class:`GraphView`: a read-only view of one Keras model, with its flat graph and its channel
  analysis made on first use and cached; the runner hands the same view on while passes change
  nothing, so a second plan does not analyse the model again.
* :class:`Pass`: ``plan(view, ctx)`` says what the pass would change and changes nothing (the dry
  run); ``apply(model, plan, ctx)`` makes the new model and returns a :class:`PassResult`.

Example (a pass that renames nothing and changes nothing):
  >>> class Nothing(Pass):
  ...     name = "nothing"
  ...     def plan(self, view, ctx):
  ...         return None
  ...     def apply(self, model, plan, ctx):
  ...         return PassResult(model, False, ["nothing to do"])
  >>> Nothing().apply(model, Nothing().plan(GraphView(model), Context()), Context()).notes
  ['nothing to do']
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

__all__ = ["Context", "GraphView", "Pass", "PassResult"]


@dataclasses.dataclass(frozen=True)
class Context:
    """What every pass of one run is given.

    Attributes:
      sample: inputs of the output checks (an array, or a list for several inputs); None: 4 random
        normal inputs (seed 0) of the model's input shapes (only for callers without data).
      rtol: a check passes when ``max |y_new - y| <= rtol * max(1, max |y|)``.
      exclude: regexes on layer paths the passes leave alone (their channels stay; without a
        channel rule they are opaque).
      multiple: round kept producer widths up to a multiple of this (4 or 8 for SIMD kernels).
    """

    sample: Any = None
    rtol: float = 1e-5
    exclude: str | Iterable[str] | None = None
    multiple: int = 1


@dataclasses.dataclass
class PassResult:
    """What :meth:`Pass.apply` returns.

    Attributes:
      model: the new model, or the model it was given when ``changed`` is False.
      changed: whether the model changed (the runner checks the outputs of a changed model).
      notes: one line per change, and per candidate left alone with the reason.
    """

    model: Any
    changed: bool
    notes: list[str] = dataclasses.field(default_factory=list)


class GraphView:
    """A read-only view of one model: its flat graph and channel analysis, made on first use.

    Args:
      model: a built Sequential or Functional model.
      exclude: the regexes the channel analysis treats as opaque (:attr:`Context.exclude`).
    """

    def __init__(self, model: Any, exclude: str | Iterable[str] | None = None) -> None:
        self.model = model
        self.exclude = exclude
        self._graph: Any = None
        self._analysis: Any = None

    @property
    def graph(self) -> Any:
        """The model's :func:`keras_wgsef.graph.model_graph.flatten_model` graph (made once)."""
        if self._graph is None:
            from keras_wgsef.graph.model_graph import flatten_model

            self._graph = flatten_model(self.model)
        return self._graph

    @property
    def analysis(self) -> Any:
        """The model's :func:`keras_wgsef.graph.channels.analyze` channel analysis (made once; not to be changed)."""
        if self._analysis is None:
            from keras_wgsef.graph.channels import analyze

            self._analysis = analyze(self.graph, exclude=self.exclude)
        return self._analysis


class Pass(abc.ABC):
    """One model-to-model rewrite that keeps the outputs (checked by :func:`tflite_export.passes.run_passes`)."""

    #: the pass's name in the pass lists, the notes, the errors and a budget's record of what it prices
    name: ClassVar[str]
    #: what a user can do meanwhile when the pass fails (an export option), said in the error
    way_out: ClassVar[str] = ""

    @abc.abstractmethod
    def plan(self, view: GraphView, ctx: Context) -> Any:
        """What the pass would change in ``view.model``; changes nothing (the dry run)."""

    @abc.abstractmethod
    def apply(self, model: Any, plan: Any, ctx: Context) -> PassResult:
        """The model with ``plan`` carried out (``model`` itself, unchanged, when the plan is empty)."""

    def __repr__(self) -> str:
        return self.name
