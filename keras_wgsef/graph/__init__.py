"""The model as a graph: layer calls, how each layer treats channels, channel classes and costs.

* :mod:`keras_wgsef.graph.model_graph`: :func:`flatten_model`, a flat view of a Sequential or
  Functional model (nested models expanded) read from public Keras data;
* :mod:`keras_wgsef.graph.rules`: the channel rule of every layer class (one registry);
* :mod:`keras_wgsef.graph.channels`: the channel analysis: which channels must be removed together,
  and which are zero (the groups built from it live in :mod:`keras_wgsef.groups`);
* :mod:`keras_wgsef.graph.costs`: MACs and parameters per layer.
"""

from keras_wgsef.graph.costs import count_macs as count_macs
from keras_wgsef.graph.costs import count_params as count_params
from keras_wgsef.graph.model_graph import Graph as Graph
from keras_wgsef.graph.model_graph import flatten_model as flatten_model
from keras_wgsef.graph.rules import UnsupportedLayerError as UnsupportedLayerError
from keras_wgsef.graph.rules import register_channel_rule as register_channel_rule
