"""The compiled ops of `keras_dctsparse/native/src/dense_ops.cc` against scipy and numpy.

Every op, on fresh random inputs: the DCT-II/III of lengths that take every code
path of the FFT (radix 4, 2, 3, direct odd primes, Bluestein), and the products
`alpha * D x + x @ S`, `alpha * D^T dy + dy @ S^T` and the sampled `x^T dy`, at
batch 1 (the row path), below, at and above one tile of rows, with and without the
offset, float32 and float64. Errors are bounded by the float error of the sum
(`tol * sum of |terms|`), so any wrong term fails.
"""

import numpy as np
import pytest
import scipy.fft
import tensorflow as tf

from keras_dctsparse.native import library
from numpy_reference import dct_block
from numpy_reference import random_sparse_problem

pytestmark = pytest.mark.skipif(
    not library.available(), reason=f"native kernels unavailable: {library.unavailable_reason()}"
)

TOLERANCE = {np.float32: 3e-6, np.float64: 1e-13}
# Lengths: 1-2 trivial, powers of two (radix 4 and 2), 3/5/7 radices, direct primes
# (67 is the largest), Bluestein (71, 139, 257 and products with them), LeNet sizes.
LENGTHS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16, 17, 30, 49, 64, 67, 71, 100, 101, 128,
           134, 139, 300, 392, 514, 771, 784, 1000, 4096]


def ops():
    return library.load()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("length", LENGTHS)
def test_dct2_and_dct3_match_scipy(length, dtype):
    rng = np.random.default_rng()
    for batch in (1, 3, 17):
        x = rng.standard_normal((batch, length)).astype(dtype)
        forward = ops().dct_sparse_offset(x, units=length).numpy()
        inverse = ops().dct_sparse_offset_transpose(x, input_dim=length).numpy()
        want_forward = scipy.fft.dct(x.astype(np.float64), type=2, norm="ortho", axis=1)
        want_inverse = scipy.fft.dct(x.astype(np.float64), type=3, norm="ortho", axis=1)
        # Each coefficient is a sum of |x|-weighted terms; bound by the row's l1 norm.
        bound = TOLERANCE[dtype] * np.abs(x).sum(axis=1, keepdims=True) * np.log2(2 * length)
        assert np.all(np.abs(forward - want_forward) <= bound)
        assert np.all(np.abs(inverse - want_inverse) <= bound)


@pytest.mark.parametrize("n, m", [(784, 300), (300, 784), (5, 3), (3, 5), (100, 10),
                                  (1, 4), (4, 1), (1, 1)])
def test_offset_is_the_top_left_dct_block(n, m):
    rng = np.random.default_rng()
    block = dct_block(m, n)
    for batch in (1, 20):
        x = rng.standard_normal((batch, n)).astype(np.float32)
        dy = rng.standard_normal((batch, m)).astype(np.float32)
        np.testing.assert_allclose(ops().dct_sparse_offset(x, units=m).numpy(), x @ block.T,
                                   atol=1e-5)
        np.testing.assert_allclose(
            ops().dct_sparse_offset_transpose(dy, input_dim=n).numpy(), dy @ block, atol=1e-5
        )


def _within(actual, want, magnitude, dtype):
    bound = TOLERANCE[dtype] * 8 * (magnitude + np.finfo(np.float64).tiny)
    return np.all(np.abs(actual - want) <= bound)


