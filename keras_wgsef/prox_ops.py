"""The WGSEF prox on tensors (``keras.ops``): what the optimizer runs inside ``fit``.

Same math as :mod:`keras_wgsef.prox` (the NumPy reference), organised for vectorised, XLA-friendly
execution: the root ``alpha`` of ``phi(alpha) = sum_j clip(alpha c_j - L_j, 0, 1) = k`` is found by
sorting the 2m breakpoints ``lo_j = L_j/c_j``, ``hi_j = (1 + L_j)/c_j`` and bisecting over them
with ``phi`` evaluated directly (O(m log m), a fixed number of steps, no data-dependent loop).
Everything on the group norms runs in float64 whatever the variables' dtype (float32 under JAX
with x64 off: :func:`prox_dtype`).

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

__all__ = ["batched_prox_scales", "expand_scales", "group_sq_norms", "prox_dtype", "prox_scales", "segment_leaders"]


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


def batched_prox_scales(a, d, k: np.ndarray, lam, valid: np.ndarray, ridge: bool = True, protect=None):
    """The prox factors of S scopes at once, each row its own ``k``, weights and strength.

    Row ``s`` holds scope ``s``'s ``m_s`` groups in its first ``m_s`` columns (``valid``) and
    padding after them; the result's row ``s`` is :func:`prox_scales` of that scope (0 on the
    padding). One sort of every row's ``2 M`` breakpoints and one bisection vectorised over the
    rows: the number of operations does not grow with the number of scopes. Small problems
    (``S * 2M * M <= DENSE_PHI_LIMIT``) evaluate ``phi`` at every breakpoint at once instead of
    bisecting (fewer, larger operations: what a small model's step time needs).

    Args:
      a: group norms, float64 ``(S, M)`` (anything on the padding).
      d: group weights ``> 0``, float64 ``(S, M)`` (anything ``> 0`` on the padding).
      k: NumPy ints ``(S,)``, ``>= 0``.
      lam: strengths ``>= 0``, float64 tensor ``(S,)``.
      valid: NumPy bool ``(S, M)``, True on each scope's groups.
      ridge: as in :func:`prox_scales`.
      protect: optional float64 0/1 ``(S, M)``, as in :func:`prox_scales`.

    Returns:
      float64 ``(S, M)``: ``s_j = theta_j / (theta_j + lam_s d_j)`` per scope, 0 on the padding.

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
    validb = ops.convert_to_tensor(valid)  # a tensor: NumPy operands would wrap torch tensors
    a = _t(a, dt)
    d = ops.where(validb, _t(d, dt), 1.0)
    lam = ops.reshape(_t(lam, dt), (n_rows, 1))
    validf = ops.convert_to_tensor(valid.astype(np.float64), dt)
    L = lam * d
    pos0 = (a > 0) & validb
    kept = ops.zeros_like(a) if protect is None else _t(protect, dt) * ops.cast(pos0, dt)
    pos = pos0 & (kept == 0)  # the groups the envelope decides on
    posf = ops.cast(pos, dt)
    npos = ops.sum(posf, axis=1)
    c = ops.sqrt(d) * a
    safe_c = ops.where(pos, c, ops.ones_like(c))
    inf = ops.full_like(c, np.inf)
    lo = ops.where(pos, L / safe_c, inf)
    hi = ops.where(pos, (1.0 + L) / safe_c, inf)
    bs = ops.sort(ops.concatenate([lo, hi], axis=1), axis=1)  # each row's 2 npos finite breakpoints first
    kf = ops.convert_to_tensor(k.astype(np.float64), dt) - ops.sum(kept, axis=1)

    def phi(alpha):
        """phi of every row at its own alpha (sums of nonnegative terms: no cancellation)."""
        return ops.sum(ops.clip(ops.expand_dims(alpha, 1) * c - L, 0.0, 1.0) * posf, axis=1)

    def at(index):
        return ops.squeeze(ops.take_along_axis(bs, ops.expand_dims(ops.maximum(index, 0), 1), axis=1), 1)

    n_finite = ops.cast(2.0 * npos, "int32")
    if n_rows * 2 * m * m <= DENSE_PHI_LIMIT:
        # small scopes: phi at every breakpoint at once, (S, 2M, M), a handful of ops instead of a
        # chain of halvings; the first index with phi(b_i) >= k is the count of those below k
        phi_all = ops.sum(
            ops.clip(ops.expand_dims(bs, 2) * ops.expand_dims(c, 1) - ops.expand_dims(L, 1), 0.0, 1.0)
            * ops.expand_dims(posf, 1),
            axis=2,
        )
        finite_i = ops.expand_dims(ops.arange(2 * m, dtype="int32"), 0) < ops.expand_dims(n_finite, 1)
        below = ops.sum(ops.cast((phi_all < ops.expand_dims(kf, 1)) & finite_i, "int32"), axis=1)
        hi_i = ops.minimum(below, n_finite - 1)  # n_finite - 1 only when npos <= k (overridden below)
        lo_i = hi_i - 1
    else:
        # Bisection over each row's sorted breakpoints for the first index i with phi(b_i) >= k;
        # a fixed number of halvings keeps the graph static (XLA). phi(b_{2 npos - 1}) = npos > k.
        lo_i = ops.full((n_rows,), -1, "int32")  # virtual breakpoint 0, phi(0) = 0 < k
        hi_i = n_finite - 1
        for _ in range(int(np.ceil(np.log2(2 * m + 1))) + 1):
            mid_i = (lo_i + hi_i) // 2
            above = phi(at(mid_i)) >= kf
            open_ = hi_i - lo_i > 1
            hi_i = ops.where(open_ & above, mid_i, hi_i)
            lo_i = ops.where(open_ & ~above, mid_i, lo_i)
    a_lo = ops.where(lo_i < 0, ops.zeros((n_rows,), dt), at(lo_i))
    a_hi = at(hi_i)
    # No breakpoint lies strictly inside (a_lo, a_hi): the midpoint classifies every group as
    # saturated, linear or zero on the bracket, and phi is linear there.
    mid = ops.expand_dims(0.5 * (a_lo + a_hi), 1)
    sat = ops.cast(hi <= mid, dt) * posf
    lin = ops.cast((lo <= mid) & (hi > mid), dt) * posf
    n_sat = ops.sum(sat, axis=1)
    slope = ops.sum(lin * c, axis=1)
    offset = ops.sum(lin * L, axis=1)
    alpha = (kf - n_sat + offset) / ops.where(slope > 0, slope, ops.ones_like(slope))
    # slope 0: phi is flat on the bracket (only rounding kept phi(a_lo) below k): its left end,
    # where the groups starting at a_hi are still exactly zero
    alpha = ops.where(slope > 0, ops.clip(alpha, a_lo, a_hi), a_lo)
    raw = ops.expand_dims(alpha, 1) * c - L
    # a group whose breakpoint is the root is exactly zero (raw there is a few ulps of L_j)
    snap = 8 * float(np.finfo(dt).eps) * (1.0 + L)
    theta = ops.where(raw <= snap, ops.zeros_like(raw), ops.clip(raw, 0.0, 1.0))
    theta = ops.where(ops.expand_dims(npos <= kf, 1), ops.ones_like(theta), theta) * posf
    theta = ops.where(ops.expand_dims(kf > 0, 1), theta, ops.zeros_like(theta)) + kept
    theta = theta * validf * ops.convert_to_tensor((k > 0).astype(np.float64).reshape(n_rows, 1), dt)
    nz = theta > 0
    scale = theta / ops.where(nz, theta + L, ops.ones_like(theta))
    if not ridge:
        scale = ops.where(theta >= 1.0, ops.ones_like(scale), scale)
    return ops.where(nz, scale, ops.zeros_like(scale))


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
    bshape = [1] * rank
    bshape[ax] = int(shape[ax])
    return ops.reshape(per_slice, bshape)
