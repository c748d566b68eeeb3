"""The Keras callbacks of keras_wgsef (one name per line).

* :class:`ReachK` (:mod:`keras_wgsef.controller`): drives ``WGSEF`` to exactly k groups per scope,
  then fine-tunes the survivors;
* :class:`SparsityLogger` (:mod:`keras_wgsef.monitor`): per-scope nonzero groups, k, tau and strength
  in the Keras logs and TensorBoard.
"""

from keras_wgsef.controller import ReachK as ReachK
from keras_wgsef.monitor import SparsityLogger as SparsityLogger
