"""keras_wgsef: structured-sparse training of Keras 3 models with the WGSEF regularizer."""

from keras_wgsef._version import __version__ as __version__
from keras_wgsef.groups import GroupScope as GroupScope
from keras_wgsef.groups import Member as Member
from keras_wgsef.groups import merge_scopes as merge_scopes
from keras_wgsef.prox import wgsef_prox as wgsef_prox
from keras_wgsef.prox import wgsef_value as wgsef_value
