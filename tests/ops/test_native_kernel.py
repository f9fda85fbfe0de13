"""`alpha * Kd + S` by the native op (`ops.native_kernel`) and its gradient, against numpy."""

import numpy as np
import pytest
import tensorflow as tf

from keras_dctsparse.native import library
from keras_dctsparse.ops import native_kernel
from numpy_reference import random_sparse_problem

pytestmark = pytest.mark.skipif(
    not library.available(), reason=f"native kernels unavailable: {library.unavailable_reason()}"
)


@pytest.mark.parametrize(
    "n, m, nnz",
    [
        (7, 3, 21),  # every entry
        (40, 7, 50),  # one strip narrower than 16 columns
        (100, 40, 1_000),  # 16 x 16 blocks, 4 rows beyond them, a strip of 8 columns
        (576, 256, 14_745),  # ~10%: several strips per thread
        (4608, 512, 700_000),  # 30% of a 3x3x512x512 kernel
        (300, 1, 30),  # one column
        (9, 5, 0),  # no nonzero
    ],
)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_kernel_and_gradients_match_numpy(n, m, nnz, dtype):
    rng = np.random.default_rng()
    rows, cols, values, dense, _, _ = random_sparse_problem(n, m, nnz, 1, rng)
    base = rng.standard_normal((n, m))
    dkernel = rng.standard_normal((n, m))
    alpha = tf.constant(0.7, dtype)
    values_t = tf.constant(values, dtype)
    with tf.GradientTape() as tape:
        tape.watch([alpha, values_t])
        kernel = native_kernel.native_scatter_kernel(
            tf.constant(base, dtype), alpha, values_t, tf.constant(np.stack([rows, cols]))
        )
        loss = tf.reduce_sum(kernel * tf.constant(dkernel, dtype))
    dalpha, dvalues = tape.gradient(loss, [alpha, values_t])
    tolerance = 1e-6 if dtype == tf.float32 else 1e-12
    np.testing.assert_allclose(kernel.numpy(), 0.7 * base + dense, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(dvalues.numpy(), dkernel[rows, cols], rtol=tolerance)
    expected_dalpha = np.sum(dkernel * base)
    np.testing.assert_allclose(
        dalpha.numpy(), expected_dalpha, rtol=tolerance * 10,
        atol=tolerance * np.sum(np.abs(dkernel * base)),
    )


def test_rows_in_any_order_within_a_column_are_placed():
    # The op places a column's values in a scratch column by column, so their order
    # within the column does not matter (the layers keep them ascending all the same).
    # (A repeated position adds up.)
    rows, cols = np.array([40, 3, 3, 0, 63]), np.array([0, 0, 0, 1, 17])
    values = np.array([1.0, 2.0, 5.0, 3.0, 4.0], np.float32)
    base = np.random.default_rng().standard_normal((64, 40)).astype(np.float32)
    kernel = native_kernel.native_scatter_kernel(tf.constant(base), 0.5, tf.constant(values),
                                                 tf.constant(np.stack([rows, cols]), tf.int32))
    expected = 0.5 * base
    np.add.at(expected, (rows, cols), values)
    np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-6)


def test_positions_out_of_range_are_op_errors():
    base = tf.zeros((6, 2))
    values = tf.ones(3)
    # A row beyond the kernel.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"in \[0, 6\)"):
        native_kernel.native_scatter_kernel(base, 1.0, values, tf.constant([[0, 6, 1], [0, 0, 1]]))
    # A column beyond the kernel.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"columns"):
        native_kernel.native_scatter_kernel(base, 1.0, values, tf.constant([[0, 1, 1], [0, 0, 2]]))
    ops = library.load()
    with pytest.raises(tf.errors.InvalidArgumentError, match="base must have the shape"):
        ops.dct_sparse_scatter_kernel_grad(tf.zeros((6, 2)), tf.zeros((2, 6)),
                                           tf.constant([[0], [0]]))


def test_native_scatter_pays_only_for_large_kernels_below_half_density():
    large = native_kernel.NATIVE_SCATTER_MIN_ENTRIES
    assert native_kernel.native_scatter_pays(large, large // 10)
    assert native_kernel.native_scatter_pays(large, large // 2)
    assert not native_kernel.native_scatter_pays(large, large // 2 + 1)
    assert not native_kernel.native_scatter_pays(large - 1, 10)
