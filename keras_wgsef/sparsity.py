"""Reading a model's groups: their norms and nonzero counts, and zeroing chosen groups (NumPy).

A top-layer report: it reads the model's variables (or the built optimizer's scopes) and uses
the pure group math of :mod:`keras_wgsef.groups.norms`; nothing in the training core imports it.

Example:
  >>> import keras
  >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="h"), keras.layers.Dense(2)])
  >>> nonzero_groups(m)
  {'h': 3}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_wgsef.groups.make import make_groups
from keras_wgsef.groups.norms import scope_norms
from keras_wgsef.groups.scope import GroupScope, match_variables
from keras_wgsef.optimizer import find_wgsef

__all__ = [
    "find_wgsef",  # re-exported from keras_wgsef.optimizer, its home, for one release
    "group_norms",
    "model_scopes",
    "nonzero_groups",
    "zero_groups",
]


def _variables(model: keras.Model, scopes: Sequence[GroupScope]) -> dict[str, Any]:
    """``{member path: variable}`` of the scopes' members in ``model`` (:func:`match_variables`)."""
    members = list({mb.path: mb for s in scopes for mb in s.members}.values())  # once each
    return match_variables(members, model.variables)


def _values(model: keras.Model, scopes: Sequence[GroupScope]) -> dict[str, np.ndarray]:
    return {p: np.asarray(keras.ops.convert_to_numpy(v)) for p, v in _variables(model, scopes).items()}


def model_scopes(model: keras.Model, groups: Sequence[GroupScope] | None = None) -> list[GroupScope]:
    """The scopes to report on: given ones, the built WGSEF optimizer's, or ``make_groups(model)``."""
    if groups is not None:
        return list(groups)
    opt = find_wgsef(model)
    if opt is not None and opt.built:
        return [s.scope for s in opt.scopes]
    return make_groups(model)


def nonzero_groups(model: keras.Model, groups: Sequence[GroupScope] | None = None) -> dict[str, int]:
    """Number of groups with a nonzero entry, per scope name.

    A merged global scope (``WGSEF(..., envelope="model")``) is reported per source layer.

    Args:
      model: a Keras model.
      groups: the scopes to count (default: those of the model's WGSEF optimizer when it is built,
        else ``make_groups(model)``).
    """
    scopes = model_scopes(model, groups)
    values = _values(model, scopes)
    counts: dict[str, int] = {}
    for s in scopes:
        nonzero = scope_norms(s, values) > 0
        if s.segments is None:
            counts[s.name] = int(np.count_nonzero(nonzero))
            continue
        for seg in np.unique(s.segments):  # a global budget: report each layer (source scope)
            members = np.flatnonzero(s.segments == seg)
            name = s.labels[members[0]].rpartition(":")[0] if s.labels else f"{s.name}[{seg}]"
            counts[name] = int(np.count_nonzero(nonzero[members]))
    return counts


def group_norms(model: keras.Model, scopes: Sequence[GroupScope]) -> np.ndarray:
    """``||x_j||`` of every group of ``scopes`` in ``model``, concatenated in scope order (float64).

    Example:
      >>> import keras
      >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="h"), keras.layers.Dense(1)])
      >>> from keras_wgsef import make_groups
      >>> group_norms(m, make_groups(m)).shape
      (3,)
    """
    values = _values(model, scopes)
    return np.concatenate([scope_norms(s, values) for s in scopes]) if scopes else np.zeros(0)


def zero_groups(model: keras.Model, scopes: Sequence[GroupScope], drop: np.ndarray) -> None:
    """Sets every group marked in ``drop`` (concatenated over ``scopes``, in order) to exactly zero, in place.

    Use it on a copy: it changes ``model``'s variables.

    Example:
      >>> import keras
      >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="h"), keras.layers.Dense(1)])
      >>> from keras_wgsef import make_groups
      >>> zero_groups(m, make_groups(m), np.array([True, False, True]))
      >>> (group_norms(m, make_groups(m)) > 0).tolist()
      [False, True, False]
    """
    drop = np.asarray(drop, bool).reshape(-1)
    total = sum(s.num_groups for s in scopes)
    if drop.size != total:
        raise ValueError(f"drop has {drop.size} entries; the scopes have {total} groups.")
    variables = _variables(model, scopes)
    offset = 0
    for s in scopes:
        mine = drop[offset : offset + s.num_groups]
        offset += s.num_groups
        if not mine.any():
            continue
        for mb in s.members:
            var = variables[mb.path]
            x = np.array(keras.ops.convert_to_numpy(var))
            dead = mine[mb.index]
            if mb.axis is None:
                x[dead] = 0
            else:
                ax = mb.axis % x.ndim
                sl: list[Any] = [slice(None)] * x.ndim
                sl[ax] = np.flatnonzero(dead)
                x[tuple(sl)] = 0
            var.assign(x)
