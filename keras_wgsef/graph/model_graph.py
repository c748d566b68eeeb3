"""The layer graph of a Keras model, read from public data (nested models flattened).

:func:`flatten_model` turns a Sequential or Functional model (nested models included) into a
:class:`Graph` of :class:`Node` s, one per layer call, from the Functional ``get_config()``
inbound nodes and ``model.get_layer``; shapes come from each layer's ``compute_output_shape``.
:mod:`keras_wgsef.graph.channels` runs the channel rules over it; :mod:`tflite_export.shrink`
rebuilds models from it.

Example:
  >>> import keras
  >>> inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a")], name="block")
  >>> x = keras.Input((4,))
  >>> m = keras.Model(x, keras.layers.Dense(2, name="head")(inner(x)))
  >>> [n.path for n in flatten_model(m).nodes]
  ['block/a', 'head']
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "KERNELS",
    "Graph",
    "Node",
    "OperationCall",
    "TensorArg",
    "flatten_model",
    "head_layers",
    "layer_variables",
    "matches",
    "member_names",
    "model_weights",
    "relative_paths",
    "walk_back",
    "weight_names",
    "weight_paths",
]

#: weight names that hold a layer's kernel (the multiply-accumulate part)
KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


@dataclasses.dataclass
class Node:
    """One call of a layer (or an :class:`OperationCall`): ``outputs = layer(*inputs)`` (tensor ids)."""

    path: str
    layer: Any
    inputs: list[int]
    outputs: list[int]


@dataclasses.dataclass
class Graph:
    """A flat, topologically ordered view of a model (nested models expanded)."""

    nodes: list[Node]
    shapes: list[tuple]
    inputs: list[int]
    outputs: list[int]
    layers: dict[str, Any]
    submodel_inputs: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def new_tensor(self, shape: Sequence[Any]) -> int:
        self.shapes.append(tuple(shape))
        return len(self.shapes) - 1


@dataclasses.dataclass(frozen=True)
class TensorArg:
    """Where a model tensor stands in an :class:`OperationCall`'s arguments: the node's input ``index``."""

    index: int


@dataclasses.dataclass(eq=False)
class OperationCall:
    """One call of a ``keras.ops`` operation inside a Functional model, with its constant operands.

    ``x + 3.0`` or ``keras.ops.relu(x)`` on a symbolic tensor adds an operation (``keras.ops``
    class ``Add``, ``Relu``) that is not a layer to the model; its constants (the ``3.0``) are
    in the config's inbound node, not in the operation. The graph's node holds this record as its
    ``layer``, so a channel rule sees the operands. ``args`` and ``kwargs`` are the serialized
    inbound node's, each model tensor replaced by a :class:`TensorArg`; an operation has no weights.

    Example:
      >>> import keras
      >>> x = keras.Input((4,))
      >>> call = flatten_model(keras.Model(x, keras.ops.multiply(x, 6.0))).nodes[0].layer
      >>> call.class_name, call.args, call.constants(), call.num_tensors
      ('keras.src.ops.numpy.Multiply', [TensorArg(index=0), 6.0], [6.0], 1)
    """

    op: Any
    args: Any
    kwargs: Any
    weights: tuple = ()

    @property
    def name(self) -> str:
        return str(self.op.name)

    @property
    def op_class(self) -> type:
        """The operation's class: the key of its channel rule."""
        return type(self.op)

    @property
    def class_name(self) -> str:
        """The importable name of the operation's class (``keras.src.ops.numpy.Add``)."""
        return f"{type(self.op).__module__}.{type(self.op).__qualname__}"

    @property
    def num_tensors(self) -> int:
        """How many model tensors the call reads (the graph node's inputs)."""
        return len(_tensor_args([self.args, self.kwargs]))

    def get_config(self) -> dict:
        """The operation's own config (its constructor arguments, e.g. ``Gelu``'s ``approximate``)."""
        return dict(self.op.get_config())

    def constants(self) -> list[Any]:
        """The operands that are no model tensor (deserialized: ``3.0``, a NumPy array), in call order."""
        operands = [*self.args, *self.kwargs.values()]
        return [_fill(v, []) for v in operands if not _tensor_args(v)]

    def apply(self, tensors: Sequence[Any]) -> Any:
        """The operation on concrete ``tensors`` (one per :class:`TensorArg`) and its constants."""
        args, kwargs = _fill(self.args, tensors), _fill(self.kwargs, tensors)
        return self.op(*args, **kwargs)

    def output_shapes(self, shapes: list[tuple]) -> list[tuple]:
        """The output shapes for input ``shapes`` (``compute_output_spec``: nothing is called or recorded)."""
        import keras

        specs = [keras.KerasTensor(s) for s in shapes]
        out = self.op.compute_output_spec(*_fill(self.args, specs), **_fill(self.kwargs, specs))
        return [tuple(o.shape) for o in out] if isinstance(out, (list, tuple)) else [tuple(out.shape)]


