"""The effective conv kernel `alpha * Kd + S` in one native pass (`DctSparseScatterKernel`).

The fused conv path runs one dense convolution with a temporary kernel `alpha * Kd + S`
(`Kd` the DCT offset's kernel, `S` the nonzeros). Built from TensorFlow ops that takes a
scatter into zeros (written as `S^T` and transposed on large kernels), a scale and an
add: three to five passes over the kernel. The native op works in strips of 16 columns:
a strip's values are placed in a zeroed scratch that holds the strip column by column
(so a column's nonzeros land contiguously), then each kernel row's 64 bytes of the strip
are written once as `alpha * Kd` plus the scratch transposed (lanes x lanes blocks in
registers: 16 x 16 float32 with AVX-512, 8 x 8 with AVX2): one pass over the kernel. Its gradient op reads the kernel gradient once,
strip by strip, for both `alpha` (`sum(dK * Kd)`) and the values (from the transposed
strip, column by column).

Measured on the AVX-512 host (`alpha * Kd + S` and its gradient, median ms of interleaved
runs on 2 cores, `python benchmarks/native_parts.py`; the op before the strips, which scattered block of
rows by block of rows, took 10.1-10.2, 5.5-5.6 and 3.7-4.1 ms on 4608 x 512 and
1.3-2.1, 1.3-1.9 and 0.8 ms on 2304 x 256 in runs alternated with the strips' 5.4-5.9,
4.3-4.4, 3.4-3.7 and 1.0-1.1, 0.8, 0.6 ms):

| kernel matrix | density 1 | 0.3 | 0.1 |
|---|---|---|---|
| 4608 x 512, TensorFlow ops | 4.42 | 6.70 | 6.82 |
| 4608 x 512, native | 6.14 | 4.29 | 3.97 |
| 2304 x 256, TensorFlow ops | 0.78 | 1.49 | 0.91 |
| 2304 x 256, native | 0.96 | 0.77 | 0.67 |
| 1152 x 128, TensorFlow ops | 0.48 | 0.80 | 0.60 |
| 1152 x 128, native | 0.43 | 0.50 | 0.49 |
| 576 x 64, TensorFlow ops | 0.38 | 0.33 | 0.27 |
| 576 x 64, native | 0.35 | 0.33 | 0.33 |

At full density the TensorFlow ops need no scatter (the values are `S^T`), and small
kernels cost the launch of the thread pool: `native_scatter_pays` keeps them on
TensorFlow's ops.

Like every native op, these run only where `keras_dctsparse.native.policy` allows native
ops (the caller checks); the positions are the layers' `(2, nnz)` int32 tensor, sorted by
column, then row.
"""

import tensorflow as tf

from keras_dctsparse.native import library

__all__ = [
    "NATIVE_SCATTER_MIN_ENTRIES",
    "NATIVE_SCATTER_MAX_DENSITY",
    "native_scatter_pays",
    "native_scatter_kernel",
]

#: Kernels of fewer entries keep TensorFlow's ops (measured: no gain at 576 x 64).
NATIVE_SCATTER_MIN_ENTRIES = 1 << 17
#: Above this density TensorFlow's ops win (at density 1 they scatter nothing).
NATIVE_SCATTER_MAX_DENSITY = 0.5


def native_scatter_pays(entries, nnz):
    """Whether `native_scatter_kernel` beats TensorFlow's ops for a kernel of `entries`.

    Example:

    >>> native_scatter_pays(4608 * 512, 235_930), native_scatter_pays(4608 * 512, 4608 * 512)
    (True, False)
    >>> native_scatter_pays(576 * 64, 3_686)
    False
    """
    return entries >= NATIVE_SCATTER_MIN_ENTRIES and nnz <= NATIVE_SCATTER_MAX_DENSITY * entries


def native_scatter_kernel(base, alpha, values, positions):
    """`alpha * base + S` as a dense `(n, m)` matrix, with gradients for `alpha` and the values.

    Args:
        base: `(n, m)` matrix (the conv kernel's matrix view of `Kd`), treated as a
            constant: no gradient flows into it (the DCT offset is fixed).
        alpha: Scalar.
        values: `(nnz,)` values of `S`.
        positions: int32 `(2, nnz)`: rows in `[0, n)`, then columns in `[0, m)`, sorted
            by column, then row (the layers' order; an op error says so otherwise).

    Returns:
        A tensor of the shape and dtype of `base`.

    Example:

    >>> k = native_scatter_kernel(tf.ones((2, 2)), tf.constant(0.5), tf.constant([3.0]),
    ...                           tf.constant([[1], [0]]))
    >>> k.numpy().tolist()
    [[0.5, 0.5], [3.5, 0.5]]
    """
    ops = library.load()
    base = tf.stop_gradient(tf.convert_to_tensor(base))
    positions = tf.convert_to_tensor(positions, tf.int32)

    @tf.custom_gradient
    def build(alpha, values):
        kernel = ops.dct_sparse_scatter_kernel(base, alpha, values, positions)

        def grad(dkernel):
            dvalues, dalpha = ops.dct_sparse_scatter_kernel_grad(dkernel, base, positions)
            return tf.reshape(dalpha, tf.shape(alpha)), dvalues

        return kernel, grad

    return build(tf.convert_to_tensor(alpha, base.dtype), tf.convert_to_tensor(values, base.dtype))
