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