def _mark_tensors(obj: Any, count: list[int]) -> Any:
    """A serialized inbound-node structure with each keras tensor replaced by a :class:`TensorArg`.

    The tensors are numbered in the order :func:`_keras_tensors` lists them (the node's inputs).
    """
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            count[0] += 1
            return TensorArg(count[0] - 1)
        return {k: _mark_tensors(v, count) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_mark_tensors(v, count) for v in obj]
    return obj


def _tensor_args(obj: Any) -> list[TensorArg]:
    if isinstance(obj, TensorArg):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensor_args(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensor_args(v)]
    return []


def _fill(obj: Any, tensors: Sequence[Any]) -> Any:
    """A marked structure with its tensors filled in and its serialized constants deserialized."""
    import keras

    if isinstance(obj, TensorArg):
        return tensors[obj.index]
    if isinstance(obj, dict):
        if obj.get("class_name") == "__tuple__":
            return tuple(_fill(v, tensors) for v in obj["config"]["value"])
        if "class_name" in obj and not _tensor_args(obj):
            return keras.saving.deserialize_keras_object(obj)
        return {k: _fill(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, tensors) for v in obj]
    return obj


def _is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _keras_tensors(obj: Any) -> list[dict]:
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return [obj["config"]]
        return [t for v in obj.values() for t in _keras_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _keras_tensors(v)]
    return []


def _as_refs(x: Any) -> list[tuple]:
    """``input_layers`` / ``output_layers``: one ``[name, node, tensor]`` or a list of them."""
    if isinstance(x, (list, tuple)) and len(x) == 3 and isinstance(x[0], str):
        return [tuple(x)]
    return [tuple(r) for r in x]


def _output_shapes(layer: Any, shapes: list[tuple]) -> list[tuple]:
    import keras

    if isinstance(layer, OperationCall):
        return layer.output_shapes(shapes)
    arg = shapes[0] if len(shapes) == 1 else list(shapes)
    try:
        out = layer.compute_output_shape(arg)
    except Exception:
        specs = [keras.KerasTensor(s) for s in shapes]
        try:
            out = layer.compute_output_spec(specs[0] if len(specs) == 1 else specs)
        except TypeError:  # separate positional inputs (MultiHeadAttention(query, value))
            out = layer.compute_output_spec(*specs)
        out = [o.shape for o in out] if isinstance(out, (list, tuple)) else out.shape
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], (list, tuple)):
        if not all(isinstance(o, (list, tuple)) for o in out):  # the extra inputs were states or masks
            out = layer.compute_output_shape(shapes[0])
            return [tuple(o) for o in out] if out and isinstance(out[0], (list, tuple)) else [tuple(out)]
        return [tuple(o) for o in out]
    return [tuple(out)]


def flatten_model(model: Any) -> Graph:
    """The flat graph of a Sequential or Functional model; raises for subclassed models."""
    g = Graph([], [], [], [], {})
    if not _is_model(model):
        raise TypeError(f"expected a keras.Model, got {type(model).__name__}.")
    cfg = _graph_config(model)
    g.inputs = [g.new_tensor(t.shape) for t in model.inputs] if cfg is not None else []
    g.outputs = _expand(model, "", g.inputs, g, {}, cfg)
    return g


