"""The WGSEF prox on tensors (``keras.ops``): what the optimizer runs inside ``fit``.

Same math as :mod:`keras_wgsef.prox` (the NumPy reference), organised for vectorised, XLA-friendly
execution with few operations (on a small model the step's cost is the number of operations, each
a few microseconds, not their size): the root ``alpha`` of
``phi(alpha) = sum_j clip(alpha c_j - L_j, 0, 1) = k`` lies between two of the 2m breakpoints
``lo_j = L_j/c_j``, ``hi_j = (1 + L_j)/c_j``. Small problems evaluate ``phi`` at every breakpoint at
once (one batched matmul); larger ones sort the breakpoints and bisect over them with ``phi``
evaluated directly (O(m log m), a fixed number of steps, no data-dependent loop). The group
norms are summed in the variables' precision; everything after them runs in float64 (float32
under JAX with x64 off: :func:`prox_dtype`).

A prefix scan of the pieces (``phi(b_i) = S1_i + b_i C_i - Ls_i``) would be cheaper, but its
running sums of ``+c_j`` and ``-c_j`` cancel: with tiny and large group norms together (seen in
training with MAC cost weights) it could miss the root, and once it zeroed every group. The
bisection only adds nonnegative terms.

References:
  Refael, Arbel, Huleihel, "Learning k-Level Structured Sparse Neural Networks Using Group
  Envelope Regularization", arXiv:2212.12921 (TMLR 2024).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = [
    "SMALL_TENSOR",
    "batched_prox_scales",
    "expand_scales",
    "flat_concat",
    "group_sizes",
    "group_sq_norms",
    "padded_group_sums",
    "padded_sq_norms",
    "prox_dtype",
    "prox_scales",
    "read",
    "segment_leaders",
]


def prox_scales(a, d, k: int, lam, ridge: bool = True, protect=None):
    """Per-group factors of ``prox_{lam WGSEF_k}`` on tensors (float64): one scope.

    With ``protect`` (0/1 per group, e.g. :func:`segment_leaders`), the protected groups with a
    nonzero norm count as kept: they get the ridge factor ``1 / (1 + lam d_j)`` and the others the
    prox of ``WGSEF_{k - p}`` (``p`` protected nonzero groups), i.e. the exact prox of
    ``lam (1/2 sum_{protected} d_j ||x_j||^2 + WGSEF_{k-p}(x_rest))`` (NumPy reference:
    :func:`keras_wgsef.prox.prox_scales` with ``protect``). The computation is
    :func:`batched_prox_scales` with one row.

    Args:
      a: group norms ``||z_j||`` (float64 tensor, length m).
      d: group weights ``d_j > 0`` (float64, length m).
      k: static int, ``0 <= k``.
      lam: strength (float64 scalar tensor or float, ``>= 0``).
      ridge: when False, groups with ``theta_j = 1`` are left unshrunk (the "no ridge" heuristic
        measured on the anchor task); the exact prox is ``ridge=True``.
      protect: optional float64 0/1 tensor (length m) of groups that always stay.

    Returns:
      ``s_j = theta_j / (theta_j + lam d_j)`` (0 where ``theta_j = 0``), float64 length m.

    Example:
      >>> s = prox_scales(np.sqrt([5., .25, 10., .04]), np.array([2., 1., .5, 1.]), 2, 0.5)
      >>> np.round(ops.convert_to_numpy(s), 6).tolist()
      [0.5, 0.0, 0.8, 0.0]
    """
    dt = prox_dtype()
    m = int(a.shape[0])
    lam = _t(lam, dt)
    rows = batched_prox_scales(
        ops.reshape(_t(a, dt), (1, m)),
        ops.reshape(_t(d, dt), (1, m)),
        np.array([k]),
        ops.reshape(lam, (1,)),
        np.ones((1, m), bool),
        ridge=ridge,
        protect=None if protect is None else ops.reshape(_t(protect, dt), (1, m)),
    )
    return ops.reshape(rows, (m,))


#: at most this many (scope, breakpoint, group) terms evaluate phi densely instead of bisecting
DENSE_PHI_LIMIT = 1 << 21


def batched_prox_scales(
    a, d, k: np.ndarray, lam, valid: np.ndarray, ridge: bool = True, protect=None, *, zero_padded: bool = False
):
    """The prox factors of S scopes at once, each row its own ``k``, weights and strength.

    Row ``s`` holds scope ``s``'s ``m_s`` groups in its first ``m_s`` columns (``valid``) and
    padding after them; the result's row ``s`` is :func:`prox_scales` of that scope (0 on the
    padding). The root ``alpha`` of ``phi(alpha) = sum_j clip(alpha c_j - L_j, 0, 1) = k``
    (``c_j = sqrt(d_j) ||x_j||``, ``L_j = lam d_j``) lies between two consecutive breakpoints
    ``L_j / c_j``, ``(1 + L_j) / c_j``; phi is linear there. Small problems
    (``S * 2M * M <= DENSE_PHI_LIMIT``) evaluate ``phi`` at every breakpoint at once and take the
    largest breakpoint below ``k`` and the smallest at or above it; larger ones sort the
    breakpoints and bisect with a fixed number of halvings. Either way the number of operations
    does not grow with the number of scopes, and every op is a whole-matrix op (the step cost of
    a small model is the number of ops, not their size).

    Args:
      a: group norms, float64 ``(S, M)`` (anything on the padding).
      d: group weights ``> 0``, float64 ``(S, M)`` (anything on the padding); NumPy weights
        become constants.
      k: NumPy ints ``(S,)``, ``>= 0``.
      lam: strengths ``>= 0``, float64 tensor ``(S,)``.
      valid: NumPy bool ``(S, M)``, True on each scope's groups.
      ridge: as in :func:`prox_scales`.
      protect: optional float64 0/1 ``(S, M)``, as in :func:`prox_scales`.
      zero_padded: True when ``a`` already holds 0 on the padding (norms from
        :func:`padded_sq_norms`): one operation fewer.

    Returns:
      float64 ``(S, M)``: ``s_j = theta_j / (theta_j + lam_s d_j)`` per scope (for a scope with
      ``lam_s = 0``, the identity: 1 on its groups with a nonzero norm), 0 on the padding and on
      groups whose norm is 0: a factor is positive exactly where a nonzero group remains.

    Example:
      >>> a = np.array([[np.sqrt(5.), .5, np.sqrt(10.), .2], [3., 1., 0., 0.]])
      >>> d = np.array([[2., 1., .5, 1.], [1., 1., 1., 1.]])
      >>> valid = np.array([[True] * 4, [True, True, False, False]])
      >>> s = batched_prox_scales(a, d, np.array([2, 1]), np.array([0.5, 1.0]), valid)
      >>> np.round(ops.convert_to_numpy(s), 6).tolist()
      [[0.5, 0.0, 0.8, 0.0], [0.5, 0.0, 0.0, 0.0]]
    """
    dt = prox_dtype()
    valid = np.asarray(valid, bool)
    n_rows, m = valid.shape
    k = np.asarray(k, np.int64).reshape(n_rows)
    a = _t(a, dt)
    if not (valid.all() or zero_padded):  # the padding is not a group, whatever it holds
        a = ops.where(ops.convert_to_tensor(valid), a, ops.zeros_like(a))
    if isinstance(d, (np.ndarray, list, tuple)):  # constants: folded when the step is traced
        d_np = np.where(valid, np.asarray(d, np.float64), 1.0)
        d, sqrt_d = _t(d_np, dt), _t(np.sqrt(d_np), dt)
    else:
        d = ops.where(ops.convert_to_tensor(valid), _t(d, dt), 1.0)
        sqrt_d = ops.sqrt(d)
    lam_col = ops.reshape(_t(lam, dt), (n_rows, 1))
    L = lam_col * d
    c = sqrt_d * a
    pos = c > 0  # as the NumPy reference: a norm whose c underflows to 0 is no group
    kt = _t(k.astype(np.float64), dt)  # the groups the envelope chooses
    kept = None
    if protect is not None:
        kept = _t(protect, dt) * ops.cast(pos, dt)
        pos = pos & (kept == 0)
        kt = kt - ops.sum(kept, axis=1)
    posf = ops.cast(pos, dt)
    if kept is not None:  # c_j = 0 off the envelope's groups (norm 0, padding, protected): no part of phi
        c = c * posf
    zero = ops.zeros_like(c)
    inv_c = ops.where(pos, 1.0 / c, zero)
    lo = L * inv_c  # 0 off the groups (a breakpoint where phi = 0 < k: harmless)
    hi = lo + inv_c
    k_col = ops.expand_dims(kt, 1)
    # rows where phi never reaches k (npos <= k: every group stays, set below) get a finite bracket
    far = float(np.finfo(dt).max)

    def phi(alpha):
        """phi of every row at its own alpha (sums of nonnegative terms: no cancellation)."""
        return ops.sum(ops.clip(ops.expand_dims(alpha, 1) * c - L, 0.0, 1.0), axis=1)

    if n_rows * 2 * m * m <= DENSE_PHI_LIMIT:
        # phi at every breakpoint at once, (S, 2M, M): a handful of ops instead of a chain of
        # halvings. phi is monotone (so is its rounding), so the bracket is [largest breakpoint
        # with phi < k, smallest with phi >= k]; 0 (phi = 0 < k) is always below.
        bs = ops.concatenate([lo, hi], axis=1)
        # b_i c_j as a batched outer product: a matmul is several times faster than a two-sided
        # broadcast, and with one term it rounds the same; float64 only (float32 matmuls may run
        # in TF32 on GPUs), and not under torch, where Keras' matmul returns float32 for float64
        if dt == "float64" and keras.backend.backend() != "torch":
            x = ops.matmul(ops.stack([bs, -ops.ones_like(bs)], axis=2), ops.stack([c, L], axis=1))
        else:
            x = ops.expand_dims(bs, 2) * ops.expand_dims(c, 1) - ops.expand_dims(L, 1)
        phi_all = ops.sum(ops.clip(x, 0.0, 1.0), axis=2)
        below = phi_all < k_col
        a_lo = ops.max(ops.where(below, bs, 0.0), axis=1)
        phi_lo = ops.max(ops.where(below, phi_all, 0.0), axis=1)
        a_hi = ops.min(ops.where(below, far, bs), axis=1)
        phi_hi = ops.min(ops.where(below, float(m + 1), phi_all), axis=1)  # phi <= m
    else:
        # Bisection over each row's sorted breakpoints (the 2 npos finite ones first) for the
        # first index i with phi(b_i) >= k; a fixed number of halvings keeps the graph static (XLA).
        inf = ops.full_like(c, np.inf)
        bs = ops.sort(ops.concatenate([ops.where(pos, lo, inf), ops.where(pos, hi, inf)], axis=1), axis=1)
        n_finite = ops.cast(2.0 * ops.sum(posf, axis=1), "int32")

        def at(index):
            return ops.squeeze(ops.take_along_axis(bs, ops.expand_dims(ops.maximum(index, 0), 1), axis=1), 1)

        lo_i = ops.full((n_rows,), -1, "int32")  # virtual breakpoint 0, phi(0) = 0 < k
        hi_i = n_finite - 1  # phi(b_{2 npos - 1}) = npos > k when there is a root
        for _ in range(int(np.ceil(np.log2(2 * m + 1))) + 1):
            mid_i = (lo_i + hi_i) // 2
            above = phi(at(mid_i)) >= kt
            open_ = hi_i - lo_i > 1
            hi_i = ops.where(open_ & above, mid_i, hi_i)
            lo_i = ops.where(open_ & ~above, mid_i, lo_i)
        a_lo = ops.where(lo_i < 0, ops.zeros((n_rows,), dt), at(lo_i))
        phi_lo = phi(a_lo)
        a_hi = at(hi_i)
        a_hi = ops.where(a_hi < far, a_hi, far)  # inf: no group at all
        phi_hi = phi(a_hi)
    # No breakpoint lies strictly inside (a_lo, a_hi) and phi is linear there: interpolate
    # (phi_lo < k <= phi_hi, so the fraction is in (0, 1]; from a_lo, where the groups that
    # start there must come out exactly zero)
    alpha = a_lo + (kt - phi_lo) / (phi_hi - phi_lo) * (a_hi - a_lo)
    raw = ops.expand_dims(alpha, 1) * c - L  # -L <= 0 off the groups
    # a group whose breakpoint is the root is exactly zero (raw there is a few ulps of L_j)
    snap = 8 * float(np.finfo(dt).eps) * (1.0 + L)
    theta = ops.where(raw <= snap, zero, _at_most_one(raw))
    every = ops.expand_dims(ops.sum(posf, axis=1) <= kt, 1)  # npos <= k: all of them stay
    theta = ops.where(every, posf, theta)
    if kept is not None:  # k - p <= 0 (phi's bracket is then meaningless): only the protected stay
        theta = ops.where(k_col > 0, theta, zero) + kept
    # lam = 0 is the identity: factor 1 on the groups with a nonzero norm (0 on the others, which
    # are zero anyway, and on the padding, so that factor > 0 always means a nonzero group left);
    # otherwise theta = 0 gives exactly 0 (L > 0); the 0/0 of a lam = 0 row is never selected
    identity = posf if kept is None else posf + kept
    scale = ops.where(lam_col > 0, theta / (theta + L), identity)
    if not ridge:
        scale = ops.where(theta >= 1.0, ops.ones_like(scale), scale)
    if not np.all(k > 0):  # k = 0 zeroes the scope, protected groups too
        scale = ops.where(ops.convert_to_tensor((k > 0).reshape(n_rows, 1)), scale, zero)
    return scale


def segment_leaders(a, d, segments: np.ndarray):
    """0/1 (float64) marking, in each segment, the group ranked first by ``a_j / sqrt(d_j)``.

    The first index wins ties; a segment whose norms are all zero has no leader. A global budget
    (``envelope="model"``) protects these so that no layer loses every channel during the prox.

    Example:
      >>> lead = segment_leaders(np.array([1., 3., 0., 2.]), np.ones(4), np.array([0, 0, 1, 1]))
      >>> ops.convert_to_numpy(lead).tolist()
      [0.0, 1.0, 0.0, 1.0]
    """
    dt = prox_dtype()
    a = _t(a, dt)
    d = _t(d, dt)
    segments = np.asarray(segments, np.int64).reshape(-1)
    m = int(a.shape[0])
    # a dense (segments x groups) membership instead of segment_max: exact in float64 on every
    # backend (torch's segment_max rounds through float32, and ties then lose their leader)
    member = ops.convert_to_tensor(segments[None, :] == np.unique(segments)[:, None])
    r = ops.where(a > 0, a / ops.sqrt(d), -ops.ones_like(a))
    best = ops.max(ops.where(member, r[None, :], -np.inf), axis=1)  # per segment
    best_of = ops.sum(ops.where(member, best[:, None], 0.0), axis=0)  # per group: its segment's best
    idx = ops.cast(ops.arange(m), dt)
    cand = ops.where((r >= best_of) & (a > 0), idx, float(m))
    first = ops.min(ops.where(member, cand[None, :], float(m)), axis=1)
    first_of = ops.sum(ops.where(member, first[:, None], 0.0), axis=0)
    return ops.cast((idx == first_of) & (a > 0), dt)


def prox_dtype() -> str:
    """The dtype of the prox's arithmetic: float64, except under JAX with x64 off.

    JAX without ``jax_enable_x64`` has no float64 (it truncates to float32 and warns on every
    op), and turning x64 on is a process-wide choice that is the user's: there the prox runs in
    float32 (``tests/test_optimizer.py`` measures how often its support differs from float64's).
    """
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.read("jax_enable_x64"):
            return "float32"
    return "float64"


def read(variable):
    """The value of a Keras variable as a tensor: one read that every op taking it shares.

    (``ops.convert_to_tensor`` hands a TensorFlow variable back as it is, and each op using it
    then reads it again.)
    """
    value = variable.value
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(value)
    return value


def _at_most_one(x):
    """``min(x, 1)`` in ``x``'s dtype on every backend (Keras' torch ``minimum`` returns float32 for float64)."""
    if keras.backend.backend() == "torch":
        return ops.where(x < 1.0, x, 1.0)
    return ops.minimum(x, 1.0)


def _t(x, dt: str):
    """``x`` as a tensor of ``dt`` (NumPy and Python numbers converted directly, never via float64)."""
    if isinstance(x, (np.ndarray, np.generic, float, int)):
        return ops.convert_to_tensor(np.asarray(x, np.float64), dt)
    return ops.cast(x, dt)


def _index_is_identity(index: np.ndarray, num_groups: int) -> bool:
    return index.ndim == 1 and index.size == num_groups and bool(np.all(index == np.arange(num_groups)))


def group_sq_norms(values, axes, indices, num_groups: int):
    """Sum of squares per group over several variables (float64, length ``num_groups``).

    Args:
      values: the variables' current values (tensors).
      axes: per value, the group axis (int) or None for an element-wise index.
      indices: per value, the NumPy group index (see :class:`keras_wgsef.groups.Member`).
      num_groups: m.
    """
    dt = prox_dtype()
    total = ops.zeros((num_groups,), dt)
    for x, axis, index in zip(values, axes, indices):
        sq = ops.square(ops.cast(x, dt))
        if axis is None:
            total = total + ops.segment_sum(
                ops.reshape(sq, (-1,)), ops.convert_to_tensor(index.reshape(-1), "int32"), num_segments=num_groups
            )
            continue
        rank = len(sq.shape)
        ax = axis % rank
        other = tuple(i for i in range(rank) if i != ax)
        per_slice = ops.sum(sq, axis=other) if other else sq
        if _index_is_identity(index, num_groups):
            total = total + per_slice
        else:
            total = total + ops.segment_sum(per_slice, ops.convert_to_tensor(index, "int32"), num_segments=num_groups)
    return total


#: tensors up to this many entries are concatenated rather than reduced one by one (copying
#: 64 KB costs less than one more operation, a few microseconds on a small model's step)
SMALL_TENSOR = 1 << 14


def flat_concat(tensors):
    """Every entry of ``tensors`` as one 1-D tensor: a reshape only where needed, a concatenation only for several.

    Example:
      >>> ops.convert_to_numpy(flat_concat([np.ones((2, 2)), np.zeros(3)])).tolist()
      [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    """
    flat = [x if len(x.shape) == 1 else ops.reshape(x, (-1,)) for x in tensors]
    return ops.concatenate(flat) if len(flat) > 1 else flat[0]


def padded_sq_norms(values, members, rows: np.ndarray, width: int):
    """Sums of squares of every scope's groups as one ``(S, width)`` matrix (zero padding), float32.

    :func:`padded_group_sums` of ``ops.square``: the group norms of every scope, squared, by one
    segment sum. Sums run in float32 (float64 when a variable is); the prox casts the result.

    Args:
      values: the members' current values (tensors), in ``members`` order.
      members: the :class:`keras_wgsef.groups.Member` of each value.
      rows: per member, the row (scope) it belongs to.
      width: the row length ``M`` (the largest scope's ``m``).

    Example:
      >>> from keras_wgsef.groups import Member
      >>> k = np.array([[3.0, 0.0], [4.0, 1.0]], "float32")
      >>> mbs = (Member("d/kernel", -1, np.arange(2)), Member("d/bias", 0, np.arange(2)))
      >>> ops.convert_to_numpy(padded_sq_norms([k, np.array([0., 2.], "float32")], mbs, np.array([0, 0]), 2)).tolist()
      [[25.0, 5.0]]
    """
    return padded_group_sums([(x,) for x in values], members, rows, width, ops.square)


def padded_group_sums(values, members, rows: np.ndarray, width: int, fn):
    """Per group of every scope, the sum of ``fn`` over its entries, as one ``(S, width)`` matrix (zero padding).

    ``fn`` is element-wise and takes one tensor per component of each member's tuple (e.g. an
    optimizer's slots of one variable: ``fn(v)`` or ``fn(v, g)``). The small members (up to
    :data:`SMALL_TENSOR` entries) are flattened into one vector per component and ``fn`` runs
    once on them, each entry labelled ``row * width + group``; a large member contributes the sums
    of ``fn`` over every axis but the group axis. One segment sum then adds everything up: on a
    small model, a handful of operations whatever the number of scopes and members. Sums run in
    float32 (float64 when a value is).

    Args:
      values: per member, a tuple of tensors of the member's shape, in ``members`` order.
      members: the :class:`keras_wgsef.groups.Member` of each value.
      rows: per member, the row (scope) it belongs to.
      width: the row length ``M`` (the largest scope's ``m``).
      fn: element-wise function of a tuple's components.

    Example:
      >>> from keras_wgsef.groups import Member
      >>> v = np.array([[4.0, 0.0], [9.0, 1.0]], "float32")
      >>> mbs = (Member("d/kernel", -1, np.arange(2)),)
      >>> ops.convert_to_numpy(padded_group_sums([(v,)], mbs, np.array([0]), 2, ops.sqrt)).tolist()
      [[5.0, 1.0]]
    """
    values = [tuple(ops.convert_to_tensor(x) for x in tup) for tup in values]
    dtypes = [keras.backend.standardize_dtype(x.dtype) for tup in values for x in tup]
    acc = "float64" if "float64" in dtypes else "float32"
    parts = len(values[0])
    flat: list[list] = [[] for _ in range(parts)]
    flat_ids, summed, summed_ids = [], [], []
    for tup, mb, row in zip(values, members, rows):
        tup = tuple(x if keras.backend.standardize_dtype(x.dtype) == acc else ops.cast(x, acc) for x in tup)
        index = np.asarray(mb.index)
        base = int(row) * width
        shape = tuple(int(n) for n in tup[0].shape)
        rank = len(shape)
        if mb.axis is None or rank == 1:  # one group index per entry
            for f, x in zip(flat, tup):
                f.append(x)
            flat_ids.append(base + index.reshape(-1))
            continue
        ax = mb.axis % rank
        if int(np.prod(shape)) <= SMALL_TENSOR:  # each entry labelled with its slice's group
            labels = np.reshape(index, [len(index) if i == ax else 1 for i in range(rank)])
            for f, x in zip(flat, tup):
                f.append(x)
            flat_ids.append(base + np.broadcast_to(labels, shape).reshape(-1))
            continue
        summed.append(ops.sum(fn(*tup), axis=tuple(i for i in range(rank) if i != ax)))
        summed_ids.append(base + index)
    terms = ([fn(*[flat_concat(f) for f in flat])] if flat_ids else []) + summed
    ids = np.concatenate(flat_ids + summed_ids).astype(np.int32)
    n_rows = int(np.max(rows)) + 1
    total = ops.segment_sum(flat_concat(terms), ops.convert_to_tensor(ids, "int32"), num_segments=n_rows * width)
    return ops.reshape(total, (n_rows, width))


def group_sizes(members, rows: np.ndarray, width: int, shapes) -> np.ndarray:
    """The number of entries of every scope's groups as an ``(S, width)`` NumPy matrix (0 on the padding).

    Args:
      members: the :class:`keras_wgsef.groups.Member` of each variable.
      rows: per member, the row (scope) it belongs to.
      width: the row length ``M``.
      shapes: per member, its variable's shape.

    Example:
      >>> from keras_wgsef.groups import Member
      >>> mbs = (Member("d/kernel", -1, np.arange(2)), Member("d/bias", 0, np.arange(2)))
      >>> group_sizes(mbs, np.array([0, 0]), 3, [(4, 2), (2,)]).tolist()
      [[5.0, 5.0, 0.0]]
    """
    sizes = np.zeros((int(np.max(rows)) + 1, width))
    for mb, row, shape in zip(members, rows, shapes):
        index = np.asarray(mb.index).reshape(-1)
        rank = len(shape)
        per = 1 if mb.axis is None or rank == 1 else int(np.prod(shape)) // int(shape[mb.axis % rank])
        np.add.at(sizes[int(row)], index, per)
    return sizes


def expand_scales(scales, shape, axis, index: np.ndarray):
    """Broadcastable per-element factors for one variable from per-group ``scales``."""
    if axis is None:
        return ops.reshape(ops.take(scales, ops.convert_to_tensor(index.reshape(-1), "int32")), shape)
    rank = len(shape)
    ax = axis % rank
    per_slice = (
        scales
        if _index_is_identity(index, int(scales.shape[0]))
        else ops.take(scales, ops.convert_to_tensor(index, "int32"))
    )
    if ax == rank - 1:  # the last axis: broadcasts as it is
        return per_slice
    bshape = [1] * rank
    bshape[ax] = int(shape[ax])
    return ops.reshape(per_slice, bshape)
