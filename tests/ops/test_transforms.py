import numpy as np
import pytest
import scipy.fft
import tensorflow as tf

from keras_dctsparse.ops import transforms


def scipy_offset(x, units):
    """Reference: first `units` ortho DCT-II coefficients of x zero-padded to max(n, units)."""
    n = x.shape[-1]
    length = max(n, units)
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - n)])
    return scipy.fft.dct(padded, type=2, norm="ortho", axis=-1)[..., :units]


@pytest.mark.parametrize(
    "n, m", [(20, 7), (7, 20), (16, 16), (1, 5), (5, 1), (1, 1), (784, 300), (10, 1000)]
)
def test_dct_offset_matches_scipy(n, m):
    rng = np.random.default_rng()
    x = rng.standard_normal((3, 4, n))
    expected = scipy_offset(x, m)
    actual = transforms.dct_offset(tf.constant(x, tf.float32), m).numpy()
    assert actual.shape == (3, 4, m)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_dct_offset_float64_is_exact():
    rng = np.random.default_rng()
    x = rng.standard_normal((5, 300))
    actual = transforms.dct_offset(tf.constant(x, tf.float64), 100)
    assert actual.dtype == tf.float64
    np.testing.assert_allclose(actual.numpy(), scipy_offset(x, 100), atol=1e-12)


def test_dct_offset_rejects_undefined_last_dim():
    @tf.function(input_signature=[tf.TensorSpec([2, None])])
    def apply(x):
        return transforms.dct_offset(x, 3)

    with pytest.raises(ValueError, match="static last dimension"):
        apply.get_concrete_function()


@pytest.mark.parametrize("rows, cols", [(7, 20), (20, 7), (12, 12), (1, 4)])
def test_dct_matrix_matches_scipy_and_is_orthonormal(rows, cols):
    length = max(rows, cols)
    expected = scipy.fft.dct(np.eye(length), norm="ortho", axis=0)[:rows, :cols]
    matrix = transforms.dct_matrix(rows, cols)
    np.testing.assert_allclose(matrix, expected, atol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(matrix, compute_uv=False), 1.0, atol=1e-12)


def test_dct_length():
    assert transforms.dct_length(784, 300) == 784
    assert transforms.dct_length(10, 300) == 300


@pytest.mark.parametrize("length", [2, 3, 4, 5, 8, 9, 64, 101, 1000])
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_makhoul_dct2_and_dct3_match_scipy(length, dtype):
    x = np.random.default_rng().standard_normal((3, length))
    tolerance = 2e-5 if dtype == tf.float32 else 1e-12
    forward = transforms.dct2_ortho(tf.constant(x, dtype)).numpy()
    np.testing.assert_allclose(
        forward, scipy.fft.dct(x, type=2, norm="ortho"), atol=tolerance * np.abs(x).sum()
    )
    inverse = transforms.dct3_ortho(tf.constant(x, dtype)).numpy()
    np.testing.assert_allclose(
        inverse, scipy.fft.dct(x, type=3, norm="ortho"), atol=tolerance * np.abs(x).sum()
    )


@pytest.mark.parametrize("n, m", [(20, 7), (7, 20), (16, 16), (1, 5), (5, 1), (33, 1000)])
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_dct_offset_gradient_is_the_transpose(n, m, dtype):
    # d/dx sum(dy * D x) = D^T dy, with D the numpy (m x n) block; rank 3 input.
    rng = np.random.default_rng()
    x = tf.constant(rng.standard_normal((2, 3, n)), dtype)
    dy = rng.standard_normal((2, 3, m))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(transforms.dct_offset(x, m) * tf.constant(dy, dtype))
    dx = tape.gradient(loss, x).numpy()
    tolerance = 2e-5 if dtype == tf.float32 else 1e-12
    np.testing.assert_allclose(
        dx, dy @ transforms.dct_matrix(m, n), atol=tolerance * np.abs(dy).sum(axis=-1).max()
    )


@pytest.mark.parametrize("n, m", [(20, 7), (7, 20), (16, 16), (1, 5), (5, 1), (1, 1), (784, 300)])
def test_dct_offset_transpose_matches_scipy(n, m):
    # D^T dy with D the (m x n) top-left block of scipy's orthonormal DCT-II matrix.
    length = max(n, m)
    block = scipy.fft.dct(np.eye(length), type=2, norm="ortho", axis=0)[:m, :n]
    dy = np.random.default_rng().standard_normal((4, m))
    got = transforms.dct_offset_transpose(tf.constant(dy, tf.float64), n).numpy()
    np.testing.assert_allclose(got, dy @ block, atol=1e-12 * np.abs(dy).sum(axis=-1).max())


def test_dct_offset_inside_xla_and_under_a_dynamic_batch():
    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([None, 12], tf.float32)])
    def apply(x):
        return transforms.dct_offset(x, 7)

    x = np.random.default_rng().standard_normal((4, 12))
    np.testing.assert_allclose(
        apply(tf.constant(x, tf.float32)).numpy(), scipy_offset(x, 7), atol=1e-5
    )