def _graph_config(model: Any) -> dict | None:
    """The config of a model with a layer graph (a Sequential's, a Functional's); None when subclassed."""
    import keras

    try:
        cfg = model.get_config()
    except Exception:
        cfg = {}
    if isinstance(model, keras.Sequential) or (isinstance(cfg, dict) and "layers" in cfg and "input_layers" in cfg):
        return cfg
    return None


def _expand(model: Any, prefix: str, bound: list[int], g: Graph, calls: dict, cfg: dict | None = None) -> list[int]:
    import keras

    name = model.name
    cfg = _graph_config(model) if cfg is None else cfg
    if cfg is None:
        where = f" (at {prefix.rstrip('/')!r})" if prefix else ""
        raise TypeError(
            f"Model {name!r}{where} of class {type(model).__name__} is subclassed: it has no layer graph to "
            "read. Build it as a Functional or Sequential model (keras.Model(inputs, outputs)), or analyse "
            "a Functional copy of it."
        )
    if isinstance(model, keras.Sequential):
        t = bound
        for layer in model.layers:
            t = _call(layer, prefix + layer.name, t, g, calls)
        return t
    hist: dict[tuple, int] = {}
    for ref, tid in zip(_as_refs(cfg["input_layers"]), bound):
        hist[(ref[0], int(ref[1]), int(ref[2]))] = tid
    pending = [
        (lc, i, nd)
        for lc in cfg["layers"]
        if lc["class_name"] != "InputLayer"
        for i, nd in enumerate(lc.get("inbound_nodes", []))
    ]
    while pending:
        progress, rest = False, []
        for lc, idx, nd in pending:
            args = _keras_tensors(nd.get("args", [])) + _keras_tensors(nd.get("kwargs", {}))
            keys = [(a["keras_history"][0], int(a["keras_history"][1]), int(a["keras_history"][2])) for a in args]
            if not all(k in hist for k in keys):
                rest.append((lc, idx, nd))
                continue
            ins = [hist[k] for k in keys]
            for k, a in zip(ins, args):
                if g.shapes[k] is None or g.shapes[k] == ():
                    g.shapes[k] = tuple(a["shape"])
                elif len(g.shapes[k]) == len(a["shape"]):  # the traced shape knows dims the layer left open
                    g.shapes[k] = tuple(s if s is not None else t for s, t in zip(g.shapes[k], a["shape"]))
            layer = _layer_or_operation(model, lc["config"]["name"])
            if not isinstance(layer, keras.layers.Layer):  # a keras.ops call: its constants are in the node
                layer = _operation_call(layer, nd, g.layers.get(prefix + layer.name))
            outs = _call(layer, prefix + layer.name, ins, g, calls)
            for j, o in enumerate(outs):
                hist[(layer.name, idx, j)] = o
            progress = True
        if not progress:
            raise ValueError(f"model {name!r}: could not order the layer graph (unresolved inbound tensors).")
        pending = rest
    return [hist[_output_key(model, r)] for r in _as_refs(cfg["output_layers"])]


def _output_key(model: Any, ref: tuple) -> tuple[str, int, int]:
    """The history key of an ``output_layers`` entry.

    Keras numbers the calls of a nested Functional model from 1 in ``output_layers`` (its node 0 is
    its own construction) but from 0 in the layers' inbound nodes (``functional.get_config`` and
    ``serialize_node``); the inbound numbering is the one the graph records.
    """
    import keras

    name, node, tensor = ref[0], int(ref[1]), int(ref[2])
    layer = _layer_or_operation(model, name)
    if _is_model(layer) and not isinstance(layer, keras.Sequential) and node > 0:
        node -= 1
    return (name, node, tensor)


def _layer_or_operation(model: Any, name: str) -> Any:
    """The layer called ``name``, or the ``keras.ops`` operation of that name (e.g. ``not_equal``)."""
    for op in model.operations:
        if op.name == name:
            return op
    raise ValueError(f"model {model.name!r}: no layer or operation named {name!r}.")


