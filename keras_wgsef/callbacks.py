"""The Keras callbacks of keras_wgsef (one name per line).

* :class:`ReachK` (:mod:`keras_wgsef.controller`): drives ``WGSEF`` to exactly k groups per scope,
  then fine-tunes the survivors;
* :class:`SparsityLogger` (:mod:`keras_wgsef.monitor`): per-scope nonzero groups, k, tau and strength
  in the Keras logs and TensorBoard;
* :func:`sync_jax_state`: under JAX, attach ``fit``'s state to the variables before a callback of
  yours reads or assigns them mid-epoch (a no-op on other backends).
"""

from keras_wgsef.controller import ReachK as ReachK
from keras_wgsef.controller import sync_jax_state as sync_jax_state
from keras_wgsef.monitor import SparsityLogger as SparsityLogger