PRODUCT_SHAPES = [(7, 5, 1), (7, 5, 35), (64, 48, 300), (300, 100, 887), (33, 1000, 5000),
                  (1000, 33, 5000), (1, 9, 4), (9, 1, 4)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_offset", [True, False])
@pytest.mark.parametrize("n, m, nnz", PRODUCT_SHAPES)
def test_products_and_gradients_match_numpy(n, m, nnz, with_offset, dtype):
    rng = np.random.default_rng()
    lanes = library.lane_count(dtype)  # 16 / 8 with AVX-512, 8 / 4 with AVX2
    # Batches of 1 to 9 tiles: the products take tiles in groups of up to 4, no more than
    # leave one group per thread where S stays in cache (7 tiles: 3 + 3 + 1, 9: 4 + 4 + 1).
    for batch in (1, 2, lanes - 1, lanes, lanes + 1, 3 * lanes + 5, 6 * lanes + 3,
                  8 * lanes + 1):
        rows, cols, values, dense, x, dy = random_sparse_problem(n, m, nnz, batch, rng)
        alpha = 0.7
        block = dct_block(m, n) if with_offset else np.zeros((m, n))
        kernel = dense + alpha * block.T
        # Rounding errors scale with the terms' sizes, not with their (possibly cancelled) sum.
        abs_kernel = np.abs(dense) + alpha * np.abs(block.T)
        y, offset = ops().dct_sparse_matmul(
            x.astype(dtype), dtype(alpha), values.astype(dtype), np.stack([rows, cols]), units=m,
            with_offset=with_offset,
        )
        assert _within(y.numpy(), x @ kernel, np.abs(x) @ abs_kernel, dtype)
        if with_offset:
            assert _within(offset.numpy(), x @ block.T, np.abs(x) @ np.abs(block.T), dtype)
        else:
            assert offset.shape == (0, 0)
        dx = ops().dct_sparse_matmul_input_grad(
            dy.astype(dtype), dtype(alpha), values.astype(dtype), np.stack([rows, cols]), input_dim=n,
            with_offset=with_offset,
        )
        assert _within(dx.numpy(), dy @ kernel.T, np.abs(dy) @ abs_kernel.T, dtype)
        dvalues = ops().dct_sparse_matmul_value_grad(x.astype(dtype), dy.astype(dtype),
                                                     np.stack([rows, cols]))
        want = (x.T @ dy)[rows, cols]
        assert _within(dvalues.numpy(), want, (np.abs(x).T @ np.abs(dy))[rows, cols], dtype)


# 5 tiles of 16 rows with AVX-512 (9 of 8 with AVX2): in groups of 2 + 2 + 1 where S stays in cache (one group per thread
# at least) or where a group's tiles would outgrow the cache budget (6000 inputs, 384 KiB
# per tile); 4 + 1 where S (8.8 MB) streams from memory.
@pytest.mark.parametrize("n, m, nnz", [(2048, 1536, 150_000), (6000, 40, 3000),
                                       (2048, 2048, 1_100_000)])
def test_large_layer_over_many_tiles_and_threads(n, m, nnz):
    rng = np.random.default_rng()
    rows, cols, values, dense, x, dy = random_sparse_problem(n, m, nnz, 70, rng)
    alpha = -0.3
    block = dct_block(m, n)
    kernel = dense + alpha * block.T
    abs_kernel = np.abs(dense) + abs(alpha) * np.abs(block.T)
    y, _ = ops().dct_sparse_matmul(x.astype(np.float32), np.float32(alpha),
                                   values.astype(np.float32), np.stack([rows, cols]), units=m,
                                   with_offset=True)
    assert _within(y.numpy(), x @ kernel, np.abs(x) @ abs_kernel, np.float32)
    dx = ops().dct_sparse_matmul_input_grad(dy.astype(np.float32), np.float32(alpha),
                                            values.astype(np.float32), np.stack([rows, cols]),
                                            input_dim=n, with_offset=True)
    assert _within(dx.numpy(), dy @ kernel.T, np.abs(dy) @ abs_kernel.T, np.float32)


def test_empty_batch_and_no_nonzeros():
    empty = np.zeros((0, 6), np.float32)
    y, offset = ops().dct_sparse_matmul(empty, np.float32(1), np.ones(2, np.float32),
                                        np.array([[0, 3], [1, 1]], np.int32),
                                        units=4, with_offset=True)
    assert y.shape == (0, 4) and offset.shape == (0, 4)
    x = np.random.default_rng().standard_normal((3, 6)).astype(np.float32)
    y, _ = ops().dct_sparse_matmul(x, np.float32(1), np.zeros(0, np.float32),
                                   np.zeros((2, 0), np.int32), units=4, with_offset=True)
    np.testing.assert_allclose(y.numpy(), x @ dct_block(4, 6).T, atol=1e-5)
    dvalues = ops().dct_sparse_matmul_value_grad(empty, np.zeros((0, 4), np.float32),
                                                 np.array([[0], [2]], np.int32))
    assert dvalues.numpy().tolist() == [0.0]


@pytest.mark.parametrize("batch", [1, 20])
def test_rows_out_of_range_are_an_error_not_a_read(batch):
    x = np.ones((batch, 3), np.float32)
    dy = np.ones((batch, 2), np.float32)
    for bad_row in (3, -1, 2**31 - 1):
        positions = np.array([[0, bad_row], [0, 1]], np.int32)
        message = r"positions\[0\] \(rows\) must be in \[0, 3\)"
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            ops().dct_sparse_matmul(x, np.float32(1), np.ones(2, np.float32), positions,
                                    units=2, with_offset=False)
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            ops().dct_sparse_matmul_input_grad(dy, np.float32(1), np.ones(2, np.float32),
                                               positions, input_dim=3, with_offset=True)
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            ops().dct_sparse_matmul_value_grad(x, dy, positions)


def test_columns_out_of_range_and_bad_shapes_are_errors():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"positions\[1\] \(columns\) must be sorted and in"):
        ops().dct_sparse_matmul(x, np.float32(1), np.ones(1, np.float32),
                                np.array([[0], [2]], np.int32), units=2, with_offset=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"values must be a vector"):
        ops().dct_sparse_matmul(x, np.float32(1), np.ones(2, np.float32),
                                np.array([[0], [0]], np.int32), units=2, with_offset=False)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=r"rank 2|\(2, nnz\)"):
        ops().dct_sparse_matmul(x, np.float32(1), np.ones(2, np.float32),
                                np.array([0, 0], np.int32), units=2, with_offset=False)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="rank 2|matrix"):
        ops().dct_sparse_offset(np.ones(3, np.float32), units=2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_densify_and_gather_transposed(dtype):
    rng = np.random.default_rng()
    for n, m, nnz in [(7, 5, 1), (300, 100, 887), (64, 48, 3072)]:
        rows, cols, values, dense, _, _ = random_sparse_problem(n, m, nnz, 1, rng)
        positions = np.stack([rows, cols])
        transposed = ops().dct_sparse_densify(values.astype(dtype), positions, input_dim=n,
                                              units=m).numpy()
        np.testing.assert_array_equal(transposed, dense.T.astype(dtype))
        gradient = rng.standard_normal((m, n)).astype(dtype)
        np.testing.assert_array_equal(
            ops().dct_sparse_gather_transposed(gradient, positions).numpy(),
            gradient[cols, rows])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"positions\[0\] \(rows\)"):
        ops().dct_sparse_densify(np.ones(1, np.float32), np.array([[9], [0]], np.int32),
                                 input_dim=3, units=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="inside the"):
        ops().dct_sparse_gather_transposed(np.ones((2, 3), np.float32),
                                           np.array([[0], [2]], np.int32))
