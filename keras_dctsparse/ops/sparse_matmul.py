"""Sparse-times-dense kernels for `x @ S^T`, forward and backward, and how one is chosen.

`S` is given in Keras kernel orientation `(n, m)` by `values[k]` at
`(rows[k], cols[k])`, with the positions sorted column-major (by column, then
row). Every kernel computes `y[b, c] = sum_{k: cols[k] = c} x[b, rows[k]] * values[k]`
and has a hand-written gradient that reaches `x` and `values` only.

Kernels (measured in `benchmarks/dense_layer.py`):

- `"csr"`: TensorFlow's CSR sparse-matrix kernels (`SparseMatrixMatMul`). The
  column-major positions are exactly the CSR order of `S^T`, so one CSR matrix
  serves the forward (`S^T x`) and the input gradient (`S dy`, with
  `transpose_a`). Fastest for large batches. No XLA kernel exists for it.
- `"gather"`: gather + multiply + segment sum, compiled with XLA as an inner
  `tf.function(jit_compile=True)` (Keras leaves model-level XLA off on CPU).
  Fastest for small batches; XLA-compatible everywhere.
- `"auto"`: `"gather"` when the number of rows is at most
  `AUTO_GATHER_MAX_ROWS`, else `"csr"` (decided statically when the row count is
  known, else with a `tf.cond`).

The value gradient `dvalues[k] = sum_b x[b, rows[k]] * dy[b, cols[k]]` (a
sampled dense-dense product) is the same for all kernels and runs under XLA.
"""

import tensorflow as tf
from tensorflow.python.ops.linalg.sparse import sparse_csr_matrix_ops

from keras_dctsparse.ops.transforms import dct_offset

SPARSE_KERNELS = ("auto", "csr", "gather")

# Row count at or below which "auto" picks the gather kernel. Chosen from the
# measurements in benchmarks/dense_layer.py (batch 1 vs batch 256).
AUTO_GATHER_MAX_ROWS = 16


@tf.function(jit_compile=True, reduce_retracing=True)
def _sampled_dot(x, dy, rows, cols):
    """`out[k] = sum_b x[b, rows[k]] * dy[b, cols[k]]`."""
    return tf.reduce_sum(
        tf.gather(x, rows, axis=1) * tf.gather(dy, cols, axis=1), axis=0
    )


@tf.function(jit_compile=True)
def _gather_segment_sum(x, values, gather_index, segment_index, num_segments):
    """`out[b, s] = sum_{k: segment_index[k] = s} x[b, gather_index[k]] * values[k]`."""
    contributions = tf.gather(x, gather_index, axis=1) * values
    summed = tf.math.unsorted_segment_sum(
        tf.transpose(contributions), segment_index, num_segments
    )
    return tf.transpose(summed)


def _gather_matmul(x, values, rows, cols, units):
    input_dim = x.shape[1]

    @tf.custom_gradient
    def matmul(x, values):
        y = _gather_segment_sum(x, values, rows, cols, units)

        def grad(dy):
            dx = _gather_segment_sum(dy, values, cols, rows, input_dim)
            return dx, _sampled_dot(x, dy, rows, cols)

        return y, grad

    return matmul(x, values)


def _csr_transposed(values, rows, cols, units, input_dim):
    """The CSR matrix of `S^T` (shape `(units, input_dim)`)."""
    # Column-major (col, row) pairs are the canonical order of S^T.
    indices = tf.cast(tf.stack([cols, rows], axis=1), tf.int64)
    return sparse_csr_matrix_ops.CSRSparseMatrix(
        tf.SparseTensor(indices, values, [units, input_dim])
    )


def _csr_matmul(x, values, rows, cols, units):
    input_dim = x.shape[1]

    @tf.custom_gradient
    def matmul(x, values):
        transposed = _csr_transposed(values, rows, cols, units, input_dim)
        y = sparse_csr_matrix_ops.matmul(transposed, tf.transpose(x))

        def grad(dy):
            # Rebuilt rather than captured: a CSR handle captured across a
            # tf.cond loses its static shape in the gradient graph.
            transposed = _csr_transposed(values, rows, cols, units, input_dim)
            dx = sparse_csr_matrix_ops.matmul(
                transposed, tf.transpose(dy), transpose_a=True
            )
            return tf.transpose(dx), _sampled_dot(x, dy, rows, cols)

        return tf.transpose(y), grad

    return matmul(x, values)


