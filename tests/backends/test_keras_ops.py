"""`keras_dctsparse.ops.keras_ops` (the non-TF backends' math) against numpy/scipy, on the
active backend (its functions are plain `keras.ops`, so they run under TensorFlow too)."""

import doctest

import keras
import numpy as np
import pytest
import scipy.fft

from keras_dctsparse.ops import keras_ops
from layer_reference import assert_close
from layer_reference import to_numpy
from numpy_reference import dct_block
from numpy_reference import im2col


@pytest.mark.parametrize("length", [2, 3, 4, 5, 8, 17, 100, 257, 1000])
def test_dct2_ortho_matches_scipy_any_length(length):
    x = np.random.default_rng().standard_normal((3, length)).astype(np.float32)
    y = to_numpy(keras_ops.dct2_ortho(keras.ops.convert_to_tensor(x)))
    assert_close(y, scipy.fft.dct(x.astype(np.float64), type=2, norm="ortho", axis=-1), 1e-5)


@pytest.mark.parametrize("n, units", [(20, 7), (7, 20), (1, 1), (1, 5), (5, 1), (300, 100)])
def test_dct_offset_is_the_top_left_block(n, units):
    x = np.random.default_rng().standard_normal((2, 3, n)).astype(np.float32)
    y = to_numpy(keras_ops.dct_offset(keras.ops.convert_to_tensor(x), units))
    assert_close(y, x @ dct_block(units, n).T, 1e-5)


@pytest.mark.parametrize("rows, cols", [(3, 5), (5, 3), (1, 1), (40, 40)])
def test_dct_block_matches_scipy(rows, cols):
    assert_close(to_numpy(keras_ops.dct_block(rows, cols)), dct_block(rows, cols), 1e-6)


def test_dct_block_large_n_reduces_the_angle_exactly():
    # N = 40000 takes the int64 (numpy) angle path; compare a few rows with float64 numpy.
    rows, cols = 3, 40_000
    block = to_numpy(keras_ops.dct_block(rows, cols))
    k = np.arange(rows)[:, None]
    j = np.arange(cols)[None, :]
    expected = np.cos(np.pi * ((k * (2 * j + 1)) % (4 * cols)) / (2 * cols)) * np.where(
        k == 0, np.sqrt(1 / cols), np.sqrt(2 / cols)
    )
    assert_close(block, expected, 1e-5)


def test_conv_offset_kernels_match_numpy():
    # Kd[..., ch, o] = C_N[o, tap * c_in_g + ch]; N counts all output channels.
    kernel = to_numpy(keras_ops.conv_offset_kernel((3, 2), 6, 4, groups=2))
    assert kernel.shape == (3, 2, 3, 4)
    assert_close(kernel.reshape(18, 4), dct_block(4, 18).T, 1e-6)
    depthwise = to_numpy(keras_ops.depthwise_offset_kernel((3, 3), 4, 3))
    assert depthwise.shape == (3, 3, 4, 3)
    # K[i, j, ch, m] = C_N[ch * dm + m, i * kw + j], N = max(9, 12).
    assert_close(depthwise.reshape(9, 12), dct_block(12, 9).T, 1e-6)


@pytest.mark.parametrize("kernel", ["auto", "gather", "materialized"])
def test_sparse_matmul_and_scatter_kernel(kernel):
    rng = np.random.default_rng()
    n, m, nnz = 30, 11, 40
    flat = rng.choice(n * m, nnz, replace=False)
    rows, cols = flat // m, flat % m
    values = rng.standard_normal(nnz).astype(np.float32)
    dense = np.zeros((n, m))
    dense[rows, cols] = values
    x = rng.standard_normal((5, n)).astype(np.float32)
    tensors = [keras.ops.convert_to_tensor(a) for a in (x, values, rows.astype(np.int32),
                                                          cols.astype(np.int32))]
    assert_close(to_numpy(keras_ops.sparse_matmul(*tensors, m, kernel=kernel)), x @ dense)
    scattered = keras_ops.scatter_kernel(*tensors[1:], (5, 6, m))
    np.testing.assert_array_equal(to_numpy(scattered), dense.reshape(5, 6, m).astype(np.float32))


def test_sparse_matmul_refuses_unknown_kernel():
    x = keras.ops.ones((1, 2))
    with pytest.raises(ValueError, match="Argument `kernel` must be one of"):
        keras_ops.sparse_matmul(x, keras.ops.ones((1,)), np.array([0]), np.array([0]), 1,
                                kernel="csr")


def test_choose_kernel_by_cost():
    assert keras_ops.choose_kernel(100_000, 100_000, 10, batch=4) == "gather"
    assert keras_ops.choose_kernel(256, 256, 65536, batch=256) == "materialized"


@pytest.mark.parametrize("shape", [(), (7,), (5, 3), (3, 3, 4, 8), (5, 2, 6)])
def test_compute_fans_as_keras_variance_scaling(shape):
    fan_in, fan_out = keras_ops.compute_fans(shape)
    # Keras: He-normal's stddev is sqrt(2 / fan_in); check through the public initializer.
    if len(shape) >= 1 and np.prod(shape) > 50:
        values = to_numpy(keras.initializers.VarianceScaling(
            1.0, "fan_in", "untruncated_normal", seed=0)(shape))
        assert abs(values.std() - np.sqrt(1.0 / fan_in)) < 0.2 * np.sqrt(1.0 / fan_in)
    if len(shape) == 0:
        expected = (1, 1)
    elif len(shape) == 1:
        expected = (shape[0], shape[0])
    else:
        receptive = int(np.prod(shape[:-2]))
        expected = (shape[-2] * receptive, shape[-1] * receptive)
    assert (fan_in, fan_out) == tuple(float(v) for v in expected)


def test_docstring_examples():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(keras_ops, globs={"keras": keras, "np": np, **vars(keras_ops)}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 5, runner.summarize()


def test_linear_vjp_of_a_matmul_is_x_transpose_times_the_cotangent():
    rng = np.random.default_rng()
    x = rng.standard_normal((5, 7)).astype("float32")
    cotangent = rng.standard_normal((5, 3)).astype("float32")
    gradient = keras_ops.linear_vjp(
        lambda k: keras.ops.matmul(keras.ops.convert_to_tensor(x), k), (7, 3), "float32",
        keras.ops.convert_to_tensor(cotangent),
    )
    assert_close(to_numpy(gradient), x.T @ cotangent)


@pytest.mark.parametrize("padding, strides", [("same", (1, 1)), ("valid", (2, 1))])
def test_linear_vjp_of_a_conv_is_the_kernel_gradient(padding, strides):
    # The gradient of sum(conv(x, k) * g) w.r.t. k: im2col(x)^T g, against numpy.
    rng = np.random.default_rng()
    x = rng.standard_normal((2, 7, 6, 3)).astype("float32")
    out_shape = to_numpy(keras_ops.convolve(x, np.zeros((3, 3, 3, 4), "float32"), strides,
                                            padding, (1, 1))).shape
    cotangent = rng.standard_normal(out_shape).astype("float32")
    gradient = keras_ops.linear_vjp(
        lambda k: keras_ops.convolve(keras.ops.convert_to_tensor(x), k, strides, padding,
                                     (1, 1)),
        (3, 3, 3, 4), "float32", keras.ops.convert_to_tensor(cotangent),
    )
    patches = im2col(x.astype(np.float64), (3, 3), strides, padding, (1, 1))
    expected = patches.reshape(-1, 27).T @ cotangent.reshape(-1, 4)
    assert_close(to_numpy(gradient).reshape(27, 4), expected)
