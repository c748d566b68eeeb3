"""tflite_export: shrink WGSEF-trained Keras models, convert to int8 TFLite and measure them.

Public API (one name per line)::

    shrink, plan_shrink       remove dead channels (a new model, outputs verified)   surgery.py
    to_tflite_int8            full-integer int8 conversion with calibration data     convert.py
    check_agreement           int8 vs float outputs on LiteRT                         convert.py
    measure, Report, compare  bytes, MACs, LiteRT latency, TFLM figures, accuracy     report.py
    tflm_min_arena, count_instructions   TFLite Micro arena and instruction count     micro.py
    write_c_array             model_data.cc / model_data.h for a TFLM firmware project firmware.py

Names are loaded on first use (PEP 562), so ``wgsef-export --help`` does not import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "shrink": "surgery",
    "plan_shrink": "surgery",
    "ShrinkError": "surgery",
    "ShrinkPlan": "surgery",
    "ShrinkReport": "surgery",
    "to_tflite_int8": "convert",
    "check_agreement": "convert",
    "Agreement": "convert",
    "CalibrationError": "convert",
    "ConversionError": "convert",
    "measure": "report",
    "Report": "report",
    "compare": "report",
    "tflm_min_arena": "micro",
    "count_instructions": "micro",
    "UnsupportedOpError": "micro",
    "write_c_array": "firmware",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tflite_export' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tflite_export.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
