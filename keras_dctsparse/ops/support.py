"""Choosing the positions of the sparse part `S` from a seed, in O(nnz)."""

import numpy as np

__all__ = [
    "num_nonzeros",
    "sample_support",
]


def num_nonzeros(size, density):
    """Number of kept entries `round(density * size)`, at least 1 and at most `size`.

    Rounds half up (`floor(x + 0.5)`), so `num_nonzeros(size, k / size) == k`
    for every integer `0 < k <= size` despite floating-point error.

    Args:
        size: Number of entries of the dense-equivalent weight.
        density: Fraction of entries kept, in (0, 1].

    Returns:
        The integer number of nonzeros.

    Example:

    >>> num_nonzeros(784 * 300, 0.01)
    2352
    """
    return int(min(size, max(1, np.floor(density * size + 0.5))))


def sample_support(dense_shape, nnz, seed):
    """Samples `nnz` distinct positions of a `(n, m)` matrix uniformly at random.

    Sampling is without replacement and uses O(nnz) memory whenever
    `nnz <= n * m / 50` (numpy's hash-set selection); no dense mask or
    permutation of all `n * m` positions is built. The positions are returned
    sorted column-major (by column, then row), the order the sparse kernels use.

    Args:
        dense_shape: `(n, m)`, the shape of the matrix in Keras kernel
            orientation (inputs, outputs).
        nnz: Number of positions, `1 <= nnz <= n * m`.
        seed: Integer seed (or `None` for fresh entropy). The same seed gives
            the same positions.

    Returns:
        `(rows, cols)`: two int64 numpy arrays of length `nnz`.

    Example:

    >>> rows, cols = sample_support((100000, 100000), 10, seed=0)
    >>> len(set(zip(rows, cols)))
    10
    """
    n, m = (int(d) for d in dense_shape)
    size = n * m
    if not 1 <= nnz <= size:
        raise ValueError(
            f"Argument `nnz` must be in [1, {size}] for a {n} x {m} matrix; "
            f"received nnz={nnz}."
        )
    rng = np.random.default_rng(seed)
    flat = rng.choice(size, size=nnz, replace=False, shuffle=False)
    # Column-major flat index: col * n + row.
    flat = np.sort(flat.astype(np.int64))
    cols, rows = np.divmod(flat, n)
    return rows, cols
