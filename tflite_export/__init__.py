"""tflite_export: shrink WGSEF-trained Keras models, convert them to int8 TFLite and measure them.

The flow, one module per step (public API, one name per line)::

    export, ExportResult        shrink -> int8 -> check -> measure -> artefacts  export.py
    shrink, plan_shrink         remove dead channels (a new model, outputs verified) shrink.py
    run_passes, SHRINK, DEFAULT the model-to-model passes, their order, their check passes/
    drop_zero_branches          remove residual branches whose output is zero       branches.py
    cheaper_ops                 global average pooling -> AVERAGE_POOL_2D, not MEAN  rewrite.py
    to_tflite_int8              full-integer int8 conversion with calibration data convert.py
    check_agreement, run_litert int8 vs float, batches on the LiteRT interpreter    litert.py
    measure, Report, compare    bytes, MACs, latency, TFLM figures, accuracy        measure.py
    class_accuracy              argmax accuracy (the one place it is computed)      measure.py
    tflm_min_arena, count_instructions   TFLite Micro arena and instruction count micro.py
    write_c_array               model_data.cc / model_data.h for a TFLM firmware    firmware.py

Names are loaded on first use (PEP 562), so ``wgsef-export --help`` does not import TensorFlow.
Import the functions from the package (``from tflite_export import shrink``): the modules
``shrink``, ``measure`` and ``export`` share their function's name, and the package keeps the
name bound to the function even after ``from tflite_export.shrink import plan_shrink``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from typing import Any

_EXPORTS = {
    "export": "export",
    "ExportResult": "export",
    "OutputFolderError": "export",
    "shrink": "shrink",
    "plan_shrink": "shrink",
    "ShrinkError": "shrink",
    "ShrinkPlan": "shrink",
    "ShrinkReport": "shrink",
    "drop_zero_branches": "branches",
    "run_passes": "passes",
    "PassError": "passes",
    "SHRINK": "passes",
    "DEFAULT": "passes",
    "cheaper_ops": "rewrite",
    "RewriteError": "rewrite",
    "to_tflite_int8": "convert",
    "CalibrationError": "convert",
    "ConversionError": "convert",
    "check_agreement": "litert",
    "run_litert": "litert",
    "Agreement": "litert",
    "measure": "measure",
    "Report": "measure",
    "compare": "measure",
    "class_accuracy": "measure",
    "tflm_min_arena": "micro",
    "count_instructions": "micro",
    "UnsupportedOpError": "micro",
    "write_c_array": "firmware",
}

__all__ = sorted(_EXPORTS)


#: what conversion and the interpreter import (the ``export`` extra); TFLite Micro is the ``micro``
#: extra, optional: without it the TFLM figures are None, with a note (:func:`tflite_export.micro.micro_missing`)
_EXPORT_EXTRA = ("tensorflow", "ai_edge_litert")
#: the modules that need Keras only (the others convert, interpret or run on TFLite Micro)
_KERAS_ONLY = {"shrink", "branches", "passes", "firmware"}


def missing_export_modules() -> list[str]:
    """The modules of the ``export`` extra that are not installed (empty when it is)."""
    return [m for m in _EXPORT_EXTRA if importlib.util.find_spec(m) is None]


def install_export_hint() -> str:
    """The install line of the ``export`` extra, with where to run it (for error messages)."""
    from keras_wgsef._install import install_hint  # here, not at import: keras_wgsef imports Keras

    return install_hint("export")


_missing = missing_export_modules()
if _missing:
    warnings.warn(
        f"tflite_export: {', '.join(_missing)} not installed: shrink and plan_shrink work "
        f"(Keras only); conversion and LiteRT need the `export` extra: {install_export_hint()}.",
        stacklevel=2,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tflite_export' has no attribute {name!r}")
    missing = [] if module in _KERAS_ONLY else missing_export_modules()
    if missing:
        raise ImportError(
            f"tflite_export.{name} needs {', '.join(missing)}, not installed: the `export` extra, "
            f"{install_export_hint()}."
        )
    value = getattr(importlib.import_module(f"tflite_export.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Keeps ``tflite_export.shrink`` (and ``measure``, ``export``) the function, not the submodule.

    Importing a submodule sets it as an attribute of its package; for the three modules named after
    their verb that would shadow the function. Those assignments are dropped, so the name resolves
    through :func:`__getattr__` to the function.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