def _operation_call(op: Any, node: dict, seen: Any) -> OperationCall:
    """The :class:`OperationCall` of one inbound node of ``op`` (the one already seen, for an equal call)."""
    count = [0]
    args = _mark_tensors(node.get("args", []), count)
    kwargs = _mark_tensors(node.get("kwargs", {}), count)
    if isinstance(seen, OperationCall) and seen.op is op and (seen.args, seen.kwargs) == (args, kwargs):
        return seen
    if seen is not None:
        raise ValueError(
            f"operation {op.name!r} ({type(op).__name__}) is called more than once with different constants; "
            "call a separate keras.ops function each time (or wrap the computation in a layer)."
        )
    return OperationCall(op, args, kwargs)


def _call(layer: Any, path: str, ins: list[int], g: Graph, calls: dict) -> list[int]:
    if _is_model(layer):
        g.submodel_inputs[path + "/"] = list(ins)
        return _expand(layer, path + "/", ins, g, calls)
    if path in g.layers and g.layers[path] is not layer:
        raise ValueError(f"two different layers share the path {path!r}.")
    g.layers[path] = layer
    outs = [g.new_tensor(s) for s in _output_shapes(layer, [g.shapes[i] for i in ins])]
    g.nodes.append(Node(path, layer, ins, outs))
    return outs


def relative_paths(layer: Any) -> list[str]:
    """The path of each of a layer's weights inside the layer, in ``layer.weights`` order.

    A weight the layer creates itself is its name (``"kernel"``, ``"vector_u"``); a weight of a
    sublayer is the sublayer's name and its own relative path (``LSTM``: ``"lstm_cell/kernel"``,
    ``TimeDistributed(Dense)``: ``"dense/kernel"``, ``Bidirectional(LSTM)``:
    ``"forward_lstm/lstm_cell/kernel"``). It is read from the layer structure, so it is the same
    before and after ``keras.models.load_model`` (which builds a wrapper's inner layer outside the
    wrapper's name scope: ``variable.path`` loses the wrapper's name there) and on every backend;
    for a freshly built layer it is ``variable.path`` without the ``layer.path + "/"`` prefix.

    Example:
      >>> import keras
      >>> lstm = keras.layers.LSTM(3)
      >>> _ = lstm(keras.Input((5, 2)))
      >>> relative_paths(lstm)
      ['lstm_cell/kernel', 'lstm_cell/recurrent_kernel', 'lstm_cell/bias']
    """
    inner: dict[int, str] = {}
    # Keras tracks a layer's sublayers in ``_layers`` (no public equivalent outside keras.Model)
    for sub in getattr(layer, "_layers", None) or []:
        for w, rel in zip(getattr(sub, "weights", []), relative_paths(sub)):
            inner.setdefault(id(w), f"{sub.name}/{rel}")
    return [inner.get(id(w), w.name) for w in getattr(layer, "weights", [])]


