"""Tests for keras_dctsparse.allocation (global density -> per-layer nonzeros)."""

import math

import numpy as np
import pytest

from keras_dctsparse.allocation import (
    METHODS,
    Allocation,
    _capped_proportional,
    _erk_weights,
    _round_to_total,
    allocate_densities,
    nnz_for_density,
)

# N = 100, 1000, 10000 (total 11100); at d = 0.1, T = 1110.
SHAPES_A = [(10, 10), (100, 10), (1000, 10)]
# N = 100, 2000, 30000 (total 32100); at d = 0.1, T = 3210.
SHAPES_B = [(10, 10), (100, 20), (1000, 30)]


def _random_case(rng):
    """A random list of Dense / Conv / depthwise kernel shapes."""
    shapes = []
    for _ in range(rng.integers(1, 9)):
        kind = rng.integers(3)
        if kind == 0:
            shapes.append((int(rng.integers(1, 600)), int(rng.integers(1, 600))))
        elif kind == 1:
            k = int(rng.choice([1, 3, 5]))
            shapes.append((k, k, int(rng.integers(1, 130)), int(rng.integers(1, 130))))
        else:
            shapes.append((3, 3, int(rng.integers(1, 130)), 1))
    return shapes


def _random_density(rng):
    return float(10 ** rng.uniform(-3.5, 0))


# ----------------------------------------------------------------------------
# Hand-computed cases.


@pytest.mark.parametrize(
    "method, expected",
    [
        # round(0.1 * N_l).
        ("uniform", (10, 100, 1000)),
        # 370 each; layer 0 (N=100) becomes dense; (1110 - 100) / 2 = 505.
        ("epl", (100, 505, 505)),
        # All layers have 10 output channels: same as EPL.
        ("epf", (100, 505, 505)),
        # eps * sum(shape) with sums 20, 110, 1010: eps = 1110 / 1140;
        # targets 19.47, 107.11, 983.42 -> floors 19, 107, 983 (1109), the
        # missing unit goes to the largest remainder (layer 0).
        ("erk", (20, 107, 983)),
    ],
)
def test_hand_computed_shapes_a(method, expected):
    a = allocate_densities(SHAPES_A, 0.1, method)
    assert a.nnz == expected
    assert a.sizes == (100, 1000, 10000)
    assert a.method == method
    assert a.density == 0.1


@pytest.mark.parametrize(
    "method, expected",
    [
        ("uniform", (10, 200, 3000)),
        # 1070 each; layer 0 dense; (3210 - 100) / 2 = 1555.
        ("epl", (100, 1555, 1555)),
        # c = 3210 / 60 = 53.5 -> layer 0 wants 535 > 100: dense;
        # c = 3110 / 50 = 62.2 -> 20 c = 1244, 30 c = 1866.
        ("epf", (100, 1244, 1866)),
        # sums 20, 120, 1030: eps = 3210 / 1170 -> 54.87, 329.23, 2825.90;
        # floors sum to 3208, the 2 units go to layers 2 (.90) and 0 (.87).
        ("erk", (55, 329, 2826)),
    ],
)
def test_hand_computed_shapes_b(method, expected):
    a = allocate_densities(SHAPES_B, 0.1, method)
    assert a.nnz == expected
    assert a.total_nnz == 3210 or method == "uniform"


def test_epl_cascading_redistribution():
    # N = 10, 50, 1000; T = round(0.2 * 1060) = 212.
    # 70.67 each -> layer 0 dense (10); 101 each -> layer 1 dense (50); 152.
    a = allocate_densities([(2, 5), (5, 10), (10, 100)], 0.2, "epl")
    assert a.nnz == (10, 50, 152)
    assert a.dense_layers == (0, 1)
    assert a.densities == (1.0, 1.0, 0.152)


def test_erk_forces_small_layer_dense_and_solves_again():
    # N = 16, 10000, 20000; T = round(0.5 * 30016) = 15008.
    # First eps = 15008 / 508: layer 0 would get 8 * eps = 236 > 16 -> dense.
    # Solved again over layers 1, 2: eps = 14992 / 500 = 29.984 ->
    # 5996.8 and 8995.2 -> 5997, 8995 (largest remainder).
    shapes = [(4, 4), (100, 100), (200, 100)]
    a = allocate_densities(shapes, 0.5, "erk")
    assert a.nnz == (16, 5997, 8995)
    assert a.dense_layers == (0,)
    assert a.total_nnz == 15008
    # Without redistribution (the authors' code) layers 1, 2 would keep the
    # first eps and the total would fall short.
    eps0 = 15008 / 508
    assert 16 + eps0 * 200 + eps0 * 300 < 15008 - 100
    # The solved-again layers have density ratio equal to the ERK score ratio.
    targets = _capped_proportional(_erk_weights(shapes), a.sizes, 15008)
    np.testing.assert_allclose(targets, [16, 5996.8, 8995.2])


