import numpy as np
import pytest

from keras_dctsparse.ops import support


@pytest.mark.parametrize(
    "size, density, expected",
    [(100, 0.1, 10), (784 * 300, 0.01, 2352), (10, 1e-9, 1), (10, 1.0, 10), (3, 0.5, 2)],
)
def test_num_nonzeros(size, density, expected):
    assert support.num_nonzeros(size, density) == expected


def test_num_nonzeros_round_trips_integer_counts():
    rng = np.random.default_rng()
    for size in rng.integers(1, 10**7, size=200):
        k = int(rng.integers(1, size + 1))
        assert support.num_nonzeros(int(size), k / size) == k


def test_sample_support_is_distinct_sorted_and_in_range():
    rows, cols = support.sample_support((37, 11), 100, seed=3)
    assert len(rows) == len(cols) == 100
    assert rows.min() >= 0 and rows.max() < 37 and cols.min() >= 0 and cols.max() < 11
    flat = cols * 37 + rows
    assert len(np.unique(flat)) == 100
    assert np.all(np.diff(flat) > 0), "positions must be sorted column-major"


def test_sample_support_is_reproducible_from_seed():
    first = support.sample_support((300, 200), 600, seed=7)
    second = support.sample_support((300, 200), 600, seed=7)
    other = support.sample_support((300, 200), 600, seed=8)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_sample_support_full_density_covers_everything():
    rows, cols = support.sample_support((6, 5), 30, seed=0)
    assert sorted(zip(cols, rows)) == [(c, r) for c in range(5) for r in range(6)]


def test_sample_support_is_uniform():
    # Every cell of a 4 x 5 matrix is hit about equally often over many draws.
    counts = np.zeros((4, 5))
    for seed in range(2000):
        rows, cols = support.sample_support((4, 5), 3, seed=seed)
        np.add.at(counts, (rows, cols), 1)
    expected = 2000 * 3 / 20
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 50  # 19 degrees of freedom: p < 1e-4 beyond this


def test_sample_support_huge_matrix_is_cheap():
    # 100,000 x 100,000 at density 1e-6: 10,000 positions without a dense mask.
    nnz = support.num_nonzeros(10**10, 1e-6)
    rows, cols = support.sample_support((100_000, 100_000), nnz, seed=0)
    assert len(np.unique(cols.astype(np.int64) * 100_000 + rows)) == nnz == 10_000


@pytest.mark.parametrize("nnz", [0, 31])
def test_sample_support_rejects_bad_nnz(nnz):
    with pytest.raises(ValueError, match=f"nnz={nnz}"):
        support.sample_support((5, 6), nnz, seed=0)
