"""Moving the positions of `S` during training (RigL, SET): pure numpy, in O(nnz) memory.

A layer's support is a set of `nnz` distinct positions of its `(n, m)` matrix view,
stored as column-major flat keys `col * n + row`, ascending (the order the sparse
kernels need). One update drops `k` entries and grows `k` new ones:

- `cosine_drop_fraction`: how many to move at a step (the RigL paper's schedule).
- `smallest_magnitude`: which entries to drop (ties broken at random).
- `top_free_scores`: where to grow by score (RigL: the dense gradient's magnitude),
  merged over column blocks so that at most one block of scores is in memory.
- `sample_free_positions`: where to grow at random (SET), or random candidates to
  score when a layer is too big to score every position.
- `merge_support`: the new sorted support and, for each new entry, which old entry
  it continues (or -1 for a grown one), to carry values and optimizer slots over.
"""

import math

import numpy as np

__all__ = [
    "TopScores", "carry_over", "cosine_drop_fraction", "flat_keys", "largest",
    "merge_support", "positions_of", "sample_free_positions", "smallest_magnitude",
]


def cosine_drop_fraction(step, initial_fraction, end_step):
    """The fraction of each layer's nonzeros to move at `step`: cosine decay to 0 at `end_step`.

    `initial_fraction * (1 + cos(pi * step / end_step)) / 2` for `0 <= step < end_step`,
    0 from `end_step` on (Evci et al., 2020, "Rigging the Lottery", eq. 1).

    Args:
        step: The training step (optimizer iterations).
        initial_fraction: Fraction at step 0, in [0, 1].
        end_step: First step without updates, > 0.

    Returns:
        A float in [0, initial_fraction].

    Example:

    >>> round(cosine_drop_fraction(50, 0.3, 100), 6)
    0.15
    """
    if step >= end_step or step < 0:
        return 0.0
    return initial_fraction * 0.5 * (1.0 + math.cos(math.pi * step / end_step))


def flat_keys(rows, cols, num_rows):
    """Column-major flat keys `col * num_rows + row` (int64) of positions."""
    return np.asarray(cols, np.int64) * int(num_rows) + np.asarray(rows, np.int64)


def positions_of(keys, num_rows):
    """`(rows, cols)` of column-major flat keys (the inverse of `flat_keys`)."""
    cols, rows = np.divmod(np.asarray(keys, np.int64), int(num_rows))
    return rows, cols


def smallest_magnitude(values, count, rng):
    """Indices of the `count` entries of smallest `|values|`, ties broken at random.

    Args:
        values: 1-D array of the kept values.
        count: How many to return, `0 <= count <= len(values)`.
        rng: A `numpy.random.Generator` (for the tie-break).

    Returns:
        int64 array of `count` distinct indices into `values`.

    Example:

    >>> sorted(smallest_magnitude(np.array([3.0, -0.5, 2.0, 0.1]), 2,
    ...                           np.random.default_rng(0)).tolist())
    [1, 3]
    """
    return largest(-np.abs(np.asarray(values, np.float64)), count, rng)


def largest(scores, count, rng):
    """Indices of the `count` largest `scores`, ties at the threshold broken at random.

    O(len(scores)) (a partition, no full sort).

    Args:
        scores: 1-D float array.
        count: How many to return, `0 <= count <= len(scores)`.
        rng: A `numpy.random.Generator`.

    Returns:
        int64 array of `count` distinct indices, in no particular order.

    Example:

    >>> sorted(largest(np.array([1.0, 5.0, 3.0]), 2, np.random.default_rng(0)).tolist())
    [1, 2]
    """
    scores = np.asarray(scores)
    size = scores.shape[0]
    if not 0 <= count <= size:
        raise ValueError(f"Cannot take {count} of {size} entries.")
    if count == size:
        return np.arange(size, dtype=np.int64)
    if count == 0:
        return np.zeros((0,), np.int64)
    threshold = np.partition(scores, size - count)[size - count]
    above = np.flatnonzero(scores > threshold)
    at = np.flatnonzero(scores == threshold)
    ties = rng.choice(at, size=count - above.size, replace=False)
    return np.concatenate([above, ties]).astype(np.int64)


def _is_held(keys, held_sorted):
    """Boolean mask: which of `keys` are in the ascending array `held_sorted`."""
    if held_sorted.size == 0:
        return np.zeros(keys.shape, bool)
    where = np.searchsorted(held_sorted, keys)
    where = np.minimum(where, held_sorted.size - 1)
    return held_sorted[where] == keys


