"""The WGSEF regularizer on NumPy: value, proximal operator and the linear-time root finder.

These are pure functions on float64 arrays, the reference for everything else in the library
(the tensor version in :mod:`keras_wgsef.prox_ops` is tested against them).

Notation (the paper, and the docs' concepts page): ``x`` is split into disjoint groups ``G_1..G_m`` with
weights ``d_j > 0`` (default: the group sizes). With ``w_j = sqrt(d_j) * ||x_{G_j}||``::

    WGSEF_k(x) = 1/2 * ||w||_(k)^2          (half the squared k-support norm of w)

and the prox of ``lam * WGSEF_k`` only rescales each group::

    prox(z)_{G_j} = theta_j / (theta_j + lam * d_j) * z_{G_j},
    theta_j = clip(alpha * c_j - L_j, 0, 1),  c_j = sqrt(d_j) ||z_{G_j}||,  L_j = lam * d_j,

with ``alpha`` the root of ``phi(alpha) = sum_j clip(alpha c_j - L_j, 0, 1) = k`` found by
:func:`solve_alpha` in worst-case linear time (median selection, no sort). The closed forms follow
from the definition (the Fenchel biconjugate of ``1/2 sum_j d_j ||x_j||^2`` restricted to at most
k nonzero groups) by convex conjugacy; ``tests/test_prox.py`` checks them against brute-force
solvers of the definition and the worked vectors.

References:
  Refael, Arbel, Huleihel, "Learning k-Level Structured Sparse Neural Networks Using Group
  Envelope Regularization", arXiv:2212.12921 (TMLR 2024). Beck, Refael, "Sparse regularization
  via bidualization", J. Global Optim. 82 (2022) (the sparse envelope function, ``d = 1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "group_norms",
    "group_weights",
    "metric_prox_scales",
    "prox_scales",
    "solve_alpha",
    "wgsef_prox",
    "wgsef_value",
]


def _validate_groups(n: int, groups: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Checks that ``groups`` partition ``range(n)``; returns the group id of every element and the sizes."""
    if len(groups) == 0:
        raise ValueError("groups is empty: give at least one group (a sequence of index arrays).")
    idx = [np.asarray(g, dtype=np.int64).reshape(-1) for g in groups]
    sizes = np.array([g.size for g in idx], dtype=np.int64)
    if np.any(sizes == 0):
        raise ValueError(f"group {int(np.argmin(sizes))} is empty: every group needs at least one index.")
    flat = np.concatenate(idx)
    if flat.min() < 0 or flat.max() >= n:
        raise ValueError(f"groups have indices outside range({n}).")
    seen = np.bincount(flat, minlength=n)
    if np.any(seen != 1):
        missing = np.flatnonzero(seen == 0)[:5].tolist()
        repeated = np.flatnonzero(seen > 1)[:5].tolist()
        raise ValueError(
            "groups must partition range(len(x)): "
            f"indices not covered {missing}, indices in several groups {repeated} (first 5 shown)."
        )
    owner = np.empty(n, dtype=np.int64)
    owner[flat] = np.repeat(np.arange(len(idx)), sizes)
    return owner, sizes


def group_norms(x: np.ndarray, groups: Sequence[np.ndarray]) -> np.ndarray:
    """Euclidean norm of each group, ``a_j = ||x_{G_j}||`` (float64, length m); raises on NaN or inf."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        bad = np.flatnonzero(~np.isfinite(x))[:5].tolist()
        raise ValueError(f"x has NaN or inf entries (e.g. at {bad}); the prox and the value need finite numbers.")
    owner, sizes = _validate_groups(x.size, groups)
    return np.sqrt(np.bincount(owner, weights=x**2, minlength=sizes.size))


def group_weights(groups: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """The weights ``d_j``: the given ones (checked > 0 and finite) or the group sizes."""
    if weights is None:
        return np.array([np.asarray(g).size for g in groups], dtype=np.float64)
    d = np.asarray(weights, dtype=np.float64).reshape(-1)
    if d.size != len(groups):
        raise ValueError(f"weights has {d.size} entries but there are {len(groups)} groups.")
    if not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise ValueError("weights d_j must be finite and > 0 (the count is never weighted).")
    return d


def check_k(k: object) -> int:
    """``k`` as an int ``>= 0``; a fractional, boolean or negative ``k`` raises with the legal range."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 0:
        raise ValueError(f"k must be an integer >= 0 (the number of groups kept), got {k!r}.")
    return int(k)


