"""Groups as data: which elements of which variables form each group of a scope.

A :class:`GroupScope` is one envelope: ``m`` groups with weights ``d_j`` and one ``k``. Its groups
may span several variables (coupled groups: a filter's kernel slice, its bias and the following
BatchNorm's gamma/beta). Each variable contributes a :class:`Member`:

* ``axis`` an int: ``index`` has length ``shape[axis]``; the slice at position ``i`` along
  ``axis`` belongs to group ``index[i]`` (output channels, input channels, blocks of channels,
  channel offsets after a Concatenate);
* ``axis`` None: ``index`` has the variable's full shape and names the group of every element
  (filter shapes, whole layers, single weights).

The members of a scope must partition their variables' elements into exactly ``m`` nonempty
groups; :meth:`GroupScope.validate` checks it against the real shapes. Scopes serialize to plain
JSON-able dicts (``get_config`` / ``from_config``), so an optimizer that holds them survives
``model.save`` / ``keras.models.load_model``.

Example:
  >>> s = GroupScope("conv", (Member("m/conv/kernel", 3, np.arange(4)), Member("m/conv/bias", 0, np.arange(4))))
  >>> s.num_groups, s.sizes({"m/conv/kernel": (3, 3, 2, 4), "m/conv/bias": (4,)}).tolist()
  (4, [19.0, 19.0, 19.0, 19.0])
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["GroupScope", "Member", "match_variables", "merge_scopes"]


@dataclasses.dataclass(frozen=True, eq=False)
class Member:
    """One variable's share of a scope's groups.

    Attributes:
      path: the layer's path in the model and the variable's path inside the layer, e.g.
        ``"conv2d/kernel"``, ``"block/conv/kernel"`` for a layer of a nested model ``block``,
        ``"lstm/lstm_cell/kernel"`` for an LSTM's cell (see
        :func:`keras_wgsef.graph.model_graph.weight_paths`; :func:`match_variables` also finds
        the variable after ``keras.models.load_model``, which drops the Sequential, nested-model
        and wrapper prefixes of ``variable.path``).
      axis: axis along which ``index`` assigns groups, or None for an element-wise ``index``.
      index: int group ids in ``[0, m)``: shape ``(shape[axis],)``, or the full shape if axis is None.
      ref: the variable the member was made from (held as a weak reference; :meth:`variable`),
        or None. :func:`keras_wgsef.make_groups` sets it, so the optimizer finds the variable
        itself rather than by path; it is not part of the config (a reloaded scope matches by path).
    """

    path: str
    axis: int | None
    index: np.ndarray
    ref: Any = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", np.asarray(self.index, dtype=np.int64))
        if self.axis is not None and self.index.ndim != 1:
            raise ValueError(f"{self.path}: with axis={self.axis} the index must be 1-D, got shape {self.index.shape}.")
        if self.ref is not None and not isinstance(self.ref, weakref.ref):
            object.__setattr__(self, "ref", weakref.ref(self.ref))

    def variable(self) -> Any:
        """The variable this member was made from while it exists, else None (then match by :attr:`path`)."""
        return None if self.ref is None else self.ref()

    def element_counts(self, shape: Sequence[int], num_groups: int) -> np.ndarray:
        """How many elements of the variable fall in each group (length ``num_groups``)."""
        shape = tuple(int(s) for s in shape)
        if self.axis is None:
            if tuple(self.index.shape) != shape:
                raise ValueError(
                    f"{self.path}: element-wise group index has shape {self.index.shape}, variable has {shape}."
                )
            return np.bincount(self.index.reshape(-1), minlength=num_groups).astype(np.float64)
        axis = self.axis % len(shape) if shape else 0
        if not shape or self.index.shape[0] != shape[axis]:
            raise ValueError(
                f"{self.path}: group index along axis {self.axis} has length {self.index.shape[0]}, "
                f"variable shape is {shape}."
            )
        per_slice = int(np.prod(shape)) // shape[axis]
        return np.bincount(self.index, minlength=num_groups).astype(np.float64) * per_slice

    def get_config(self) -> dict[str, Any]:
        return {"path": self.path, "axis": self.axis, "index": self.index.tolist()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Member:
        return cls(config["path"], config["axis"], np.asarray(config["index"], dtype=np.int64))


@dataclasses.dataclass(frozen=True, eq=False)
class GroupScope:
    """One envelope: ``m`` groups over one or more variables, with weights and an optional k.

    Attributes:
      name: scope name, matched by the patterns of a ``k`` mapping (usually the layer path).
      members: the variables and their group indices.
      num_groups: ``m``; 0 (the default) infers it from the indices.
      weights: ``d_j`` (length m, > 0), or None for the group sizes (known once shapes are).
      k: number of groups to keep in this scope, or None to take it from the optimizer.
      labels: optional human-readable label per group (e.g. ``"conv2d:3"``), for reports.
      segments: for a merged scope (a global budget), the index of the source scope of each
        group, so a projection can keep at least one group of every layer; None otherwise.
    """

    name: str
    members: tuple[Member, ...]
    num_groups: int = 0
    weights: np.ndarray | None = None
    k: int | float | None = None
    labels: tuple[str, ...] | None = None
    segments: np.ndarray | None = None

    def __post_init__(self) -> None:
        members = tuple(self.members)
        if not members:
            raise ValueError(f"scope {self.name!r} has no members.")
        object.__setattr__(self, "members", members)
        m = self.num_groups
        if not m:
            m = 1 + max(int(mb.index.max()) for mb in members if mb.index.size)
        object.__setattr__(self, "num_groups", int(m))
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64).reshape(-1)
            if w.size != m or not np.all(np.isfinite(w)) or np.any(w <= 0):
                raise ValueError(f"scope {self.name!r}: weights must be {m} finite values > 0.")
            object.__setattr__(self, "weights", w)
        if self.segments is not None:
            seg = np.asarray(self.segments, dtype=np.int64).reshape(-1)
            if seg.size != m:
                raise ValueError(f"scope {self.name!r}: segments must have one entry per group ({m}).")
            object.__setattr__(self, "segments", seg)
        paths = [mb.path for mb in members]
        if len(set(paths)) != len(paths):
            raise ValueError(f"scope {self.name!r}: a variable appears twice: {paths}.")

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(mb.path for mb in self.members)

    def sizes(self, shapes: Mapping[str, Sequence[int]]) -> np.ndarray:
        """Elements per group across all members (float64, length m)."""
        total = np.zeros(self.num_groups)
        for mb in self.members:
            if mb.path not in shapes:
                raise ValueError(f"scope {self.name!r}: no variable with path {mb.path!r} among the trained variables.")
            total += mb.element_counts(shapes[mb.path], self.num_groups)
        return total

    def validate(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Raises unless the members partition their variables into ``m`` nonempty groups."""
        for mb in self.members:
            if mb.index.size and (mb.index.min() < 0 or mb.index.max() >= self.num_groups):
                raise ValueError(f"scope {self.name!r}: {mb.path} has group ids outside [0, {self.num_groups}).")
        sizes = self.sizes(shapes)
        empty = np.flatnonzero(sizes == 0)
        if empty.size:
            raise ValueError(
                f"scope {self.name!r}: groups {empty[:8].tolist()} have no elements; group ids must be 0..m-1 "
                "with every group used (the groups must partition the variables)."
            )

    def resolved_weights(self, shapes: Mapping[str, Sequence[int]]) -> np.ndarray:
        """``d_j``: the given weights, or the group sizes."""
        return self.weights if self.weights is not None else self.sizes(shapes)

    def replace(self, **changes: Any) -> GroupScope:
        return dataclasses.replace(self, **changes)

    def bind(self, variables: Mapping[str, Any]) -> GroupScope:
        """This scope with each member tied to its variable (``{member path: variable}``, e.g. ``weight_paths``)."""
        members = tuple(Member(mb.path, mb.axis, mb.index, variables.get(mb.path, mb.ref)) for mb in self.members)
        return self.replace(members=members)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "members": [mb.get_config() for mb in self.members],
            "num_groups": self.num_groups,
            "weights": None if self.weights is None else self.weights.tolist(),
            "k": self.k,
            "labels": None if self.labels is None else list(self.labels),
            "segments": None if self.segments is None else self.segments.tolist(),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> GroupScope:
        return cls(
            name=config["name"],
            members=tuple(Member.from_config(m) for m in config["members"]),
            num_groups=config["num_groups"],
            weights=None if config.get("weights") is None else np.asarray(config["weights"]),
            k=config.get("k"),
            labels=None if config.get("labels") is None else tuple(config["labels"]),
            segments=None if config.get("segments") is None else np.asarray(config["segments"]),
        )


