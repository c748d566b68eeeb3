"""Cheaper operators for the same function: global average pooling as a plain average pooling.

``GlobalAveragePooling2D`` converts to the TFLite ``MEAN`` operator, which TFLite Micro runs with a
generic reduction kernel (no CMSIS-NN version; measured on a Cortex-M4: ~134 instructions per input
element). An ``AveragePooling2D`` whose window is the whole feature map computes the same values and
converts to ``AVERAGE_POOL_2D``, which has an optimized kernel. :func:`cheaper_ops` returns a new
Keras model with that substitution and checks that its outputs equal the original's.

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
The model is rebuilt the way :func:`tflite_export.shrink` rebuilds one:
serialized config edited, deserialized, weights copied by layer path (nested models included).

The float outputs are equal (checked; :class:`RewriteError` otherwise). The int8 models are not
bit-identical: ``AVERAGE_POOL_2D`` keeps its input's quantization step where ``MEAN`` gets one
fitted to the averages, so the outputs differ by a few LSB on trained CNNs (more where the averages
span a much narrower range than the features); :func:`record_saving` puts the measured difference
and the instruction saving into the export report.

Example (``model`` the doctest CNN, ending in ``GlobalAveragePooling2D(name="gap")``):
    >>> fast, lines = cheaper_ops(model, x[:16])
    >>> [layer.name for layer in fast.layers[-3:]], type(fast.get_layer("gap")).__name__
    (['gap_avgpool', 'gap', 'head'], 'Reshape')
    >>> lines[0]
    'gap: GlobalAveragePooling2D over 4x4x16 -> AveragePooling2D((4, 4)) gap_avgpool + Reshape((16,)) gap'
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np

from keras_wgsef.graph.model_graph import flatten_model

__all__ = [
    "RewriteError",
    "call_kwargs",
    "cheaper_ops",
    "int8_difference",
    "record_saving",
    "unroll_recurrent",
    "with_batch_one",
]

_GAP = {"GlobalAveragePooling2D": ("AveragePooling2D", 2), "GlobalAveragePooling1D": ("AveragePooling1D", 1)}


class RewriteError(RuntimeError):
    """The rewritten model would differ from the original (or could not be built)."""


@dataclasses.dataclass
class _Plan:
    path: str
    kind: str  # the Global* class name
    spatial: tuple[int, ...]
    channels: int
    keepdims: bool


def _plan(model: Any) -> tuple[dict[str, _Plan], list[str]]:
    """Which layers to rewrite (by path), and a line per candidate that stays."""
    import keras

    g = flatten_model(model)
    masked = any(
        isinstance(layer, keras.layers.Masking) or getattr(layer, "mask_zero", False) for layer in g.layers.values()
    )
    shapes: dict[str, set[tuple]] = {}
    mask_given: set[str] = set()  # called with a mask tensor (an explicit or propagated mask argument)
    for node in g.nodes:
        if type(node.layer).__name__ in _GAP and type(node.layer).__module__.startswith("keras"):
            shapes.setdefault(node.path, set()).add(tuple(g.shapes[node.inputs[0]]))
            if len(node.inputs) > 1:
                mask_given.add(node.path)
    plans, kept = {}, []
    for path, seen in shapes.items():
        layer = g.layers[path]
        kind = type(layer).__name__
        rank = _GAP[kind][1]
        reason = ""
        if len(seen) != 1:
            reason = f"called on {len(seen)} different input shapes"
        elif layer.data_format != "channels_last":
            reason = f"data_format {layer.data_format}"
        elif rank == 1 and masked:
            reason = "the model has a masking layer (a masked average is not a plain one)"
        elif path in mask_given:
            reason = "it is called with a mask (a masked average is not a plain one)"
        else:
            shape = next(iter(seen))
            dims = shape[1:]
            if len(dims) != rank + 1 or not all(isinstance(d, int) and d > 0 for d in dims):
                reason = f"input shape {shape} is not static"
        if reason:
            kept.append(f"kept {path} ({kind}): {reason}")
            continue
        dims = next(iter(seen))[1:]
        plans[path] = _Plan(path, kind, tuple(int(d) for d in dims[:-1]), int(dims[-1]), bool(layer.keepdims))
    return plans, kept


def _layer_entry(layer: Any, template: dict) -> dict:
    """A layer's entry for a model config, with the template's ``dtype``."""
    import keras

    entry = keras.saving.serialize_keras_object(layer)
    entry["config"]["dtype"] = copy.deepcopy(template["config"].get("dtype", entry["config"]["dtype"]))
    entry["config"]["trainable"] = template["config"].get("trainable", True)
    entry["name"] = entry["config"]["name"]
    return entry


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


def _edit_config(cfg: dict, prefix: str, plans: dict[str, _Plan], lines: list[str]) -> None:
    import keras

    functional = "input_layers" in cfg
    names = {lc["config"]["name"] for lc in cfg["layers"]}
    new_layers = []
    for lc in cfg["layers"]:
        name = lc["config"]["name"]
        if "layers" in lc["config"]:
            _edit_config(lc["config"], prefix + name + "/", plans, lines)
        plan = plans.get(prefix + name)
        if plan is None or lc["class_name"] != plan.kind or (functional and len(lc.get("inbound_nodes", [])) != 1):
            if plan is not None:
                lines.append(f"kept {plan.path} ({plan.kind}): the layer is called more than once")
            new_layers.append(lc)
            continue
        pool_class = getattr(keras.layers, _GAP[plan.kind][0])
        size = plan.spatial if len(plan.spatial) > 1 else plan.spatial[0]
        window = "x".join(map(str, plan.spatial))
        what = f"{plan.path}: {plan.kind} over {window}x{plan.channels} -> {pool_class.__name__}({size!r})"
        nodes = [
            {**node, "kwargs": call_kwargs(node.get("kwargs", {}), plan.path, plan.kind, pool_class)}
            for node in lc.get("inbound_nodes", [])
        ]
        if plan.keepdims:
            pool = _layer_entry(pool_class(size, padding="valid", name=name), lc)
            pool["inbound_nodes"] = nodes
            new_layers.append(pool)
            lines.append(f"{what} {name}")
            continue
        pool_name, i = f"{name}_avgpool", 0
        while pool_name in names:
            i += 1
            pool_name = f"{name}_avgpool_{i}"
        names.add(pool_name)
        pool = _layer_entry(pool_class(size, padding="valid", name=pool_name), lc)
        reshape = _layer_entry(keras.layers.Reshape((plan.channels,), name=name), lc)
        if functional:
            (node,) = nodes
            pool["inbound_nodes"] = [node]
            args = [a for a in node["args"] if isinstance(a, dict)]
            dtype = args[0]["config"].get("dtype", "float32") if args else "float32"
            pooled = {
                "class_name": "__keras_tensor__",
                "config": {
                    "shape": [None, *([1] * len(plan.spatial)), plan.channels],
                    "dtype": dtype,
                    "keras_history": [pool_name, 0, 0],
                },
            }
            reshape["inbound_nodes"] = [{"args": [pooled], "kwargs": {}}]
        new_layers += [pool, reshape]
        lines.append(f"{what} {pool_name} + Reshape(({plan.channels},)) {name}")
    cfg["layers"] = new_layers


def cheaper_ops(model: Any, sample: Any = None, *, rtol: float = 1e-5) -> tuple[Any, list[str]]:
    """``model`` with each global average pooling replaced by an average pooling over the whole map.

    See the module docstring for what each layer becomes and when one is left alone.

    Args:
      model: a built Sequential or Functional model (nested models included); never modified.
      sample: inputs for the check (an array, or a list for several inputs); None draws 4 random
        normal inputs (seed 0) of the model's input shapes.
      rtol: the check passes when ``max |y_new - y| <= rtol * max(1, max |y|)``.

    Returns:
      ``(new_model, lines)``: the rewritten model (same layer names and weights, uncompiled), or
      ``model`` itself when nothing was rewritten; ``lines`` says per layer what it became
      (``"gap: GlobalAveragePooling2D over 7x7x64 -> AveragePooling2D((7, 7)) gap_avgpool +
      Reshape((64,)) gap"``) or why it was kept (``"kept <path> (<class>): <reason>"``).

    Raises:
      RewriteError: the rewritten model could not be built or its outputs differ beyond ``rtol``.
    """
    from tflite_export.rebuild import rebuild_equal

    plans, lines = _plan(model)
    if not plans:
        return model, lines
    rewritten: list[str] = []
    new = rebuild_equal(
        model,
        lambda config: _edit_config(config, "", plans, rewritten),
        what="the model with cheaper operators (export with cheaper_ops=False, --keep-mean, meanwhile)",
        error=RewriteError,
        sample=sample,
        rtol=rtol,
    )
    lines = rewritten + lines
    if not any(not line.startswith("kept ") for line in rewritten):
        return model, lines
    return new, lines


def _lsb_difference(raw_a: np.ndarray, raw_b: np.ndarray, a: bytes) -> tuple[int, float]:
    from tflite_export.quantization import dequantized_output_scale

    ra, rb = raw_a.reshape(len(raw_a), -1), raw_b.reshape(len(raw_b), -1)
    if ra.dtype.kind == "f":  # float outputs: in steps of the int8 tensor DEQUANTIZE reads
        lsb = np.rint(np.abs(ra.astype(np.float64) - rb) / (dequantized_output_scale(a) or 1.0))
    else:
        lsb = np.abs(ra.astype(np.int64) - rb.astype(np.int64))
    return int(lsb.max()) if lsb.size else 0, float(np.mean(ra.argmax(1) == rb.argmax(1))) if len(ra) else 1.0


def int8_difference(a: bytes, b: bytes, x: np.ndarray) -> tuple[int, float]:
    """How far two int8 models of the same function disagree on LiteRT over the inputs ``x``.

    Returns ``(max |difference| in output LSB, argmax agreement)``; both models must have the same
    output quantization (as a model and its :func:`cheaper_ops` version converted with the same
    calibration data do). Float outputs are compared in steps of the int8 tensor before DEQUANTIZE.
    """
    from tflite_export.console import capture_output
    from tflite_export.litert import run_litert

    with capture_output():
        ra, _, _ = run_litert(a, x)
        rb, _, _ = run_litert(b, x)
    return _lsb_difference(ra, rb, a)


def record_saving(
    report: Any,
    tflite: bytes,
    plain: bytes,
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    float_model: Any = None,
    max_samples: int = 1000,
) -> None:
    """Notes in ``report`` how the rewritten int8 model compares with ``plain`` (converted without it).

    Adds to the :class:`tflite_export.measure.Report` of ``tflite``: the TFLM instruction saving (when
    both counts are in the report), and on LiteRT over the first ``max_samples`` inputs of ``x`` the
    two int8 models' output difference, their argmax agreement, and with ``float_model`` each one's
    distance from the float outputs (with ``y`` also the accuracy without the rewrite).

    The int8 models are not bit-identical: ``AVERAGE_POOL_2D`` must keep its input's quantization
    step while ``MEAN`` gets a step fitted to the (narrower) range of the averages, so the averages
    are represented more coarsely after the rewrite. On trained CNNs with ReLU features this is an
    output LSB or a few; where the averages span a much narrower range than the features (e.g.
    nearly constant averages) it can be tens of LSB, which these notes show (export with
    ``cheaper_ops=False`` then).
    """
    from tflite_export.console import capture_output
    from tflite_export.litert import compare_outputs, float_outputs, run_litert
    from tflite_export.measure import accuracy_applies, class_accuracy

    before, after = report.tflm_instructions_without_rewrite, report.tflm_instructions
    if before and after is not None:
        report.notes.append(
            f"cheaper operators save {before - after:,} TFLM instructions per inference "
            f"({before:,} -> {after:,}, {100 * (before - after) / before:.1f} %)"
        )
    x = np.asarray(x)[:max_samples]
    with capture_output():
        raw_a, real_a, details_a = run_litert(tflite, x)
        raw_b, real_b, details_b = run_litert(plain, x)
    lsb, agreement = _lsb_difference(raw_a, raw_b, tflite)
    note = (
        f"int8 with vs without cheaper operators on LiteRT ({len(x)} samples): max diff {lsb} LSB, "
        f"argmax agreement {100 * agreement:.2f} %"
    )
    if float_model is not None:
        reference = float_outputs(float_model, x)
        with_, without = (
            compare_outputs(reference, real, details, t)
            for real, details, t in ((real_a, details_a, tflite), (real_b, details_b, plain))
        )
        note += (
            f"; int8 vs float max diff {with_.max_diff_steps:.1f} output steps with, "
            f"{without.max_diff_steps:.1f} without"
        )
    if y is not None and accuracy_applies((1, *np.asarray(raw_b).shape[1:]), np.asarray(y)[: len(x)]) is None:
        note += f"; int8 accuracy without them {100 * class_accuracy(raw_b, np.asarray(y)[: len(x)]):.2f} %"
    report.notes.append(note)


def _unroll_edit(cfg: dict, prefix: str, steps: dict[str, int], lines: list[str]) -> None:
    for lc in cfg.get("layers", []):
        conf = lc.get("config", {})
        if "layers" in conf:
            _unroll_edit(conf, prefix + conf["name"] + "/", steps, lines)
            continue
        path = prefix + conf.get("name", "")
        if path not in steps:
            continue
        for c in _recurrent_configs(conf):
            c["unroll"] = True
        lines.append(f"{path}: {lc['class_name']} unrolled over {steps[path]} steps")


def _recurrent_configs(conf: dict) -> list[dict]:
    """The config itself and those of wrapped layers (Bidirectional), where ``unroll`` is False."""
    nested = [conf.get(k, {}).get("config", {}) for k in ("layer", "backward_layer") if isinstance(conf.get(k), dict)]
    return [c for c in (conf, *nested) if c.get("unroll") is False]


def unroll_recurrent(model: Any, sample: Any = None, *, rtol: float = 1e-5) -> tuple[Any, list[str]]:
    """The model with its recurrent layers unrolled over their (static) time steps, outputs checked.

    A Keras 3 ``LSTM``/``GRU``/``SimpleRNN`` converts to a TensorFlow while loop over TensorList
    operators, which have no int8 TFLite kernel. Unrolled (``unroll=True``), the same layer is a
    fixed chain of ``FULLY_CONNECTED``, ``LOGISTIC``, ``TANH``, ``MUL`` and ``ADD`` per step, which
    quantize and run on TFLite Micro. Only layers whose input has a static number of steps are
    unrolled; ``(model, [])`` when there is none (the model itself).

    Example (``model`` the doctest CNN has no recurrent layer):
      >>> unroll_recurrent(model)[1]
      []
    """
    from tflite_export.rebuild import rebuild_equal

    g = flatten_model(model)
    steps = {}
    for node in g.nodes:
        shape = g.shapes[node.inputs[0]] if node.inputs else ()
        if _recurrent_configs(node.layer.get_config()) and len(shape) >= 3 and shape[1] is not None:
            steps[node.path] = int(shape[1])
    if not steps:
        return model, []
    lines: list[str] = []
    new = rebuild_equal(
        model,
        lambda config: _unroll_edit(config, "", steps, lines),
        what="the model with its recurrent layers unrolled",
        error=RewriteError,
        sample=sample,
        rtol=rtol,
    )
    return new, lines


def with_batch_one(model: Any) -> Any:
    """The model with a fixed batch of one sample (what a microcontroller runs), weights shared by value.

    Converted with a dynamic batch, some layers compute shapes at run time (``REDUCE_PROD``,
    ``FILL`` with computed dimensions: attention's reshapes, a recurrent layer's zero state), which
    TFLite Micro cannot run; with the batch fixed they fold into constants.

    Example (``model`` the doctest CNN):
      >>> with_batch_one(model).inputs[0].shape
      (1, 8, 8, 1)
    """
    from tflite_export.rebuild import rebuild

    def edit(config: dict) -> None:
        for lc in config.get("layers", []):
            if lc.get("class_name") == "InputLayer":
                lc["config"]["batch_shape"] = [1, *list(lc["config"]["batch_shape"])[1:]]

    return rebuild(model, edit)
