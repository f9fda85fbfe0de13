"""Independent numpy/scipy references shared by the tests (no keras_dctsparse code here)."""

import itertools

import numpy as np
import scipy.fft


def dct_block(rows, cols):
    """The (rows x cols) top-left block of the ortho DCT-II matrix C_N, N = max(rows, cols)."""
    length = max(rows, cols)
    return scipy.fft.dct(np.eye(length), type=2, norm="ortho", axis=0)[:rows, :cols]


def _pads(size, kernel, stride, dilation, padding):
    """TF padding (before, after) and output length for one spatial dimension."""
    span = (kernel - 1) * dilation + 1
    if padding == "valid":
        return (0, 0), (size - span) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return (total // 2, total - total // 2), out


def im2col(x, kernel_size, strides, padding, dilation):
    """(batch, *spatial, c) -> (batch, *out, prod(kernel_size) * c), channel index fastest."""
    pads, outs = zip(
        *(_pads(n, k, s, d, padding)
          for n, k, s, d in zip(x.shape[1:-1], kernel_size, strides, dilation))
    )
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    columns = []
    for offset in itertools.product(*(range(k) for k in kernel_size)):  # row-major taps
        index = tuple(
            slice(o * d, o * d + (n - 1) * s + 1, s)
            for o, d, n, s in zip(offset, dilation, outs, strides)
        )
        columns.append(xp[(slice(None), *index, slice(None))])
    stacked = np.stack(columns, axis=-2)  # (batch, *out, taps, c)
    return stacked.reshape(*stacked.shape[:-2], -1)


def col2im(cols, shape, kernel_size, strides, padding, dilation):
    """Adjoint of `im2col` (float64): scatter-adds patch entries back to their pixels."""
    index = np.arange(1, np.prod(shape) + 1, dtype=np.float64).reshape(shape)
    sources = im2col(index, kernel_size, strides, padding, dilation).astype(np.int64)
    out = np.zeros(np.prod(shape) + 1)
    np.add.at(out, sources.ravel(), cols.ravel())
    return out[1:].reshape(shape)


def random_sparse_problem(n, m, nnz, batch, rng=None):
    """A random sparse `(n, m)` matrix and batches for it, positions sorted column-major.

    Returns:
        `(rows, cols, values, dense, x, dy)`: int32 positions sorted by column then row
        (the layers' order), float64 values, the dense matrix holding them, an input
        `(batch, n)` and an output gradient `(batch, m)`.
    """
    rng = np.random.default_rng() if rng is None else rng
    keys = np.sort(rng.choice(n * m, nnz, replace=False))  # col * n + row
    cols, rows = np.divmod(keys, n)
    values = rng.standard_normal(nnz)
    dense = np.zeros((n, m))
    dense[rows, cols] = values
    x = rng.standard_normal((batch, n))
    dy = rng.standard_normal((batch, m))
    return rows.astype(np.int32), cols.astype(np.int32), values, dense, x, dy


def assert_sum_close(actual, terms, rtol):
    """Checks ``actual`` against ``sum(terms)`` to ``rtol`` of the terms' absolute sum.

    A reduction of many products (alpha's gradient) may cancel to far below its terms, and
    float32 rounding is relative to the terms' magnitudes, not to the result; a wrong or
    missing term still fails by orders of magnitude.
    """
    terms = np.asarray(terms, dtype=np.float64)
    np.testing.assert_allclose(actual, terms.sum(), rtol=0, atol=rtol * np.abs(terms).sum())
