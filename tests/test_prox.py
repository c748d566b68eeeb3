"""The WGSEF math on NumPy: worked vectors, an independent solver, optimality, regimes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_wgsef import prox as P

X = np.array([1, -2, 0.5, 3, 1, -0.2])
G = [[0, 1], [2], [3, 4], [5]]
D = [2, 1, 0.5, 1]


# ---------------------------------------------------------------- worked vectors (spec)
@pytest.mark.parametrize("k,value", [(1, 18.5949097582), (2, 9.3102475842), (3, 7.745), (4, 7.645)])
def test_value_worked_vectors(k, value):
    assert P.wgsef_value(X, G, k, D) == pytest.approx(value, abs=1e-9)


@pytest.mark.parametrize(
    "k,lam,expected",
    [
        (2, 0.5, [0.5, -1, 0, 2.4, 0.8, 0]),
        (2, 0.05, [0.90909, -1.81818, 0.36951, 2.91246, 0.97082, -0.06951]),
        (1, 0.5, [0.241286, -0.482572, 0, 2.195262, 0.731754, 0]),
    ],
)
def test_prox_worked_vectors(k, lam, expected):
    np.testing.assert_allclose(P.wgsef_prox(X, G, k, lam, D), expected, atol=6e-6)


def test_prox_exactly_two_groups_at_lam_half():
    out = P.wgsef_prox(X, G, 2, 0.5, D)
    assert np.count_nonzero(P.group_norms(out, G)) == 2


def test_sef_tie_keeps_three():
    out = P.wgsef_prox(np.array([3, -1, 1, 0.2]), [[0], [1], [2], [3]], 2, 0.5, [1, 1, 1, 1])
    np.testing.assert_allclose(out, [2, -0.5, 0.5, 0], atol=1e-12)
    assert np.count_nonzero(out) == 3  # a tie at the k-th place: fractional theta


def test_sef_value():
    assert P.wgsef_value(np.array([3, -1, 1.0]), [[0], [1], [2]], 2, [1, 1, 1]) == pytest.approx(6.5)


# ---------------------------------------------------------------- independent reference
def sorted_alpha(c, L, k):
    """Independent solver: evaluate phi at every breakpoint, interpolate on the bracketing piece."""
    with np.errstate(over="ignore"):
        b = np.unique(np.concatenate([L / c, (1 + L) / c]))
    phi = np.array([np.clip(a * c - L, 0, 1).sum() for a in b])
    i = int(np.argmax(phi >= k))
    a0, a1, p0, p1 = b[i - 1], b[i], phi[i - 1], phi[i]
    return a0 + (k - p0) * (a1 - a0) / (p1 - p0)


def brute_prox_scales(a, d, k, lam):
    """Reference from the definition: theta via the sorted solver, then theta / (theta + lam d)."""
    P_ = np.sqrt(d) * a > 0
    theta = np.zeros_like(a)
    if P_.sum() <= k:
        theta[P_] = 1
    else:
        c = np.sqrt(d[P_]) * a[P_]
        alpha = sorted_alpha(c, lam * d[P_], k)
        theta[P_] = np.clip(alpha * c - lam * d[P_], 0, 1)
    return np.where(theta > 0, theta / np.where(theta > 0, theta + lam * d, 1), 0)


def test_solve_alpha_matches_sorted_solver_random():
    rng = np.random.default_rng(1)
    for _ in range(300):
        m = int(rng.integers(2, 60))
        c = np.abs(rng.normal(size=m)) * 10 ** rng.uniform(-3, 3) + 1e-9
        L = np.abs(rng.normal(size=m)) * rng.uniform(0, 2)
        k = int(rng.integers(1, m))
        a1 = P.solve_alpha(c, L, k)
        assert np.clip(a1 * c - L, 0, 1).sum() == pytest.approx(k, abs=1e-7)
        a2 = sorted_alpha(c, L, k)  # phi may be flat at k: compare what alpha decides, theta
        np.testing.assert_allclose(np.clip(a1 * c - L, 0, 1), np.clip(a2 * c - L, 0, 1), atol=1e-7)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 1e3), min_size=1, max_size=25),
    st.floats(1e-4, 10),
    st.integers(0, 30),
    st.floats(0.1, 5),
)
def test_prox_scales_match_reference(norms, lam, k, dscale):
    a = np.array(norms)
    d = np.linspace(0.5, 2, a.size) * dscale
    s = P.prox_scales(a, d, k, lam)
    ref = brute_prox_scales(a, d, k, lam) if k > 0 else np.zeros_like(a)
    np.testing.assert_allclose(s * a, ref * a, rtol=1e-7, atol=1e-9 * max(1, a.max()))


# ---------------------------------------------------------------- optimality conditions
def value_of_scaled(z, groups, d, k, lam, s):
    """Objective lam*WGSEF(x) + 1/2||x - z||^2 at x = s * z (group-wise)."""
    x = z.copy()
    for j, g in enumerate(groups):
        x[g] *= s[j]
    return lam * P.wgsef_value(x, groups, k, d) + 0.5 * np.sum((x - z) ** 2), x


def random_problem(rng):
    """A small random prox problem: group sizes, groups, weights, point z, strength."""
    m = int(rng.integers(3, 9))
    sizes = rng.integers(1, 4, size=m)
    groups = np.split(np.arange(sizes.sum()), np.cumsum(sizes)[:-1])
    return (
        sizes,
        groups,
        rng.uniform(0.5, 3, size=m),
        rng.normal(size=sizes.sum()) * 2,
        float(10 ** rng.uniform(-2, 0.5)),
    )


def assert_minimiser(objective, x, rng, tries=60):
    """No random perturbation of x (at several scales) lowers the convex objective."""
    best = objective(x)
    for _ in range(tries):
        assert objective(x + rng.normal(size=x.size) * 10 ** rng.uniform(-3, 0)) >= best - 1e-9


def test_prox_minimizes_objective_against_perturbations():
    rng = np.random.default_rng(2)
    for _ in range(40):
        sizes, groups, d, z, lam = random_problem(rng)
        k = int(rng.integers(1, sizes.size))
        x = P.wgsef_prox(z, groups, k, lam, d)
        assert_minimiser(lambda y: lam * P.wgsef_value(y, groups, k, d) + 0.5 * np.sum((y - z) ** 2), x, rng)


def test_protected_prox_minimizes_ridge_plus_smaller_envelope():
    """prox with protected groups: the minimiser of lam (ridge on them + WGSEF_{k-p} on the rest)."""
    rng = np.random.default_rng(5)
    for _ in range(40):
        sizes, groups, d, z, lam = random_problem(rng)
        m = sizes.size
        k = int(rng.integers(2, m + 1))
        protect = np.zeros(m, bool)
        protect[rng.choice(m, size=int(rng.integers(1, k)), replace=False)] = True
        rest = [g for g, p in zip(groups, protect) if not p]
        kr = k - int(protect.sum())

        def objective(x):
            ridge = sum(0.5 * d[j] * np.sum(x[g] ** 2) for j, g in enumerate(groups) if protect[j])
            xr = np.concatenate([x[g] for g in rest])
            gr = np.split(np.arange(xr.size), np.cumsum([len(g) for g in rest])[:-1])
            return lam * (ridge + P.wgsef_value(xr, gr, kr, d[~protect])) + 0.5 * np.sum((x - z) ** 2)

        s = P.prox_scales(P.group_norms(z, groups), d, k, lam, protect=protect)
        assert np.all(s[protect] > 0) and np.count_nonzero(s) >= k
        assert_minimiser(objective, z * np.repeat(s, sizes), rng)


def test_prox_keeps_at_least_k_groups():
    rng = np.random.default_rng(3)
    for _ in range(100):
        m = int(rng.integers(2, 40))
        z = rng.normal(size=m) * 10 ** rng.uniform(-2, 2)
        k = int(rng.integers(1, m))
        out = P.wgsef_prox(z, [[j] for j in range(m)], k, float(10 ** rng.uniform(-2, 2)))
        assert np.count_nonzero(out) >= k


def test_zeroed_iff_below_threshold():
    """Group j is zeroed iff a_j / sqrt(d_j) <= lam / alpha."""
    rng = np.random.default_rng(4)
    a = np.abs(rng.normal(size=30)) + 0.01
    d = rng.uniform(0.5, 4, size=30)
    lam, k = 0.3, 5
    c = np.sqrt(d) * a
    alpha = P.solve_alpha(c, lam * d, k)
    s = P.prox_scales(a, d, k, lam)
    np.testing.assert_array_equal(s == 0, a / np.sqrt(d) <= lam / alpha + 1e-15)


# ---------------------------------------------------------------- regimes
def test_k_zero_gives_zero_and_infinite_value():
    assert np.all(P.wgsef_prox(X, G, 0, 0.1, D) == 0)
    assert P.wgsef_value(X, G, 0, D) == np.inf
    assert P.wgsef_value(np.zeros(6), G, 0, D) == 0.0


def test_k_at_least_m_is_weighted_ridge():
    out = P.wgsef_prox(X, G, 4, 0.2, D)
    expected = np.concatenate([X[g] / (1 + 0.2 * D[j]) for j, g in enumerate(G)])
    np.testing.assert_allclose(out, expected)
    assert P.wgsef_value(X, G, 10, D) == pytest.approx(7.645)


def test_k_one_value_is_squared_weighted_sum():
    w = np.sqrt(D) * P.group_norms(X, G)
    assert P.wgsef_value(X, G, 1, D) == pytest.approx(0.5 * w.sum() ** 2)


def test_lam_zero_is_identity():
    np.testing.assert_array_equal(P.wgsef_prox(X, G, 2, 0.0, D), X)


def test_zero_groups_stay_zero_and_never_divide_by_zero():
    z = np.array([0.0, 0, 1, 2, 0, 0])
    with np.errstate(all="raise"):
        out = P.wgsef_prox(z, G, 1, 0.5, D)
    assert np.all(np.isfinite(out)) and out[0] == out[1] == out[5] == 0


@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1e-3, 1e3, 1e12])
def test_prox_is_scale_covariant(scale):
    """WGSEF is 2-homogeneous (WGSEF(s x) = s^2 WGSEF(x)), so prox_{lam}(s z) = s prox_{lam}(z) with the
    same lam: substituting u = s v turns lam WGSEF(u) + |u - s z|^2 / 2 into s^2 (lam WGSEF(v) + |v - z|^2 / 2).
    The same support at every scale, values scaled exactly."""
    rng = np.random.default_rng(5)
    z = rng.normal(size=20)
    groups = [[j] for j in range(20)]
    for lam in (1e-3, 0.3, 3.0):
        ref = P.wgsef_prox(z, groups, 4, lam)
        got = P.wgsef_prox(z * scale, groups, 4, lam)
        assert np.array_equal(got != 0, ref != 0), (scale, lam)
        np.testing.assert_allclose(got, ref * scale, rtol=1e-9, atol=0)


@pytest.mark.parametrize("c", [1e-4, 0.5, 7.0, 1e5])
def test_prox_weights_trade_with_strength(c):
    """WGSEF with weights c*d is c times WGSEF with d (w_j = sqrt(c d_j) ||x_j||, value quadratic in w), so
    prox with (lam, c d) equals prox with (c lam, d)."""
    rng = np.random.default_rng(11)
    z = rng.normal(size=6)
    got = P.wgsef_prox(z, G, 2, 0.2, np.asarray(D) * c)
    ref = P.wgsef_prox(z, G, 2, 0.2 * c, D)
    assert np.array_equal(got != 0, ref != 0)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-15)


def test_tiny_norms_do_not_zero_everything():
    """The bracket clamp: tiny group norms must not round alpha to 0 and kill every group."""
    a = np.full(10, 1e-7) * np.linspace(1, 2, 10)
    s = P.prox_scales(a, np.ones(10), 3, 1e-9)
    assert np.count_nonzero(s) >= 3


# ---------------------------------------------------------------- bad input
def test_groups_must_partition():
    with pytest.raises(ValueError, match="partition"):
        P.wgsef_prox(X, [[0, 1], [1, 2], [3, 4, 5]], 1, 0.1)
    with pytest.raises(ValueError, match="partition"):
        P.wgsef_value(X, [[0, 1], [3, 4, 5]], 1)


def test_bad_weights_and_strength():
    with pytest.raises(ValueError, match="> 0"):
        P.wgsef_prox(X, G, 1, 0.1, [1, 0, 1, 1])
    with pytest.raises(ValueError, match="lam"):
        P.wgsef_prox(X, G, 1, -0.1, D)
    with pytest.raises(ValueError, match="k must be an integer >= 0"):
        P.wgsef_value(X, G, -1, D)


def test_a_group_whose_breakpoint_is_the_root_is_exactly_zero_in_both_paths():
    """Issue 11 item 6: phi is flat at k between the saturation of two groups and the start of the third."""
    from keras import ops

    from keras_wgsef import prox_ops

    a, d = np.array([2.1, 6.9, 7.3]), np.ones(3)
    ref = P.prox_scales(a, d, 2, 1.39)
    ten = np.asarray(ops.convert_to_numpy(prox_ops.prox_scales(a, d, 2, 1.39)))
    for s in (ref, ten):
        assert s[0] == 0.0 and np.count_nonzero(s) == 2
        np.testing.assert_allclose(s[1:], [0.418410042, 0.418410042], rtol=1e-8)
    rng = np.random.default_rng(0)
    for _ in range(500):  # rounded inputs land on breakpoints often: never a tiny nonzero factor
        m = int(rng.integers(3, 12))
        a, d = np.round(rng.uniform(0.1, 10, m), 1), rng.choice([0.5, 1.0, 2.0], m)
        k, lam = int(rng.integers(1, m)), float(np.round(rng.uniform(0.01, 3), 2))
        for s in (P.prox_scales(a, d, k, lam), np.asarray(ops.convert_to_numpy(prox_ops.prox_scales(a, d, k, lam)))):
            assert not ((s > 0) & (s < 1e-9)).any()
            assert np.count_nonzero(s) >= k


def test_numpy_reference_refuses_a_fractional_k_and_nan_inputs():
    x, groups = np.array([1.0, -2.0, 0.5, 3.0]), [np.array([0, 1]), np.array([2]), np.array([3])]
    for bad in (1.5, True, -1):
        with pytest.raises(ValueError, match=r"k must be an integer >= 0"):
            P.wgsef_prox(x, groups, k=bad, lam=0.5)
        with pytest.raises(ValueError, match=r"k must be an integer >= 0"):
            P.wgsef_value(x, groups, k=bad)
    x[2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf entries \(e.g. at \[2\]\)"):
        P.wgsef_prox(x, groups, k=1, lam=0.5)
    with pytest.raises(ValueError, match=r"NaN or inf"):
        P.wgsef_value(x, groups, k=1)


# ---------------------------------------------------------------- the prox in a diagonal metric
def brute_metric_prox(z, groups, d, h, k, lam):
    """argmin_x sum_j h_j/2 ||x_j - z_j||^2 + lam WGSEF(x), by a derivative-free search (no closed form used)."""
    from scipy.optimize import minimize

    hh = np.concatenate([np.full(len(g), h[j]) for j, g in enumerate(groups)])

    def objective(x):
        return lam * P.wgsef_value(x, groups, k, d) + 0.5 * np.sum(hh * (x - z) ** 2)

    best = None
    for start in (z, np.zeros_like(z), 0.5 * z):
        r = minimize(objective, start, method="Powell", options={"xtol": 1e-10, "ftol": 1e-14, "maxiter": 200000})
        if best is None or r.fun < best.fun:
            best = r
    return best.x, best.fun, objective


def test_metric_prox_matches_a_brute_force_solver_of_the_preconditioned_problem():
    rng = np.random.default_rng(21)
    for _ in range(25):
        m = int(rng.integers(2, 5))
        sizes = rng.integers(1, 3, size=m)
        groups = np.split(np.arange(sizes.sum()), np.cumsum(sizes)[:-1])
        d, h = rng.uniform(0.5, 3, m), 10 ** rng.uniform(-1, 1.5, m)
        z, lam, k = rng.normal(size=sizes.sum()) * 2, float(10 ** rng.uniform(-1.5, 0.5)), int(rng.integers(1, m))
        s = P.metric_prox_scales(P.group_norms(z, groups), d, h, k, lam)
        x = z * np.repeat(s, sizes)
        xb, fb, objective = brute_metric_prox(z, groups, d, h, k, lam)
        assert objective(x) <= fb + 1e-9  # the closed form is at least as good as the search
        np.testing.assert_allclose(x, xb, atol=2e-4)  # and it is the same point (strict convexity)
        assert_minimiser(objective, x, rng)


def test_metric_prox_with_a_constant_metric_is_the_euclidean_prox_of_lr_times_lam():
    rng = np.random.default_rng(22)
    for _ in range(50):
        m = int(rng.integers(2, 30))
        a, d = np.abs(rng.normal(size=m)) * 10 ** rng.uniform(-2, 2), rng.uniform(0.2, 5, m)
        lr, lam, k = float(10 ** rng.uniform(-4, 0)), float(10 ** rng.uniform(-3, 1)), int(rng.integers(0, m + 1))
        np.testing.assert_allclose(
            P.metric_prox_scales(a, d, np.full(m, 1 / lr), k, lam), P.prox_scales(a, d, k, lr * lam), rtol=1e-10
        )


def test_metric_prox_drops_by_norm_times_root_metric_over_weight():
    """Group j is zeroed iff h_j a_j / sqrt(d_j) is at or below a common threshold, and at least k stay."""
    rng = np.random.default_rng(23)
    for _ in range(100):
        m = int(rng.integers(3, 40))
        a, d, h = np.abs(rng.normal(size=m)) + 1e-3, rng.uniform(0.5, 2, m), 10 ** rng.uniform(-2, 2, m)
        k, lam = int(rng.integers(1, m)), float(10 ** rng.uniform(-2, 1))
        s = P.metric_prox_scales(a, d, h, k, lam)
        score = h * a / np.sqrt(d)
        assert np.count_nonzero(s) >= k
        if np.any(s == 0):
            assert score[s == 0].max() <= score[s > 0].min() * (1 + 1e-12)


def test_metric_prox_refuses_a_bad_metric():
    for bad in (np.array([1.0, 0.0, 1.0]), np.array([1.0, np.nan, 1.0]), np.ones(2)):
        with pytest.raises(ValueError, match=r"h must hold one finite h_j > 0 per group \(3\)"):
            P.metric_prox_scales(np.ones(3), np.ones(3), bad, 1, 0.1)
