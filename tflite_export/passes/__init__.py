"""The exporter's model-to-model passes, one interface, one runner, one list (public API)::

    Pass, PassResult           a name, a pure plan (the dry run), an apply   base.py
    Context, GraphView         what every pass is given; a cached read-only view  base.py
    run_passes, RunResult      runs a list, checks the outputs after each change  runner.py
    SHRINK, DEFAULT, CONVERT, BATCH_OF_ONE   the pass lists, in order       lists.py
    export_passes              DEFAULT less what export's options turn off  lists.py
    PassError, ShrinkError, RewriteError, output_difference   the check     check.py

The passes, one module each: ``drop_zero_branches`` (branches.py), ``remove_dead_channels``
(channels.py), ``trim_kernel_borders`` (kernels.py), ``global_pool_as_average_pool`` (pooling.py),
``unroll_recurrent`` (recurrent.py), ``batch_of_one`` (batch.py); every one edits the saved Keras
config with :mod:`tflite_export.passes.config` and rebuilds with :mod:`tflite_export.passes.rebuild`.

Example (``model`` the doctest CNN):
  >>> run = run_passes(model, DEFAULT, Context(sample=x[:8]))
  >>> run.changed
  ['global_pool_as_average_pool']
"""

from __future__ import annotations

from tflite_export.passes.base import Context as Context
from tflite_export.passes.base import GraphView as GraphView
from tflite_export.passes.base import Pass as Pass
from tflite_export.passes.base import PassResult as PassResult
from tflite_export.passes.check import PassError as PassError
from tflite_export.passes.check import RewriteError as RewriteError
from tflite_export.passes.check import ShrinkError as ShrinkError
from tflite_export.passes.check import output_difference as output_difference
from tflite_export.passes.lists import BATCH_OF_ONE as BATCH_OF_ONE
from tflite_export.passes.lists import CONVERT as CONVERT
from tflite_export.passes.lists import DEFAULT as DEFAULT
from tflite_export.passes.lists import SHRINK as SHRINK
from tflite_export.passes.lists import export_passes as export_passes
from tflite_export.passes.lists import names as names
from tflite_export.passes.lists import without as without
from tflite_export.passes.runner import RunResult as RunResult
from tflite_export.passes.runner import run_passes as run_passes

__all__ = [
    "BATCH_OF_ONE",
    "CONVERT",
    "DEFAULT",
    "SHRINK",
    "Context",
    "GraphView",
    "Pass",
    "PassError",
    "PassResult",
    "RewriteError",
    "RunResult",
    "ShrinkError",
    "export_passes",
    "names",
    "output_difference",
    "run_passes",
    "without",
]
