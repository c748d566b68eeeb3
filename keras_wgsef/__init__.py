"""keras_wgsef: structured-sparse training of Keras 3 models with the WGSEF regularizer.

The flow, one module per step::

    make_groups(model)            groups/      which weights form each group (filters, blocks, ...)
    Budget(macs=0.25, ...)        budget/      hardware bounds, the int8 graph's cost models
    WGSEF(inner, k | budget, groups=...)
                                  optimizer.py inner step, then the WGSEF prox per scope
    callbacks.ReachK()            controller.py exactly k groups per scope (or the budget), then fine-tuning
    callbacks.SparsityLogger()    monitor.py   nonzero groups, tau, strength (TensorBoard too)
    Distiller(student, teacher)   distill.py   learn from the trained dense model while selecting
    recalibrate_batchnorm(...)    batchnorm.py exact BatchNorm statistics from data
    nonzero_groups(model)         sparsity.py  what is left

The math: ``wgsef_value`` / ``wgsef_prox`` (prox.py, the NumPy reference) and the tensor prox the
optimizer runs (prox_ops.py). The graph analysis behind ``make_groups`` and ``tflite_export.shrink``
lives in graph/ (channel rules, channel classes, MACs and parameters).

References:
  Refael, Arbel, Huleihel, "Learning k-Level Structured Sparse Neural Networks Using Group
  Envelope Regularization", arXiv:2212.12921 (TMLR 2024).
"""

from keras_wgsef import callbacks as callbacks
from keras_wgsef import datasets as datasets
from keras_wgsef import plots as plots
from keras_wgsef import schedules as schedules
from keras_wgsef import training as training
from keras_wgsef._version import __version__ as __version__
from keras_wgsef.batchnorm import recalibrate_batchnorm as recalibrate_batchnorm
from keras_wgsef.budget import Budget as Budget
from keras_wgsef.budget import BudgetError as BudgetError
from keras_wgsef.budget import BudgetPlan as BudgetPlan
from keras_wgsef.distill import Distiller as Distiller
from keras_wgsef.graph.costs import count_macs as count_macs
from keras_wgsef.graph.costs import count_params as count_params
from keras_wgsef.graph.rules import UnsupportedLayerError as UnsupportedLayerError
from keras_wgsef.graph.rules import register_channel_rule as register_channel_rule
from keras_wgsef.groups.make import make_groups as make_groups
from keras_wgsef.groups.scope import GroupScope as GroupScope
from keras_wgsef.groups.scope import Member as Member
from keras_wgsef.groups.scope import merge_scopes as merge_scopes
from keras_wgsef.optimizer import WGSEF as WGSEF
from keras_wgsef.prox import wgsef_prox as wgsef_prox
from keras_wgsef.prox import wgsef_value as wgsef_value
from keras_wgsef.sparsity import nonzero_groups as nonzero_groups