def merge_scopes(
    scopes: Sequence[GroupScope], name: str = "model", shapes: Mapping[str, Sequence[int]] | None = None
) -> GroupScope:
    """One scope holding every group of ``scopes`` (a global budget across layers).

    Group ids are offset so they stay disjoint. Weights: each scope's own ``d_j`` (given, or its
    group sizes, which then needs ``shapes``). ``segments`` records which scope each group came
    from (a projection keeps at least one group per segment: no layer is cut out entirely), except
    when every scope has one group: those are whole layers, which a layer budget may remove.
    """
    members: list[Member] = []
    weights: list[np.ndarray] = []
    labels: list[str] = []
    segments: list[np.ndarray] = []
    offset = 0
    for number, s in enumerate(scopes):
        segments.append(np.full(s.num_groups, number))
        for mb in s.members:
            members.append(Member(mb.path, mb.axis, mb.index + offset, mb.ref))
        if s.weights is not None:
            weights.append(s.weights)
        elif shapes is not None:
            weights.append(s.sizes(shapes))
        else:
            raise ValueError(f"merge_scopes: scope {s.name!r} has no weights; pass the variable shapes.")
        labels.extend(s.labels if s.labels is not None else [f"{s.name}:{j}" for j in range(s.num_groups)])
        offset += s.num_groups
    # scopes of one group each are whole layers (make_groups(kind="layer")): removing a layer is the
    # point, so there is no floor of one group per scope
    floor = None if all(s.num_groups == 1 for s in scopes) else np.concatenate(segments)
    return GroupScope(name, tuple(members), offset, np.concatenate(weights), None, tuple(labels), floor)


