"""The native dense kernel: `alpha * D x + x @ S` by the compiled ops of `keras_dctsparse.native`.

One op computes the forward (the fast DCT and the sparse product in one pass over
tiles of batch rows, returning `D x` as well); the gradient is two ops, so that
TensorFlow prunes the input gradient where nothing reads it (a network's first
layer):

- `dx = alpha * D^T dy + dy @ S^T` (`DctSparseMatmulInputGrad`);
- `dvalues = (x^T dy)` at the positions (`DctSparseMatmulValueGrad`), and
  `dalpha = sum(dy * D x)`.

These functions always run the native ops; whether a layer may use them (the
graph is not saved for serving, the library is built) is decided by the caller
(`keras_dctsparse.ops.sparse_matmul`, `keras_dctsparse.native.policy`).
"""

import tensorflow as tf
# No public API tells at trace time whether a gradient tape is active or records tensors.
from tensorflow.python.eager import record

from keras_dctsparse.native import library

__all__ = [
    "native_matmul",
    "native_offset_matmul",
    "native_dct_offset",
    "records_gradient",
    "any_tape_active",
]


def records_gradient(*tensors):
    """Whether a gradient tape records `tensors` now (decided when a call is traced).

    Example:

    >>> records_gradient(tf.ones(1))
    False
    """
    return bool(record.should_record_backprop([tf.convert_to_tensor(t) for t in tensors]))


def any_tape_active():
    """Whether any gradient tape is active now (Keras's train step: yes; predict: no).

    Example:

    >>> any_tape_active()
    False
    """
    return bool(record.could_possibly_record())


def _product(x, values, positions, units, alpha):
    ops = library.load()
    input_dim = int(x.shape[1])
    with_offset = alpha is not None
    scale = alpha if with_offset else tf.zeros((), x.dtype)
    # alpha's gradient needs D x: kept when a tape records this call, else (inference)
    # not written out, and recomputed should a gradient be asked for after all.
    keep_offset = with_offset and records_gradient(x, scale, values)

    @tf.custom_gradient
    def product(x, scale, values):
        y, offset = ops.dct_sparse_matmul(
            x, scale, values, positions, units=units, with_offset=with_offset,
            offset_output=keep_offset,
        )

        def grad(dy):
            nonlocal offset
            if with_offset and not keep_offset:
                offset = ops.dct_sparse_offset(x, units=units)
            dx = ops.dct_sparse_matmul_input_grad(
                dy, scale, values, positions, input_dim=input_dim, with_offset=with_offset
            )
            dvalues = ops.dct_sparse_matmul_value_grad(x, dy, positions)
            dscale = tf.reduce_sum(dy * offset) if with_offset else tf.zeros_like(scale)
            return dx, dscale, dvalues

        return y, grad

    return product(x, scale, values)


def native_matmul(x, values, positions, units):
    """`x @ S` by the native ops.

    Args:
        x: float32/float64 `(batch, n)`, static `n`.
        values: `(nnz,)` values of `S`, the dtype of `x`.
        positions: `(2, nnz)` int32: rows, then columns, sorted by column then row.
        units: Number of outputs `m`.

    Returns:
        `(batch, units)`, differentiable in `x` and `values`.

    Example:

    >>> y = native_matmul(tf.ones((1, 3)), tf.constant([2.0]), tf.constant([[1], [0]]), 2)
    >>> y.numpy().tolist()
    [[2.0, 0.0]]
    """
    return _product(x, values, positions, units, None)


def native_offset_matmul(x, alpha, values, positions, units):
    """`alpha * D x + x @ S` by the native ops (arguments of `native_matmul`, plus `alpha`).

    Example:

    >>> y = native_offset_matmul(tf.ones((1, 4)), tf.constant(1.0), tf.constant([0.0]),
    ...                          tf.constant([[0], [0]]), 4)
    >>> [round(v, 4) + 0.0 for v in y.numpy()[0].tolist()]
    [2.0, 0.0, 0.0, 0.0]
    """
    return _product(x, values, positions, units, alpha)


def native_dct_offset(x, units):
    """`D x` for rank-2 `x` by the native DCT, with the native DCT-III as its gradient.

    Example:

    >>> y = native_dct_offset(tf.ones((1, 4)), 2)
    >>> [round(v, 4) + 0.0 for v in y.numpy()[0].tolist()]
    [2.0, 0.0]
    """
    ops = library.load()
    input_dim = int(x.shape[1])

    @tf.custom_gradient
    def offset(x):
        def grad(dy):
            return ops.dct_sparse_offset_transpose(dy, input_dim=input_dim)

        return ops.dct_sparse_offset(x, units=units), grad

    return offset(x)
