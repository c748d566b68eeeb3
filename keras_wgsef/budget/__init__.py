"""Hardware budgets: bounds in MACs, parameters, flash, arena and instructions, and their cost models.

* :mod:`~keras_wgsef.budget.budget`: :class:`Budget`, the bounds;
* :mod:`~keras_wgsef.budget.lowered`: the int8 TFLite graph as plain data;
* :mod:`~keras_wgsef.budget.lowering`: a Keras model to that graph, at any candidate widths;
* :mod:`~keras_wgsef.budget.hardware`: flash, arena and instruction models (calibrated);
* :mod:`~keras_wgsef.budget.memory`: the arena operator by operator (:func:`memory_timeline`);
* :mod:`~keras_wgsef.budget.plan`: :class:`BudgetPlan`, a budget bound to a model: prices a
  support, picks the one to freeze, sets ``k`` and the cost weights.
"""

from keras_wgsef.budget.budget import COSTS as COSTS
from keras_wgsef.budget.budget import Budget as Budget
from keras_wgsef.budget.memory import MemoryTimeline as MemoryTimeline
from keras_wgsef.budget.memory import memory_timeline as memory_timeline
from keras_wgsef.budget.plan import BudgetError as BudgetError
from keras_wgsef.budget.plan import BudgetPlan as BudgetPlan
