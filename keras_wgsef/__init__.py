"""keras_wgsef: structured-sparse training of Keras 3 models with the WGSEF regularizer.

Public API (one name per line)::

    WGSEF                 optimizer wrapper: inner step, then the WGSEF prox per scope
    make_groups           group definitions for a model (output channel, block, filter shape, ...)
    channel_groups        dependency-aware, zero-invariant output-channel groups (graph analysis)
    register_channel_rule teach the graph analysis a custom layer
    count_macs, count_params  cost of a Keras model per layer
    GroupScope, Member    groups as data
    wgsef_value, wgsef_prox   the math on NumPy (reference)
    callbacks.ReachK      controller: exactly k groups per scope, then fine-tuning
    callbacks.SparsityLogger  per-scope nonzero / tau / lam, TensorBoard
    nonzero_groups        nonzero-group counts of a model
    recalibrate_batchnorm exact BatchNorm statistics from data
"""

from keras_wgsef import callbacks as callbacks
from keras_wgsef import datasets as datasets
from keras_wgsef import training as training
from keras_wgsef._version import __version__ as __version__
from keras_wgsef.batchnorm import recalibrate_batchnorm as recalibrate_batchnorm
from keras_wgsef.channel_graph import channel_groups as channel_groups
from keras_wgsef.channel_rules import UnsupportedLayerError as UnsupportedLayerError
from keras_wgsef.channel_rules import register_channel_rule as register_channel_rule
from keras_wgsef.costs import count_macs as count_macs
from keras_wgsef.costs import count_params as count_params
from keras_wgsef.groups import GroupScope as GroupScope
from keras_wgsef.groups import Member as Member
from keras_wgsef.groups import merge_scopes as merge_scopes
from keras_wgsef.layer_groups import make_groups as make_groups
from keras_wgsef.optimizer import WGSEF as WGSEF
from keras_wgsef.prox import wgsef_prox as wgsef_prox
from keras_wgsef.prox import wgsef_value as wgsef_value
from keras_wgsef.stats import nonzero_groups as nonzero_groups
