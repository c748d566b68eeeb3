"""The pass lists: which passes run, and in which order (the one place the order is written).

::

    SHRINK   = drop_zero_branches, remove_dead_channels, trim_kernel_borders
    DEFAULT  = SHRINK + global_pool_as_average_pool, unroll_recurrent      (export)
    CONVERT  = unroll_recurrent                                             (to_tflite_int8, any model)
    BATCH_OF_ONE = batch_of_one     (the conversion's retry when the dynamic batch leaves FILL / REDUCE_PROD)

Example:
  >>> names(SHRINK)
  ('drop_zero_branches', 'remove_dead_channels', 'trim_kernel_borders')
  >>> names(DEFAULT)[len(SHRINK):]
  ('global_pool_as_average_pool', 'unroll_recurrent')
  >>> names(without(DEFAULT, *names(SHRINK)))
  ('global_pool_as_average_pool', 'unroll_recurrent')
"""

from __future__ import annotations

from collections.abc import Sequence

from tflite_export.passes.base import Pass
from tflite_export.passes.batch import BatchOfOne
from tflite_export.passes.branches import DropZeroBranches
from tflite_export.passes.channels import RemoveDeadChannels
from tflite_export.passes.kernels import TrimKernelBorders
from tflite_export.passes.pooling import GlobalPoolAsAveragePool
from tflite_export.passes.recurrent import UnrollRecurrent

__all__ = ["BATCH_OF_ONE", "CONVERT", "DEFAULT", "SHRINK", "export_passes", "names", "without"]

#: remove what the zero weights make dead: zero residual branches, dead channels, zero kernel borders
SHRINK: tuple[Pass, ...] = (DropZeroBranches(), RemoveDeadChannels(), TrimKernelBorders())
#: what ``export`` runs: the shrinking passes, then the operator rewrites for TFLite Micro
DEFAULT: tuple[Pass, ...] = (*SHRINK, GlobalPoolAsAveragePool(), UnrollRecurrent())
#: what the int8 conversion runs on any model it is given (TensorList loops have no int8 kernel)
CONVERT: tuple[Pass, ...] = tuple(p for p in DEFAULT if p.name == "unroll_recurrent")
#: the conversion's retry when the dynamic batch left operators TFLite Micro cannot run
BATCH_OF_ONE: tuple[Pass, ...] = (BatchOfOne(),)


def names(passes: Sequence[Pass]) -> tuple[str, ...]:
    """The names of ``passes``, in order."""
    return tuple(p.name for p in passes)


def without(passes: Sequence[Pass], *left_out: str) -> tuple[Pass, ...]:
    """``passes`` without those named in ``left_out`` (the order kept).

    Raises:
      ValueError: a name in ``left_out`` is not a pass of ``passes`` (the message lists them).
    """
    unknown = set(left_out) - set(names(passes))
    if unknown:
        raise ValueError(f"no pass named {sorted(unknown)} in {list(names(passes))}.")
    return tuple(p for p in passes if p.name not in left_out)


def export_passes(*, shrink: bool = True, cheaper_ops: bool = True) -> tuple[Pass, ...]:
    """The passes ``tflite_export.export`` runs: :data:`DEFAULT` less those its options turn off.

    Example:
      >>> names(export_passes(shrink=False))
      ('global_pool_as_average_pool', 'unroll_recurrent')
    """
    off = [*(names(SHRINK) if not shrink else ()), *(() if cheaper_ops else (GlobalPoolAsAveragePool.name,))]
    return without(DEFAULT, *off)
