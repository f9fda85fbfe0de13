import numpy as np
import pytest
import tensorflow as tf

from keras_dctsparse.ops import sparse_matmul as sm
from keras_dctsparse.ops.support import sample_support


def random_problem(n, m, nnz, batch):
    rng = np.random.default_rng()
    rows, cols = sample_support((n, m), nnz, seed=int(rng.integers(1 << 31)))
    values = rng.standard_normal(nnz)
    dense = np.zeros((n, m))
    dense[rows, cols] = values
    x = rng.standard_normal((batch, n))
    dy = rng.standard_normal((batch, m))
    return rows.astype(np.int32), cols.astype(np.int32), values, dense, x, dy


def run(kernel, rows, cols, values, x, dy, m, dynamic_batch):
    n = x.shape[1]
    signature = [
        tf.TensorSpec([None if dynamic_batch else x.shape[0], n], tf.float32),
        tf.TensorSpec([len(values)], tf.float32),
    ]

    @tf.function(input_signature=signature)
    def forward_backward(x, values):
        with tf.GradientTape() as tape:
            tape.watch([x, values])
            y = sm.sparse_matmul(x, values, rows, cols, m, kernel=kernel)
            loss = tf.reduce_sum(y * dy)
        dx, dvalues = tape.gradient(loss, [x, values])
        return y, dx, dvalues

    return [
        t.numpy()
        for t in forward_backward(
            tf.constant(x, tf.float32), tf.constant(values, tf.float32)
        )
    ]


@pytest.mark.parametrize("kernel", sm.SPARSE_KERNELS)
@pytest.mark.parametrize("batch", [1, 5, 40])
@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_kernels_match_numpy_forward_and_backward(kernel, batch, dynamic_batch):
    n, m = 70, 45
    rows, cols, values, dense, x, dy = random_problem(n, m, 300, batch)
    y, dx, dvalues = run(kernel, rows, cols, values, x, dy, m, dynamic_batch)
    np.testing.assert_allclose(y, x @ dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dy @ dense.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dvalues, (x.T @ dy)[rows, cols], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["csr", "gather"])
def test_kernels_handle_empty_columns_and_rows(kernel):
    # Only one nonzero: most rows and columns of S are empty.
    rows = np.array([3], np.int32)
    cols = np.array([1], np.int32)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    y = sm.sparse_matmul(tf.constant(x), tf.constant([2.0]), rows, cols, 4, kernel=kernel)
    expected = np.zeros((2, 4), np.float32)
    expected[:, 1] = 2 * x[:, 3]
    np.testing.assert_array_equal(y.numpy(), expected)


def test_unknown_kernel_is_a_clear_error():
    with pytest.raises(ValueError, match="kernel='dense'"):
        sm.sparse_matmul(tf.ones((1, 2)), tf.ones(1), [0], [0], 2, kernel="dense")


@pytest.mark.parametrize("kernel", sm.SPARSE_KERNELS)
@pytest.mark.parametrize("batch", [3, 40])
def test_offset_sparse_matmul_matches_numpy_forward_and_backward(kernel, batch):
    import scipy.fft

    n, m = 33, 50
    rows, cols, values, dense, x, dy = random_problem(n, m, 200, batch)
    offset = scipy.fft.dct(np.eye(m), norm="ortho", axis=0)[:m, :n]  # D, (m x n)
    alpha = 0.6

    @tf.function(input_signature=[tf.TensorSpec([None, n]), tf.TensorSpec([200]),
                                  tf.TensorSpec([])])
    def forward_backward(x, values, alpha):
        with tf.GradientTape() as tape:
            tape.watch([x, values, alpha])
            y = sm.offset_sparse_matmul(x, alpha, values, rows, cols, m, kernel=kernel)
            loss = tf.reduce_sum(y * dy)
        return (y,) + tuple(tape.gradient(loss, [x, values, alpha]))

    y, dx, dvalues, dalpha = [
        t.numpy()
        for t in forward_backward(
            tf.constant(x, tf.float32), tf.constant(values, tf.float32), tf.constant(alpha)
        )
    ]
    kernel_matrix = dense + alpha * offset.T
    np.testing.assert_allclose(y, x @ kernel_matrix, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dy @ kernel_matrix.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dvalues, (x.T @ dy)[rows, cols], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dalpha, np.sum((x @ offset.T) * dy), rtol=1e-4)
