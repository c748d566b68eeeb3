"""What earlier keras-wgsef versions wrote or accepted, read by this one.

* ``WGSEF(scope=...)``, the 0.1 name of ``envelope`` (:func:`envelope_from_kwargs`, with a
  ``DeprecationWarning``);
* checkpoints of 0.2.0.dev0 versions that kept four optimizer variables per scope (``strength_i``,
  ``mask_i``, ``attenuation_i``, ``nonzero_i``) instead of one :class:`ScopeTable`
  (:func:`per_scope_state_as_table`): ``WGSEF.load_own_variables`` converts them row by row, so
  their frozen masks and strengths survive (Keras itself would skip the whole optimizer state
  with a warning: the variable counts differ).

Example:
  >>> import warnings
  >>> kwargs = {"scope": "model"}
  >>> with warnings.catch_warnings(record=True):
  ...     warnings.simplefilter("always")
  ...     envelope_from_kwargs(kwargs, None), kwargs
  ('model', {})
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np

from keras_wgsef.scope_state import ScopeState

__all__ = ["envelope_from_kwargs", "per_scope_state_as_table"]


def envelope_from_kwargs(kwargs: MutableMapping[str, Any], envelope: str | None) -> str | None:
    """``envelope``, or the value of the 0.1 keyword ``scope`` (popped from ``kwargs``, with a warning)."""
    if "scope" not in kwargs:
        return envelope
    warnings.warn("WGSEF(scope=...) is now WGSEF(envelope=...).", DeprecationWarning, stacklevel=3)
    return kwargs.pop("scope")


def per_scope_state_as_table(store: Mapping[str, Any], scopes: Sequence[ScopeState], own: Sequence[Any]) -> Any:
    """``store`` as this version lays out a ``WGSEF`` optimizer's variables: per-scope state becomes the table's rows.

    A store already in this layout (or one that matches neither layout: Keras reports that) is
    returned as it is.

    Args:
      store: the checkpoint's ``{"0": array, "1": array, ...}`` of the optimizer's own variables.
      scopes: the built optimizer's scopes, in order (their table rows).
      own: the built optimizer's variables, in order (``optimizer.variables``).

    Raises:
      ValueError: a saved mask or attenuation whose size differs from its scope's groups (the
        checkpoint belongs to another model or other groups).
    """
    if not scopes:
        return store
    table, n = scopes[0].table, len(scopes)
    first = next(i for i, v in enumerate(own) if v is table.strength)
    count = len(store.keys())
    if count != len(own) + 4 * (n - 1) or np.ndim(store[str(first)]) != 0:
        return store  # this version's layout (or a mismatch Keras reports)
    old = [np.asarray(store[str(i)]) for i in range(count)]
    per_scope = old[first : first + 4 * n]
    mask = np.ones(tuple(table.mask.shape), "float32")
    attenuation = np.ones_like(mask)
    for r, state in enumerate(scopes):
        saved_rows = ((mask, per_scope[4 * r + 1], "mask"), (attenuation, per_scope[4 * r + 2], "attenuation"))
        for array, saved, what in saved_rows:
            if saved.shape != (state.num_groups,):
                raise ValueError(
                    f"the checkpoint's {what} of scope {r} has shape {saved.shape}, but scope {state.name!r} has "
                    f"{state.num_groups} groups: it was saved from another model or other groups."
                )
            array[r, : state.num_groups] = saved
    rows = [
        np.array([per_scope[4 * r] for r in range(n)], "float32"),
        mask,
        attenuation,
        np.array([per_scope[4 * r + 3] for r in range(n)], "int32"),
    ]
    return {str(i): v for i, v in enumerate(old[:first] + rows + old[first + 4 * n :])}
