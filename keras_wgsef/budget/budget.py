"""``Budget``: the hardware bounds a trained model must meet, in the units a firmware engineer uses.

Each bound is either an absolute figure (an int, or a float >= 1: ``macs=500_000``,
``arena_bytes=8192``) or a fraction of the dense model's figure (a float in (0, 1):
``macs=0.25``). Any combination may be set; the trained, shrunk, int8 model must meet all of them.

========================  ==============================================================
bound                     measured on the exported model as
========================  ==============================================================
``macs``                  multiply-accumulates per inference (flatbuffer)
``params``                parameters (flatbuffer)
``flash_bytes``           size of the ``.tflite`` file
``arena_bytes``           TFLite Micro's minimal tensor arena
``instructions``          TFLite Micro instructions of one ``Invoke()`` (callgrind, reference kernels)
========================  ==============================================================

Fractions are resolved against the dense model's figures as predicted by
:mod:`keras_wgsef.budget.cost_model` (MACs and parameters exact; flash, arena and instructions
from calibrated models) when the budget is bound to a model; :meth:`Budget.resolve` does that.

Example:
  >>> b = Budget(macs=0.25, arena_bytes=8192)
  >>> b.bounds
  {'macs': 0.25, 'arena_bytes': 8192}
  >>> b.resolve({"macs": 1_919_872, "params": 24_394, "flash_bytes": 31_960, "arena_bytes": 18_888,
  ...            "instructions": 25_229_088})
  {'macs': 479968, 'arena_bytes': 8192}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["COSTS", "Budget"]

#: The figures a budget can bound, in report order.
COSTS = ("macs", "params", "flash_bytes", "arena_bytes", "instructions")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Upper bounds on the exported model's costs (absolute, or a fraction in (0, 1) of the dense model).

    Args:
      macs: multiply-accumulates per inference.
      params: parameters.
      flash_bytes: ``.tflite`` bytes.
      arena_bytes: TFLite Micro arena bytes.
      instructions: TFLite Micro instructions per inference (x86 callgrind count of the reference kernels).

      min_width: not a bound: every layer keeps at least this fraction of the width the uniformly
        thinner model meeting the bounds has (see :class:`keras_wgsef.BudgetPlan`), in [0, 1].

    Raises:
      ValueError: no bound set; a bound that is zero, negative, not finite, or a float that is
        neither a fraction in (0, 1) nor a whole figure >= 1; ``min_width`` outside [0, 1].
    """

    macs: float | None = None
    params: float | None = None
    flash_bytes: float | None = None
    arena_bytes: float | None = None
    instructions: float | None = None
    min_width: float = 0.75

    def __post_init__(self) -> None:
        if not (isinstance(self.min_width, (int, float)) and 0.0 <= float(self.min_width) <= 1.0):
            raise ValueError(f"Budget(min_width={self.min_width!r}) must be a fraction in [0, 1].")
        if all(getattr(self, c) is None for c in COSTS):
            raise ValueError(
                f"Budget() sets no bound: give at least one of {', '.join(COSTS)} (an absolute figure, or a "
                "fraction in (0, 1) of the dense model's), e.g. Budget(macs=0.25)."
            )
        for c in COSTS:
            v = getattr(self, c)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"Budget({c}={v!r}): a bound must be a finite number.")
            if v <= 0:
                raise ValueError(
                    f"Budget({c}={v!r}): a bound must be > 0 (a fraction in (0, 1) of the dense model, or an "
                    "absolute figure >= 1)."
                )
            if isinstance(v, float) and v >= 1 and not v.is_integer():
                raise ValueError(
                    f"Budget({c}={v!r}) is neither a fraction in (0, 1) nor a whole {c} figure; use e.g. "
                    f"{c}={v / 100:.2f} for {v:g} % or {c}={round(v)} for an absolute bound."
                )

    @property
    def bounds(self) -> dict[str, float]:
        """The bounds that are set, as given."""
        return {c: getattr(self, c) for c in COSTS if getattr(self, c) is not None}

    def resolve(self, dense: Mapping[str, float]) -> dict[str, int]:
        """Absolute bounds: fractions times the dense model's figure (rounded down), absolute ones as given."""
        out: dict[str, int] = {}
        for c, v in self.bounds.items():
            if isinstance(v, float) and v < 1:
                out[c] = math.floor(v * float(dense[c]))
            else:
                out[c] = int(v)
        return out

    def get_config(self) -> dict[str, Any]:
        return {**self.bounds, "min_width": self.min_width}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Budget:
        return cls(**dict(config))