def _phi(alpha: float, c: np.ndarray, L: np.ndarray) -> float:
    return float(np.sum(np.clip(alpha * c - L, 0.0, 1.0)))


#: relative width, in units of L_j, below which ``alpha c_j - L_j`` is rounding at the breakpoint
_SNAP = 8 * np.finfo(np.float64).eps


def solve_alpha(c: np.ndarray, L: np.ndarray, k: int) -> float:
    """Root ``alpha > 0`` of ``phi(alpha) = sum_j clip(alpha c_j - L_j, 0, 1) = k``, worst-case O(m).

    ``phi`` is continuous, nondecreasing and piecewise linear with breakpoints ``lo_j = L_j/c_j``
    and ``hi_j = (1 + L_j)/c_j``. The bracket ``[aL, aU]`` with ``phi(aL) <= k <= phi(aU)`` is
    halved by the median of the breakpoints inside it (linear-time selection); groups whose piece
    is settled on the bracket are folded into running sums (``S1`` saturated count, ``C`` and
    ``Ls`` slope and offset of the linear pieces), so the total work is O(m). Runs in float64 and
    clamps the final linear solve to the bracket (tiny norms can round outside it).

    Args:
      c: positive values ``c_j`` (length m, every entry > 0).
      L: offsets ``L_j >= 0`` (same length).
      k: integer with ``1 <= k < m``.

    Returns:
      ``alpha`` with ``phi(alpha) = k`` up to rounding.

    Example:
      >>> solve_alpha(np.array([3.0, 1.0, 1.0]), np.zeros(3), 2)   # 3a clipped + 2a = 2 -> 0.5 (1 + 0.5 + 0.5)
      0.5
    """
    c = np.asarray(c, dtype=np.float64)
    L = np.asarray(L, dtype=np.float64)
    m = c.size
    if not (1 <= k < m):
        raise ValueError(f"solve_alpha needs 1 <= k < m = {m}, got k = {k}.")
    if np.any(c <= 0):
        raise ValueError("solve_alpha needs every c_j > 0 (drop zero groups first).")
    with np.errstate(over="ignore"):  # tiny c: breakpoints at +inf are never selected
        lo = L / c
        hi = (1.0 + L) / c
    U = np.arange(m)
    S1 = 0.0
    C = 0.0
    Ls = 0.0
    aL = 0.0
    aU = np.inf
    while True:
        B = np.concatenate([lo[U], hi[U]])
        B = B[(aL < B) & (aU > B)]
        if B.size == 0:
            break
        mid = B.size // 2
        beta = float(np.partition(B, mid)[mid])  # introselect: linear time
        v = S1 + beta * C - Ls + float(np.sum(np.clip(beta * c[U] - L[U], 0.0, 1.0)))
        if v < k:
            aL = beta
        else:
            aU = beta
        loU, hiU = lo[U], hi[U]
        sat = hiU <= aL
        dead = lo[U] >= aU
        lin = (loU <= aL) & (hiU >= aU) & ~sat & ~dead
        S1 += float(np.count_nonzero(sat))
        C += float(np.sum(c[U][lin]))
        Ls += float(np.sum(L[U][lin]))
        U = U[~(sat | dead | lin)]
    # No breakpoint is strictly inside the bracket: every remaining group is saturated,
    # dead or linear on it.
    if U.size:
        loU, hiU = lo[U], hi[U]
        sat = hiU <= aL
        dead = (loU >= aU) & ~sat
        lin = ~sat & ~dead
        S1 += float(np.count_nonzero(sat))
        C += float(np.sum(c[U][lin]))
        Ls += float(np.sum(L[U][lin]))
    if C > 0:
        alpha = (k - S1 + Ls) / C
        return float(min(max(alpha, aL), aU))
    return float(aL)