def test_erk_conv_stem_dense_others_share_one_eps():
    # Conv stem (3, 3, 3, 16) has score 25 / 432, 20x the others': at 5% it
    # goes dense while the big layers share the rest with one common eps.
    shapes = [(3, 3, 3, 16), (3, 3, 64, 128), (3, 3, 128, 256), (4096, 1000)]
    a = allocate_densities(shapes, 0.05, "erk")
    assert a.dense_layers == (0,)
    assert a.total_nnz == math.floor(0.05 * sum(a.sizes) + 0.5)
    free = [i for i in range(len(shapes)) if i not in a.dense_layers]
    scores = [sum(s) / math.prod(s) for s in shapes]
    eps = [a.nnz[i] / a.sizes[i] / scores[i] for i in free]
    # One common eps for all non-dense layers (up to integer rounding).
    assert max(eps) - min(eps) < 2 * max(1 / sum(shapes[i]) for i in free)


# ----------------------------------------------------------------------------
# density == 1, tiny density, rounding.


@pytest.mark.parametrize("method", METHODS)
def test_density_one_all_dense(method):
    shapes = [(3, 3, 3, 16), (784, 300), (300, 10), (3, 3, 32, 1)]
    a = allocate_densities(shapes, 1.0, method)
    assert a.nnz == a.sizes
    assert a.densities == (1.0,) * 4
    assert a.dense_layers == (0, 1, 2, 3)
    assert a.global_density == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_tiny_density_keeps_one_per_layer(method):
    a = allocate_densities([(1000, 1000), (500, 500), (3, 3)], 1e-7, method)
    assert a.nnz == (1, 1, 1)
    assert a.dense_layers == ()


