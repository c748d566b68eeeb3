"""Groups as data and the one way to build them: :func:`make_groups`.

* :mod:`keras_wgsef.groups.scope`: :class:`GroupScope` / :class:`Member` (which elements of which
  variables form each group of one envelope), :func:`merge_scopes`, :func:`match_variables`;
* :mod:`keras_wgsef.groups.norms`: the pure group math on arrays (group norms of a scope, ``tau``,
  top-k supports);
* :mod:`keras_wgsef.groups.channel_groups`: the dependency-aware, zero-invariant output-channel
  groups, built from the channel analysis of :mod:`keras_wgsef.graph.channels`;
* :mod:`keras_wgsef.groups.make`: :func:`make_groups`, every kind of group for a model;
* :mod:`keras_wgsef.groups.default`: :func:`groups_from_paths`, what ``WGSEF`` uses when it is given
  no groups (it sees only the variables).
"""

from keras_wgsef.groups.default import groups_from_paths as groups_from_paths
from keras_wgsef.groups.make import KINDS as KINDS
from keras_wgsef.groups.make import make_groups as make_groups
from keras_wgsef.groups.scope import GroupScope as GroupScope
from keras_wgsef.groups.scope import Member as Member
from keras_wgsef.groups.scope import match_variables as match_variables
from keras_wgsef.groups.scope import merge_scopes as merge_scopes