def prox_scales(a: np.ndarray, d: np.ndarray, k: int, lam: float, protect: np.ndarray | None = None) -> np.ndarray:
    """Per-group factors ``s_j`` of ``prox_{lam WGSEF_k}``: ``prox(z)_{G_j} = s_j z_{G_j}``.

    Args:
      a: group norms ``||z_{G_j}||`` (length m, >= 0).
      d: group weights ``d_j > 0``.
      k: number of groups allowed to stay nonzero, ``k >= 0``.
      lam: strength ``>= 0``.
      protect: optional boolean mask of groups that always stay (a global budget's per-layer
        floor). The ``p`` protected groups with a nonzero norm get the ridge factor
        ``1 / (1 + lam d_j)``; the others get the prox of ``WGSEF_{k-p}`` (all zero when
        ``p >= k``). This is the exact prox of
        ``lam (1/2 sum_{protected} d_j ||x_j||^2 + WGSEF_{k-p}(x_rest))``.

    Returns:
      ``s_j = theta_j / (theta_j + lam d_j)`` in ``[0, 1]``; exactly 0 where ``theta_j = 0``.
    """
    a = np.asarray(a, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    m = a.size
    k = check_k(k)
    if lam < 0 or not np.isfinite(lam):
        raise ValueError(f"lam must be a finite number >= 0, got {lam}.")
    if k == 0:
        return np.zeros(m)
    if lam == 0:
        return np.ones(m)
    if protect is not None:
        kept = np.asarray(protect, dtype=bool) & (a > 0)
        out = np.zeros(m)
        out[kept] = 1.0 / (1.0 + lam * d[kept])
        rest = ~kept
        if k - np.count_nonzero(kept) > 0:
            out[rest] = prox_scales(a[rest], d[rest], k - int(np.count_nonzero(kept)), lam)
        return out
    L = lam * d
    theta = np.zeros(m)
    c = np.sqrt(d) * a
    P = c > 0  # also drops subnormal norms whose c underflows to 0
    if np.count_nonzero(P) <= k:
        theta[P] = 1.0
    else:
        alpha = solve_alpha(c[P], L[P], k)
        raw = alpha * c[P] - L[P]
        # a group whose breakpoint is the root is exactly zero: alpha c_j - L_j there is rounding
        # (a few ulps of L_j), and counting it would leave k + 1 groups nonzero
        theta[P] = np.where(raw <= _SNAP * (1.0 + L[P]), 0.0, np.clip(raw, 0.0, 1.0))
    out = np.zeros(m)
    nz = theta > 0
    out[nz] = theta[nz] / (theta[nz] + L[nz])
    return out


def metric_prox_scales(
    a: np.ndarray, d: np.ndarray, h: np.ndarray, k: int, lam: float, protect: np.ndarray | None = None
) -> np.ndarray:
    """Per-group factors of the prox of ``lam * WGSEF_k`` in a diagonal metric with one scalar per group.

    The proximal step that matches a preconditioned gradient step (Adam, RMSprop, Adagrad, ...) is::

        x* = argmin_x  sum_j h_j/2 ||x_j - z_j||^2 + lam * WGSEF_{k,d}(x),      h_j > 0.

    Substitute ``y_j = sqrt(h_j) x_j``: a group-wise linear bijection keeps every support, and the
    convex envelope commutes with a linear bijection (``(f o A)** = f** o A``), so
    ``WGSEF_{k,d}(x) = WGSEF_{k,d/h}(y)`` (the quadratic ``d_j ||x_j||^2 = (d_j/h_j) ||y_j||^2``, the
    count unchanged). The problem becomes the ordinary prox with weights ``d_j / h_j`` at
    ``sqrt(h_j) z_j``, and mapping back ``x_j = y_j / sqrt(h_j)`` gives ``x_j = s_j z_j`` with the
    factors of :func:`prox_scales` on ``(sqrt(h_j) a_j, d_j / h_j)``. Group j is zeroed iff
    ``h_j a_j / sqrt(d_j)`` is at or below a common threshold: moving a group whose coordinates
    take small steps (large ``h_j``) costs more, so it needs a smaller norm to be dropped. With
    ``h_j = 1/lr`` for every group (SGD) this is the prox of ``lr * lam * WGSEF`` in the Euclidean
    metric.

    Args:
      a: group norms ``||z_j||`` (length m, >= 0).
      d: group weights ``d_j > 0``.
      h: the metric, one ``h_j > 0`` per group (e.g. the group mean of ``(sqrt(v_hat) + eps) / lr``).
      k: number of groups allowed to stay nonzero.
      lam: strength ``>= 0`` (the regularizer's, not multiplied by a learning rate: ``h`` carries it).
      protect: groups that always stay, as in :func:`prox_scales`.

    Returns:
      ``s_j`` in ``[0, 1]`` with ``x*_j = s_j z_j``.

    Example:
      >>> a, d = np.array([3.0, 1.0, 2.0]), np.ones(3)
      >>> bool(np.allclose(metric_prox_scales(a, d, np.full(3, 10.0), 2, 0.5), prox_scales(a, d, 2, 0.05)))
      True
      >>> metric_prox_scales(a, d, np.array([1.0, 1.0, 50.0]), 1, 0.5).round(4).tolist()  # group 2 moves slowly
      [0.4481, 0.0, 0.9834]
    """
    h = np.asarray(h, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    if h.shape != a.shape or not np.all(np.isfinite(h)) or np.any(h <= 0):
        raise ValueError(f"h must hold one finite h_j > 0 per group ({a.size}), got shape {h.shape}.")
    return prox_scales(np.sqrt(h) * a, np.asarray(d, dtype=np.float64) / h, k, lam, protect=protect)


def wgsef_value(
    x: np.ndarray,
    groups: Sequence[np.ndarray],
    k: int,
    weights: Sequence[float] | np.ndarray | None = None,
) -> float:
    """WGSEF value ``1/2 ||w||_(k)^2`` with ``w_j = sqrt(d_j) ||x_{G_j}||``.

    If at most k entries of ``w`` are nonzero the value is ``1/2 sum w_j^2``; otherwise, with
    ``tau > 0`` solving ``sum_j min(1, w_j/tau) = k``,
    ``1/2 (sum_{w_j >= tau} w_j^2 + tau sum_{w_j < tau} w_j)``. ``k = 0`` is the indicator of
    ``x = 0`` (0 or ``inf``).

    Example:
      >>> x = np.array([1, -2, 0.5, 3, 1, -0.2]); groups = [[0, 1], [2], [3, 4], [5]]
      >>> round(wgsef_value(x, groups, k=2, weights=[2, 1, 0.5, 1]), 10)
      9.3102475842
    """
    k = check_k(k)
    a = group_norms(x, groups)
    d = group_weights(groups, weights)
    w = np.sqrt(d) * a
    if k == 0:
        return 0.0 if not np.any(w > 0) else float("inf")
    pos = w[w > 0]
    if pos.size <= k:
        return 0.5 * float(np.sum(pos**2))
    tau = 1.0 / solve_alpha(pos, np.zeros_like(pos), k)
    top = pos >= tau
    return 0.5 * float(np.sum(pos[top] ** 2) + tau * np.sum(pos[~top]))


def wgsef_prox(
    x: np.ndarray,
    groups: Sequence[np.ndarray],
    k: int,
    lam: float,
    weights: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """``prox_{lam WGSEF_k}(x) = argmin_u lam WGSEF_k(u) + 1/2 ||u - x||^2`` (float64 copy).

    The prox never rotates a group, it shortens it: group j is scaled by
    ``theta_j / (theta_j + lam d_j)`` and is exactly zero iff ``||x_j|| / sqrt(d_j) <= lam/alpha``.
    With more than k nonzero input groups at least k stay nonzero.

    Example:
      >>> x = np.array([1, -2, 0.5, 3, 1, -0.2]); groups = [[0, 1], [2], [3, 4], [5]]
      >>> (wgsef_prox(x, groups, k=2, lam=0.5, weights=[2, 1, 0.5, 1]) + 0.0).round(6).tolist()
      [0.5, -1.0, 0.0, 2.4, 0.8, 0.0]
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    a = group_norms(x, groups)
    owner, _ = _validate_groups(x.size, groups)
    d = group_weights(groups, weights)
    return x * prox_scales(a, d, check_k(k), lam)[owner]