def test_nnz_for_density_half_up_and_caps():
    assert nnz_for_density(10, 0.25) == 3  # 2.5 rounds up (not half-even 2).
    assert nnz_for_density(10, 0.35) == 4  # 3.5 -> 4.
    assert nnz_for_density(784 * 300, 0.01) == 2352
    assert nnz_for_density(100, 1e-9) == 1
    assert nnz_for_density(100, 1.0) == 100
    for size in (1, 3, 7, 49, 97, 1000, 12345):
        for k in range(1, size + 1, max(1, size // 97)):
            assert nnz_for_density(size, k / size) == k


def test_round_to_total_largest_remainder():
    assert _round_to_total([1.5, 2.5, 3.0], [10, 10, 10], 7) == [2, 2, 3]
    assert _round_to_total([1.2, 2.7, 3.1], [10, 10, 10], 7) == [1, 3, 3]
    # Infeasible (total < L): one each.
    assert _round_to_total([1.0, 1.0, 1.0], [5, 5, 5], 1) == [1, 1, 1]


def test_allocation_is_frozen():
    a = allocate_densities(SHAPES_A, 0.1)
    assert isinstance(a, Allocation)
    assert a.method == "erk"
    with pytest.raises(Exception):
        a.nnz = (1, 1, 1)


# ----------------------------------------------------------------------------
# Invariants on random cases.


@pytest.mark.parametrize("method", METHODS)
def test_invariants_random(method):
    rng = np.random.default_rng(1234 + METHODS.index(method))
    for _ in range(150):
        shapes = _random_case(rng)
        d = _random_density(rng)
        a = allocate_densities(shapes, d, method)
        L = len(shapes)
        sizes = tuple(math.prod(s) for s in shapes)
        T = math.floor(d * sum(sizes) + 0.5)
        assert a.sizes == sizes
        assert all(isinstance(k, int) for k in a.nnz)
        assert all(1 <= k <= n for k, n in zip(a.nnz, sizes))
        if method == "uniform":
            assert abs(a.total_nnz - T) <= L
        else:
            assert a.total_nnz == max(T, L)
        assert a.dense_layers == tuple(i for i in range(L) if a.nnz[i] == sizes[i])
        for n, k, dl in zip(sizes, a.nnz, a.densities):
            assert dl == k / n
            assert nnz_for_density(n, dl) == k
        assert a.total_size == sum(sizes)
        assert a.global_density == a.total_nnz / sum(sizes)


@pytest.mark.parametrize("method", METHODS)
def test_monotone_in_density(method):
    rng = np.random.default_rng(99 + METHODS.index(method))
    for _ in range(25):
        shapes = _random_case(rng)
        sizes = [math.prod(s) for s in shapes]
        grid = np.sort(10 ** rng.uniform(-3, 0, size=12))
        allocs = [allocate_densities(shapes, float(d), method) for d in grid]
        totals = [a.total_nnz for a in allocs]
        assert totals == sorted(totals)
        for lo, hi in zip(allocs, allocs[1:]):
            # Largest-remainder rounding may move one unit between layers,
            # but never more (the real-valued targets are monotone).
            assert all(h >= l - 1 for l, h in zip(lo.nnz, hi.nnz))
        if method != "uniform":
            weights = {"epl": [1] * len(shapes),
                       "epf": [s[-1] for s in shapes],
                       "erk": [sum(s) for s in shapes]}[method]
            prev = None
            for d in grid:
                T = math.floor(d * sum(sizes) + 0.5)
                x = _capped_proportional(weights, sizes, T)
                if prev is not None:
                    assert np.all(x >= prev - 1e-9 * np.maximum(1, prev))
                prev = x
        else:
            for lo, hi in zip(allocs, allocs[1:]):
                assert all(h >= l for l, h in zip(lo.nnz, hi.nnz))


# ----------------------------------------------------------------------------
# ERK against independent references.


def _erk_reference_bisection(shapes, density):
    """Real ERK targets by bisection on eps: sum clip(eps*p*N, 1, N) = T."""
    sizes = np.array([math.prod(s) for s in shapes], dtype=np.float64)
    scores = np.array([sum(s) / math.prod(s) for s in shapes])
    T = math.floor(density * sizes.sum() + 0.5)

    def total(eps):
        return np.minimum(np.maximum(eps * scores, 1 / sizes), 1.0) @ sizes

    lo, hi = 0.0, 1.0
    while total(hi) < T:
        hi *= 2
    for _ in range(120):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if total(mid) < T else (lo, mid)
    eps = 0.5 * (lo + hi)
    return np.minimum(np.maximum(eps * scores, 1 / sizes), 1.0) * sizes


def _erk_reference_rigl(shapes, density):
    """RigL's iterative ERK: mark dense, solve eps again, until stable."""
    sizes = [math.prod(s) for s in shapes]
    scores = [sum(s) / math.prod(s) for s in shapes]
    T = density * sum(sizes)
    dense = set()
    while True:
        rest = T - sum(sizes[i] for i in dense)
        eps = rest / sum(scores[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        new = {i for i in range(len(shapes)) if i not in dense and eps * scores[i] > 1}
        if not new:
            return [sizes[i] if i in dense else eps * scores[i] * sizes[i]
                    for i in range(len(shapes))], dense
        dense |= new


def test_erk_matches_bisection_reference():
    rng = np.random.default_rng(7)
    for _ in range(100):
        shapes = _random_case(rng)
        d = _random_density(rng)
        a = allocate_densities(shapes, d, "erk")
        ref = _erk_reference_bisection(shapes, d)
        if sum(ref) < len(shapes) + 0.5:
            continue  # infeasible: all ones, checked elsewhere
        mine = _capped_proportional(_erk_weights(shapes), a.sizes,
                                    math.floor(d * sum(a.sizes) + 0.5))
        np.testing.assert_allclose(mine, ref, rtol=1e-9, atol=1e-6)
        assert np.all(np.abs(np.array(a.nnz) - ref) < 1 + 1e-6)


def test_erk_matches_rigl_iterative_reference():
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(300):
        shapes = _random_case(rng)
        d = float(rng.uniform(0.05, 0.99))
        ref, ref_dense = _erk_reference_rigl(shapes, d)
        if min(ref) < 1:  # RigL has no floor at one nonzero.
            continue
        a = allocate_densities(shapes, d, "erk")
        assert np.all(np.abs(np.array(a.nnz) - np.array(ref)) < 1 + 1e-6)
        assert ref_dense <= set(a.dense_layers)
        checked += 1
    assert checked > 100


# ----------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
    "density, shown",
    [(0, "0"), (0.0, "0.0"), (-0.1, "-0.1"), (1.5, "1.5"), (float("nan"), "nan"),
     (float("inf"), "inf"), (True, "True"), ("0.5", "'0.5'"), (None, "None")],
)
def test_bad_density(density, shown):
    with pytest.raises(ValueError, match=r"`density`.*\(0, 1\].*density=" + shown):
        allocate_densities(SHAPES_A, density)


def test_bad_method():
    with pytest.raises(ValueError, match=r"`method`.*'uniform', 'epl', 'epf', 'erk'.*method='er'"):
        allocate_densities(SHAPES_A, 0.1, "er")
    with pytest.raises(ValueError, match=r"`method`.*method=None"):
        allocate_densities(SHAPES_A, 0.1, None)


def test_method_case_insensitive():
    assert allocate_densities(SHAPES_A, 0.1, "EPL").method == "epl"


@pytest.mark.parametrize("shapes", [[], ()])
def test_empty_shapes(shapes):
    with pytest.raises(ValueError, match=r"`shapes`.*at least one.*shapes="):
        allocate_densities(shapes, 0.1)


@pytest.mark.parametrize(
    "shapes, shown",
    [([(3, 3), (3, 0)], r"shapes\[1\]=\(3, 0\)"),
     ([(3, -2)], r"shapes\[0\]=\(3, -2\)"),
     ([(3, None)], r"shapes\[0\]=\(3, None\)"),
     ([(3, 2.5)], r"shapes\[0\]=\(3, 2.5\)"),
     ([()], r"shapes\[0\]=\(\)"),
     ([5], r"shapes\[0\]=5")],
)
def test_bad_shape(shapes, shown):
    with pytest.raises(ValueError, match=r"`shapes`.*positive.*" + shown):
        allocate_densities(shapes, 0.1)


def test_numpy_inputs_accepted():
    shapes = [np.array([10, 10]), (np.int64(100), np.int32(10))]
    a = allocate_densities(shapes, np.float32(0.5), "epl")
    assert a.sizes == (100, 1000)
    assert all(type(n) is int for n in a.sizes + a.nnz)
