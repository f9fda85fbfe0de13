import math

import numpy as np
import pytest

from keras_dctsparse.ops import regrowth


def test_cosine_drop_fraction_follows_the_rigl_schedule():
    assert regrowth.cosine_drop_fraction(0, 0.3, 1000) == pytest.approx(0.3)
    assert regrowth.cosine_drop_fraction(500, 0.3, 1000) == pytest.approx(0.15)
    step = 123
    expected = 0.3 / 2 * (1 + math.cos(math.pi * step / 1000))
    assert regrowth.cosine_drop_fraction(step, 0.3, 1000) == pytest.approx(expected)
    assert regrowth.cosine_drop_fraction(1000, 0.3, 1000) == 0.0
    assert regrowth.cosine_drop_fraction(5000, 0.3, 1000) == 0.0


def test_flat_keys_round_trip_column_major():
    rng = np.random.default_rng()
    rows, cols = rng.integers(0, 7, 20), rng.integers(0, 5, 20)
    keys = regrowth.flat_keys(rows, cols, 7)
    np.testing.assert_array_equal(keys, cols * 7 + rows)
    back_rows, back_cols = regrowth.positions_of(keys, 7)
    np.testing.assert_array_equal(back_rows, rows)
    np.testing.assert_array_equal(back_cols, cols)


def test_smallest_magnitude_drops_the_smallest():
    rng = np.random.default_rng()
    values = rng.normal(size=200)
    dropped = regrowth.smallest_magnitude(values, 30, rng)
    assert len(set(dropped.tolist())) == 30
    np.testing.assert_array_equal(np.sort(dropped), np.sort(np.argsort(np.abs(values))[:30]))


def test_largest_breaks_ties_at_random():
    scores = np.array([5.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    picks = {
        tuple(sorted(regrowth.largest(scores, 3, np.random.default_rng(seed)).tolist()))
        for seed in range(40)
    }
    assert all(p[0] == 0 and set(p[1:]) <= {1, 2, 3, 4} for p in picks)
    assert len(picks) > 1
    with pytest.raises(ValueError, match="Cannot take 7 of 6"):
        regrowth.largest(scores, 7, np.random.default_rng())


@pytest.mark.parametrize("shape,nnz", [((50, 40), 100), ((10, 10), 90), ((1000, 1000), 500)])
def test_sample_free_positions_are_distinct_and_free(shape, nnz):
    rng = np.random.default_rng()
    held = np.sort(rng.choice(shape[0] * shape[1], nnz, replace=False))
    count = min(shape[0] * shape[1] - nnz, 10)
    keys = regrowth.sample_free_positions(*shape, held, count, rng)
    assert keys.size == count == np.unique(keys).size
    assert np.all(np.diff(keys) > 0)
    assert not np.isin(keys, held).any()
    assert keys.min() >= 0 and keys.max() < shape[0] * shape[1]
    with pytest.raises(ValueError, match="free positions"):
        regrowth.sample_free_positions(*shape, held, shape[0] * shape[1] - nnz + 1, rng)


def test_sample_free_positions_is_uniform():
    rng = np.random.default_rng(0)
    held = np.array([0, 3])
    counts = np.zeros(6)
    for _ in range(3000):
        counts[regrowth.sample_free_positions(2, 3, held, 1, rng)] += 1
    assert counts[0] == counts[3] == 0
    np.testing.assert_allclose(counts[[1, 2, 4, 5]] / 3000, 0.25, atol=0.04)


def test_top_scores_over_blocks_equals_a_full_ranking():
    rng = np.random.default_rng()
    rows, cols, nnz, count = 13, 11, 30, 17
    scores = rng.random((rows, cols))
    held = np.sort(rng.choice(rows * cols, nnz, replace=False))
    top = regrowth.TopScores(count, rows, held, rng)
    for first in range(0, cols, 3):
        top.add(first, scores[:, first:first + 3])
    flat = scores.reshape(-1, order="F").copy()  # column-major keys
    flat[held] = -np.inf
    np.testing.assert_array_equal(top.keys(), np.sort(np.argsort(-flat)[:count]))


def test_merge_support_keeps_order_and_sources():
    rng = np.random.default_rng()
    keys = np.sort(rng.choice(500, 60, replace=False))
    dropped = rng.choice(60, 12, replace=False)
    grown = regrowth.sample_free_positions(20, 25, keys, 12, rng)
    new_keys, source = regrowth.merge_support(keys, dropped, grown)
    assert new_keys.size == keys.size and np.all(np.diff(new_keys) > 0)
    expected = np.sort(np.concatenate([np.delete(keys, dropped), grown]))
    np.testing.assert_array_equal(new_keys, expected)
    kept = source >= 0
    np.testing.assert_array_equal(keys[source[kept]], new_keys[kept])
    np.testing.assert_array_equal(np.sort(new_keys[~kept]), grown)
    values = rng.normal(size=60)
    carried = regrowth.carry_over(values, source)
    np.testing.assert_array_equal(carried[kept], values[source[kept]])
    assert np.all(carried[~kept] == 0)
    with pytest.raises(ValueError, match="Grew 11 positions for 12 dropped"):
        regrowth.merge_support(keys, dropped, grown[:11])