def _resolve_kernel(kernel, batch):
    if kernel not in SPARSE_KERNELS:
        raise ValueError(
            f"Argument `kernel` must be one of {SPARSE_KERNELS}; received "
            f"kernel={kernel!r}."
        )
    if kernel != "auto" or batch is None:
        return kernel
    return "gather" if batch <= AUTO_GATHER_MAX_ROWS else "csr"


@tf.function(jit_compile=True)
def _fused_offset_gather(x, alpha, values, rows, cols, units):
    # One XLA cluster for the whole small-batch layer: per-op dispatch costs
    # more than the arithmetic here.
    return alpha * dct_offset(x, units) + _gather_matmul(x, values, rows, cols, units)


@tf.function
def _offset_csr(x, alpha, values, rows, cols, units):
    # A function of its own: inside a tf.cond branch, the custom gradient of an
    # inlined CSR product loses its captured input.
    return alpha * dct_offset(x, units) + _csr_matmul(x, values, rows, cols, units)


def offset_sparse_matmul(x, alpha, values, rows, cols, units, kernel="auto"):
    """Computes `alpha * D x + x @ S`: the DCT offset plus the sparse part.

    Same arguments as `sparse_matmul`, plus `alpha`, a scalar tensor of the
    dtype of `x`. With the gather kernel the transform and the sparse product
    run as one XLA cluster (fastest for small batches); with the CSR kernel
    the transform is `tf.signal.dct` next to the CSR product.

    Returns:
        Tensor of shape `(batch, units)`.

    Example:

    >>> y = offset_sparse_matmul(tf.ones((1, 4)), tf.constant(1.0),
    ...                          tf.constant([0.0]), [0], [0], 4)
    >>> [round(v, 4) for v in y.numpy()[0].tolist()]
    [2.0, 0.0, 0.0, 0.0]
    """
    chosen = _resolve_kernel(kernel, x.shape[0])
    rows = tf.convert_to_tensor(rows, tf.int32)
    cols = tf.convert_to_tensor(cols, tf.int32)
    if chosen == "gather":
        return _fused_offset_gather(x, alpha, values, rows, cols, units)
    if chosen == "csr":
        return _offset_csr(x, alpha, values, rows, cols, units)
    return tf.cond(
        tf.shape(x)[0] <= AUTO_GATHER_MAX_ROWS,
        lambda: _fused_offset_gather(x, alpha, values, rows, cols, units),
        lambda: _offset_csr(x, alpha, values, rows, cols, units),
    )


def sparse_matmul(x, values, rows, cols, units, kernel="auto"):
    """Computes `x @ S` for a sparse `(n, units)` kernel `S` given by its nonzeros.

    Args:
        x: float32 or float64 tensor of shape `(batch, n)`, static `n`.
        values: Tensor of shape `(nnz,)`, same dtype as `x`.
        rows: int32 tensor `(nnz,)`, input index of each nonzero.
        cols: int32 tensor `(nnz,)`, output index of each nonzero. The pairs
            must be sorted by `cols`, then `rows`, without duplicates.
        units: Number of outputs `m` (Python int).
        kernel: One of `SPARSE_KERNELS`.

    Returns:
        Tensor of shape `(batch, units)`.

    Raises:
        ValueError: for an unknown `kernel`.

    Example:

    >>> x = tf.ones((2, 3))
    >>> y = sparse_matmul(x, tf.constant([2.0]), tf.constant([1]), tf.constant([0]), 2)
    >>> y.numpy().tolist()
    [[2.0, 0.0], [2.0, 0.0]]
    """
    chosen = _resolve_kernel(kernel, x.shape[0])
    if chosen == "csr":
        return _csr_matmul(x, values, rows, cols, units)
    if chosen == "gather":
        return _gather_matmul(x, values, rows, cols, units)
    return tf.cond(
        tf.shape(x)[0] <= AUTO_GATHER_MAX_ROWS,
        lambda: _gather_matmul(x, values, rows, cols, units),
        lambda: _csr_matmul(x, values, rows, cols, units),
    )