def _shared_tail(member: str, variable: str) -> int:
    """Components the two paths share at the end when one is the other with leading components removed, else 0.

    ``"blk/a/kernel"`` and ``"a/kernel"``: 2; ``"a/kernel"`` and ``"sequential/a/kernel"``: 2;
    ``"b/kernel"`` and ``"a/kernel"``: 0.
    """
    if member == variable or member.endswith("/" + variable) or variable.endswith("/" + member):
        return min(member.count("/"), variable.count("/")) + 1
    return 0


def _near(member: str, variables: Sequence[Any]) -> list[str]:
    """Variable paths of the member's layer with the member's weight name: what a stale member meant."""
    first, last = member.split("/", 1)[0], member.rsplit("/", 1)[-1]
    return [v.path for v in variables if v.path.rsplit("/", 1)[-1] == last and first in v.path.split("/")[:-1]]


def match_variables(
    members: Sequence[str | Member], variables: Sequence[Any], what: str = "the model's variables"
) -> dict[str, Any]:
    """The variable of each member (by path): its own variable, else an exact path, else the closest suffix.

    A member made by :func:`keras_wgsef.make_groups` holds the variable it was made from
    (:meth:`Member.variable`); when that variable is among ``variables`` it is the match. Otherwise
    (a scope read back from a saved config, a path given as a string) the member's path decides.
    A member path is the layer's path in the model and the variable's path inside the layer
    (:func:`keras_wgsef.graph.model_graph.weight_paths`: ``"conv/kernel"``, ``"block/conv/kernel"``,
    ``"lstm/lstm_cell/kernel"``, ``"td/dense/kernel"``). Keras builds ``variable.path`` from the
    same names and the name scopes open when the variable was made: a top-level Functional
    model's paths equal the members; a Sequential model adds its own name
    (``"sequential/conv/kernel"``); ``keras.models.load_model`` drops the names of nested models
    and wrappers (``"block/conv/kernel"`` -> ``"conv/kernel"``, ``"td/dense/kernel"`` ->
    ``"dense/kernel"``). So a member takes the variable with its path, or else the one whose path
    is its path with leading components added or removed and shares the most trailing components
    with it; each variable goes to one member.

    Args:
      members: :class:`Member` s, or member paths (``"layer/path/weight"``).
      variables: objects with ``.path`` (Keras variables).
      what: how to name ``variables`` in an error.

    Returns:
      ``{member path: variable}``.

    Raises:
      ValueError: a path matches no variable, or several equally well.

    Example:
      >>> class V:
      ...     def __init__(self, path): self.path = path
      >>> got = match_variables(["c/kernel", "blk/a/kernel"], [V("sequential/c/kernel"), V("a/kernel")])
      >>> {p: v.path for p, v in got.items()}
      {'c/kernel': 'sequential/c/kernel', 'blk/a/kernel': 'a/kernel'}
    """
    unique: dict[int, Any] = {}
    for v in variables:
        unique.setdefault(id(v), v)
    out: dict[str, Any] = {}
    used: set[int] = set()
    paths: list[str] = []
    for mb in members:
        if isinstance(mb, Member) and id(mb.variable()) in unique:
            out[mb.path] = mb.variable()
            used.add(id(out[mb.path]))
        else:
            paths.append(mb.path if isinstance(mb, Member) else mb)
    free = [v for i, v in unique.items() if i not in used]
    scores = {p: [(_shared_tail(p, v.path) + (1000 if p == v.path else 0), v) for v in free] for p in paths}
    # the most specific matches first: a reloaded model's "a/kernel" goes to "a/kernel", not "blk/a/kernel"
    for p in sorted(paths, key=lambda q: -max((t for t, _ in scores[q]), default=0)):
        cands = [(t, v) for t, v in scores[p] if t and id(v) not in used]
        best = max((t for t, _ in cands), default=0)
        found = [v for t, v in cands if t == best]
        if len(found) == 1:
            out[p] = found[0]
            used.add(id(found[0]))
            continue
        if not found:
            sample = [v.path for v in variables][:4]
            near = _near(p, variables)
            hint = (
                f" Variables of that layer with that name: {near[:4]} (a member names the layer's path and the "
                "weight's path inside the layer, e.g. 'lstm/lstm_cell/kernel'; rebuild the groups with "
                "kw.make_groups(model))."
                if near
                else " Build the groups from this model (kw.make_groups(model)) or give member paths as "
                "'layer/path/weight'."
            )
            taken = [q for q, v in out.items() if _shared_tail(p, v.path)]
            if taken:
                hint += f" (its candidates went to the members {taken[:4]})"
            raise ValueError(f"group member {p!r} matches none of {what} (e.g. {sample}).{hint}")
        raise ValueError(
            f"group member {p!r} matches several of {what} ({[v.path for v in found]}); give its full layer "
            "path in the model (nested models included), e.g. 'block/conv/kernel', and distinct names to layers "
            "that Keras names alike after load_model (the inner layers of wrappers, layers of nested models)."
        )
    return out