def weight_names(layer: Any) -> list[str]:
    """The names of a layer's weights, in ``layer.weights`` order: the shortest path suffixes that differ.

    ``"kernel"``, ``"bias"``, ``"gamma"`` for most layers (also ``LSTM``'s ``"lstm_cell/kernel"``
    is ``"kernel"``); a layer with sublayers whose weights share a last name gets longer suffixes
    (``MultiHeadAttention``: ``"query/kernel"``, ``"key/kernel"``; ``Bidirectional``:
    ``"forward_lstm/lstm_cell/kernel"``). The channel rules address weights by these names; group
    members use the full :func:`relative_paths` (:func:`member_names`).

    Example:
      >>> import keras
      >>> mha = keras.layers.MultiHeadAttention(2, 4)
      >>> _ = mha(keras.Input((5, 8)), keras.Input((5, 8)))
      >>> weight_names(mha)[:3]
      ['query/kernel', 'query/bias', 'key/kernel']
    """
    parts = [p.split("/") for p in relative_paths(layer)]
    for k in range(1, max((len(p) for p in parts), default=1) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return ["/".join(p) for p in parts]


def layer_variables(layer: Any) -> dict[str, Any]:
    """``{name: variable}`` of a layer (:func:`weight_names`: ``"kernel"``, ``"bias"``, ...); none for an operation."""
    return dict(zip(weight_names(layer), getattr(layer, "weights", [])))


def member_names(path: str, layer: Any) -> dict[str, str]:
    """``{weight name: member path}`` of the layer at ``path``: the one translation from the rules' names.

    A member path (:class:`keras_wgsef.groups.Member`) is the layer's path in the model and the
    weight's :func:`relative_paths` entry, e.g. ``"kernel"`` -> ``"conv/kernel"`` and, for an
    ``LSTM`` at ``"block/lstm"``, ``"kernel"`` -> ``"block/lstm/lstm_cell/kernel"``.

    Example:
      >>> import keras
      >>> td = keras.layers.TimeDistributed(keras.layers.Dense(3, name="dense"), name="td")
      >>> _ = td(keras.Input((5, 2)))
      >>> member_names("td", td)
      {'kernel': 'td/dense/kernel', 'bias': 'td/dense/bias'}
    """
    return {name: f"{path}/{rel}" for name, rel in zip(weight_names(layer), relative_paths(layer))}


def weight_paths(g: Graph) -> dict[str, Any]:
    """``{member path: variable}`` of every weight of the graph: the paths of group members.

    A member path is the layer's path from :func:`flatten_model` (nested models included, the top
    model's own name left out) and the weight's path inside the layer (:func:`member_names`):
    ``"conv/kernel"``, ``"block/conv/kernel"``, ``"lstm/lstm_cell/kernel"``, ``"td/dense/kernel"``.
    For a top-level Functional model these are the ``variable.path`` s; unlike ``variable.path``
    they do not change on save and load (:func:`keras_wgsef.groups.match_variables` finds the
    variable of a member in a reloaded model, whose paths lose leading components).
    """
    out: dict[str, Any] = {}
    for path, layer in g.layers.items():
        for member, w in zip(member_names(path, layer).values(), getattr(layer, "weights", [])):
            out[member] = w
    return out


def model_weights(model: Any) -> dict[str, Any]:
    """``{member path: variable}`` of a model (:func:`weight_paths`): the paths group members use.

    Example:
      >>> import keras
      >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="h")])
      >>> sorted(model_weights(m))
      ['h/bias', 'h/kernel']
    """
    return weight_paths(flatten_model(model))


def head_layers(g: Graph) -> set[str]:
    """Paths of the layers whose kernel makes a model output: the classifier heads.

    The one rule for "the head" everywhere: a layer with a kernel whose output reaches a model
    output through layers without a kernel (activations, reshapes, pooling, merges). Its output
    channels are the model's outputs (the classes), so they are never grouped or removed.

    Example:
      >>> import keras
      >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="h"),
      ...                       keras.layers.Dense(2, name="out"), keras.layers.Softmax()])
      >>> sorted(head_layers(flatten_model(m)))
      ['out']
    """
    heads: set[str] = set()

    def follow(node: Node) -> list[int]:
        if any(name.rsplit("/", 1)[-1] in KERNELS for name in layer_variables(node.layer)):
            heads.add(node.path)
            return []
        return node.inputs

    walk_back(g, follow)
    return heads


def walk_back(g: Graph, follow: Callable[[Node], Iterable[int]]) -> list[Node]:
    """The nodes reached from the model outputs going backwards, each once.

    ``follow(node)`` returns the input tensors to go on through (all of ``node.inputs``, some of
    them, or none to stop there).
    """
    producer = {t: n for n in g.nodes for t in n.outputs}
    reached: list[Node] = []
    stack, seen = list(g.outputs), set()
    while stack:
        t = stack.pop()
        if t in seen or t not in producer:
            continue
        seen.add(t)
        reached.append(producer[t])
        stack.extend(follow(producer[t]))
    return reached


def matches(patterns: str | Iterable[str] | None, path: str) -> bool:
    if patterns is None:
        return False
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    return any(re.search(p, path) for p in pats)