def sample_free_positions(num_rows, num_cols, held_keys, count, rng):
    """`count` distinct keys drawn uniformly from the positions not in `held_keys`.

    Rejection sampling in O(count + nnz) memory; when fewer than a quarter of the
    matrix is free and it has at most 2**24 entries, the free keys are listed
    instead.

    Args:
        num_rows: `n`, rows of the matrix view.
        num_cols: `m`, columns of the matrix view.
        held_keys: Ascending column-major keys currently held.
        count: How many to draw; at most the number of free positions.
        rng: A `numpy.random.Generator`.

    Returns:
        Ascending int64 array of `count` keys.

    Example:

    >>> keys = sample_free_positions(3, 2, np.array([0, 1, 2]), 3,
    ...                              np.random.default_rng(0))
    >>> keys.tolist()
    [3, 4, 5]
    """
    size = int(num_rows) * int(num_cols)
    held_keys = np.asarray(held_keys, np.int64)
    free = size - held_keys.size
    if not 0 <= count <= free:
        raise ValueError(
            f"Cannot draw {count} free positions of a {num_rows} x {num_cols} matrix "
            f"with {held_keys.size} held ({free} free)."
        )
    if count == 0:
        return np.zeros((0,), np.int64)
    if free < size // 4 and size <= 2**24:
        candidates = np.setdiff1d(np.arange(size, dtype=np.int64), held_keys)
        return np.sort(rng.choice(candidates, size=count, replace=False))
    chosen = np.zeros((0,), np.int64)
    while chosen.size < count:
        need = count - chosen.size
        draw = rng.integers(0, size, size=2 * need + 16, dtype=np.int64)
        draw = draw[~_is_held(draw, held_keys)]
        # Keep first occurrences in draw order (an unbiased sample without replacement).
        merged = np.concatenate([chosen, draw])
        _, first = np.unique(merged, return_index=True)
        chosen = merged[np.sort(first)][:count]
    return np.sort(chosen)


class TopScores:
    """The `count` largest scores over free positions, fed one column block at a time.

    Args:
        count: How many positions to keep.
        num_rows: `n`, rows of the matrix view.
        held_keys: Ascending column-major keys that may not be chosen.
        rng: A `numpy.random.Generator` (ties are broken at random).

    Example:

    >>> top = TopScores(2, num_rows=2, held_keys=np.array([0]), rng=np.random.default_rng(0))
    >>> top.add(0, np.array([[9.0, 1.0], [5.0, 7.0]]))  # columns 0-1 of a 2 x 2 matrix
    >>> top.keys().tolist()  # key 0 (score 9) is held
    [1, 3]
    """

    def __init__(self, count, num_rows, held_keys, rng):
        self.count = int(count)
        self.num_rows = int(num_rows)
        self.held_keys = np.asarray(held_keys, np.int64)
        self.rng = rng
        self._keys = np.zeros((0,), np.int64)
        self._scores = np.zeros((0,), np.float64)

    def add(self, first_col, scores):
        """Offers the scores of columns `first_col ...` (an `(n, block)` array)."""
        scores = np.asarray(scores, np.float64)
        num_cols = scores.shape[1]
        # Column-major keys of the block: column-major flattening of the block array.
        keys = first_col * self.num_rows + np.arange(scores.size, dtype=np.int64)
        flat = scores.reshape(-1, order="F")
        lo, hi = np.searchsorted(
            self.held_keys, [keys[0], first_col * self.num_rows + num_cols * self.num_rows]
        )
        held_in_block = self.held_keys[lo:hi] - keys[0]
        free = np.ones(flat.shape, bool)
        free[held_in_block] = False
        self.offer(keys[free], flat[free])

    def offer(self, keys, scores):
        """Offers arbitrary free `keys` with their `scores` (sampled candidates)."""
        keys = np.concatenate([self._keys, np.asarray(keys, np.int64)])
        scores = np.concatenate([self._scores, np.asarray(scores, np.float64)])
        if keys.size > self.count:
            chosen = largest(scores, self.count, self.rng)
            keys, scores = keys[chosen], scores[chosen]
        self._keys, self._scores = keys, scores

    def keys(self):
        """The chosen keys, ascending."""
        return np.sort(self._keys)


def merge_support(keys, dropped, grown_keys):
    """The support after dropping `dropped` and adding `grown_keys`, and where each entry came from.

    Args:
        keys: Ascending column-major keys of the current support (length nnz).
        dropped: Indices into `keys` of the entries to drop.
        grown_keys: Keys to add (none of them in `keys`), as many as `dropped`.

    Returns:
        `(new_keys, source)`: the ascending new keys (length nnz), and for each the
        index of the old entry it continues, or -1 for a grown entry.

    Example:

    >>> new_keys, source = merge_support(np.array([1, 4, 6]), np.array([1]), np.array([2]))
    >>> new_keys.tolist(), source.tolist()
    ([1, 2, 6], [0, -1, 2])
    """
    keys = np.asarray(keys, np.int64)
    kept = np.ones(keys.shape, bool)
    kept[np.asarray(dropped, np.int64)] = False
    grown_keys = np.asarray(grown_keys, np.int64)
    if grown_keys.size != keys.size - kept.sum():
        raise ValueError(
            f"Grew {grown_keys.size} positions for {keys.size - kept.sum()} dropped ones."
        )
    merged = np.concatenate([keys[kept], grown_keys])
    source = np.concatenate([np.flatnonzero(kept), np.full(grown_keys.size, -1)])
    order = np.argsort(merged, kind="stable")
    return merged[order], source[order].astype(np.int64)


def carry_over(old, source):
    """`old[source]` with zeros where `source == -1` (values or optimizer slots of grown entries)."""
    old = np.asarray(old)
    carried = old[np.maximum(source, 0)]
    carried[source < 0] = 0
    return carried
