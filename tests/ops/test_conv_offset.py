"""Tests for keras_dctsparse.ops.conv_offset against an independent numpy/scipy reference."""

import math

import numpy as np
import pytest
import scipy.fft
import tensorflow as tf

from keras_dctsparse.ops import conv_offset as co
from numpy_reference import dct_block
from numpy_reference import im2col

RTOL = 1e-5


# ----------------------------------------------------------------------------------------------
# Independent reference: im2col (channel-fastest patches) + scipy ortho DCT-II
# ----------------------------------------------------------------------------------------------


def reference_offset(x, kernel_size, filters, strides=1, padding="valid", dilation=1, groups=1):
    """Float64 offset as the authors build it: output channel o (in group g) is coefficient o
    of the ortho DCT-II of group g's patch zero-padded to N = max(P, filters)."""
    rank = x.ndim - 2
    as_tuple = lambda v: (v,) * rank if isinstance(v, int) else tuple(v)
    kernel_size, strides, dilation = map(as_tuple, (kernel_size, strides, dilation))
    x = np.asarray(x, np.float64)
    c_in_g, c_out_g = x.shape[-1] // groups, filters // groups
    outputs = []
    for g in range(groups):
        patches = im2col(x[..., g * c_in_g:(g + 1) * c_in_g], kernel_size, strides, padding,
                         dilation)
        n = max(patches.shape[-1], filters)
        coefficients = scipy.fft.dct(patches, type=2, n=n, norm="ortho", axis=-1)
        outputs.append(coefficients[..., g * c_out_g:(g + 1) * c_out_g])
    return np.concatenate(outputs, axis=-1)


def assert_close(actual, expected, rtol=RTOL):
    """Max abs error relative to the reference's max magnitude."""
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape
    err = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def _input(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).standard_normal(shape), tf.float32)


# (input shape, kernel_size, filters, strides, padding, dilation)
UNGROUPED_CASES = {
    "1x1_cout<P": ((2, 5, 6, 6), 1, 4, 1, "valid", 1),
    "1x1_cout>P": ((2, 5, 6, 4), 1, 10, 1, "valid", 1),
    "3x3_same_cout<P": ((2, 7, 6, 3), 3, 8, 1, "same", 1),
    "3x3_valid_cout>P": ((2, 6, 7, 2), 3, 24, 1, "valid", 1),
    "3x3_stride2_same_odd": ((2, 7, 9, 4), 3, 6, 2, "same", 1),
    "3x3_stride2_valid": ((2, 8, 7, 3), 3, 5, 2, "valid", 1),
    "3x3_dilation2_same": ((1, 9, 8, 3), 3, 7, 1, "same", 2),
    "5x5_stride2_same": ((1, 9, 10, 2), 5, 12, 2, "same", 1),
    "5x5_cout>P": ((1, 8, 8, 1), 5, 30, 1, "same", 1),
    "3x5_strides1x2_same": ((1, 7, 9, 3), (3, 5), 6, (1, 2), "same", 1),
    "3x5_strides2x1_valid": ((1, 8, 9, 2), (3, 5), 6, (2, 1), "valid", 1),
    "conv1d_k3_stride2_same": ((2, 11, 4), 3, 5, 2, "same", 1),
    "conv1d_k5_dilation2_valid": ((2, 15, 2), 5, 16, 1, "valid", 2),
    "conv1d_k1": ((2, 6, 8), 1, 3, 1, "same", 1),
}

VARIANTS = {
    "direct": co.conv_offset_direct,
    "matmul": co.conv_offset_matmul,
    "fft": co.conv_offset_fft,
}


# ----------------------------------------------------------------------------------------------
# dct_block
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 5), (5, 3), (8, 8), (7, 40), (40, 7)])
def test_dct_block_matches_scipy(rows, cols):
    n = max(rows, cols)
    expected = scipy.fft.dct(np.eye(n), norm="ortho", axis=0)[:rows, :cols]
    assert_close(co.dct_block(rows, cols), expected, rtol=1e-6)
    assert co.dct_block(rows, cols, tf.float64).dtype == tf.float64
    np.testing.assert_allclose(co.dct_block(rows, cols, tf.float64), expected, atol=1e-14)


def test_angle_reduction_is_exact_for_large_n():
    n = 100_003
    k = np.array([1, n - 1, n - 2, 77_777], np.int64)
    j = np.array([n - 1, n - 1, 12_345, n - 5], np.int64)
    index = k * (2 * j + 1)  # up to 2e10, far beyond float32's exact integers
    cos, sin = co.cos_sin_half_turns(tf.constant(index), n, tf.float32)
    angle = np.pi * ((index % (4 * n)) / (2 * n))
    np.testing.assert_allclose(cos, np.cos(angle), atol=2e-6)
    np.testing.assert_allclose(sin, np.sin(angle), atol=2e-6)


# ----------------------------------------------------------------------------------------------
# Offset kernels
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel_size,in_channels,filters,groups",
    [((1, 1), 6, 4, 1), ((1, 1), 4, 10, 1), ((3, 3), 3, 8, 1), ((3, 3), 2, 24, 1),
     ((5, 5), 2, 12, 1), ((3, 3), 4, 6, 2), ((3, 3), 6, 60, 3), ((3,), 4, 5, 1), ((5,), 2, 16, 1)],
)
def test_kernel_blocks_are_dct_with_unit_singular_values(kernel_size, in_channels, filters, groups):
    kernel = co.conv_offset_kernel(kernel_size, in_channels, filters, groups).numpy()
    c_in_g = in_channels // groups
    patch = math.prod(kernel_size) * c_in_g
    assert kernel.shape == (*kernel_size, c_in_g, filters)
    # One (filters x P) top-left block of C_N, N = max(P, filters), over ALL output
    # channels (the authors' grouped construction), not a block repeated per group.
    block = kernel.reshape(patch, filters).T
    expected = dct_block(filters, patch)
    assert_close(block, expected, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.svd(block, compute_uv=False), 1.0, atol=1e-5)
    if groups > 1:
        first, second = (block[g * (filters // groups):(g + 1) * (filters // groups)]
                         for g in range(2))
        assert not np.allclose(first, second)


@pytest.mark.parametrize(
    "kernel_size,in_channels,multiplier",
    [((3, 3), 3, 1), ((3, 3), 3, 4), ((3, 3), 3, 12), ((2, 2), 3, 6), ((3, 3), 16, 1),
     ((3, 3), 5, 2)],
)
def test_depthwise_kernel_rows_are_dct(kernel_size, in_channels, multiplier):
    kernel = co.depthwise_offset_kernel(kernel_size, in_channels, multiplier).numpy()
    patch = math.prod(kernel_size)
    filters = in_channels * multiplier
    assert kernel.shape == (*kernel_size, in_channels, multiplier)
    rows = dct_block(filters, patch)  # row o = ch * dm + m of C_N, N = max(P, c_out)
    for ch in range(in_channels):
        for m in range(multiplier):
            assert_close(kernel[:, :, ch, m].reshape(patch), rows[ch * multiplier + m], rtol=1e-6)
    # Every output channel has its own filter (not one box filter for all).
    filters_as_rows = kernel.reshape(patch, filters).T
    assert len({tuple(np.round(r, 6)) for r in filters_as_rows}) == filters


def test_kernel_argument_errors():
    with pytest.raises(ValueError, match="kernel_size"):
        co.conv_offset_kernel(3, 4, 4)
    with pytest.raises(ValueError, match="groups"):
        co.conv_offset_kernel((3, 3), 4, 6, groups=4)


# ----------------------------------------------------------------------------------------------
# Applying the offset
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("case", sorted(UNGROUPED_CASES))
def test_offset_variants_match_reference(case, variant):
    shape, kernel_size, filters, strides, padding, dilation = UNGROUPED_CASES[case]
    x = _input(shape)
    expected = reference_offset(x.numpy(), kernel_size, filters, strides, padding, dilation)
    actual = VARIANTS[variant](x, kernel_size, filters, strides, padding, dilation)
    assert actual.dtype == tf.float32
    assert_close(actual, expected)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_offset_variants_in_tf_function_with_unknown_batch(variant):
    shape, kernel_size, filters, strides, padding, dilation = UNGROUPED_CASES["3x5_strides1x2_same"]
    fn = tf.function(
        lambda x: VARIANTS[variant](x, kernel_size, filters, strides, padding, dilation),
        input_signature=[tf.TensorSpec((None, None, None, shape[-1]), tf.float32)],
    )
    x = _input(shape)
    assert_close(fn(x), reference_offset(x.numpy(), kernel_size, filters, strides, padding,
                                         dilation))


@pytest.mark.parametrize(
    "shape,kernel_size,filters,strides,padding,groups",
    [((2, 7, 6, 4), 3, 6, 1, "same", 2), ((2, 8, 8, 6), 3, 9, 2, "valid", 3),
     ((2, 9, 4), 3, 8, 1, "same", 2)],
)
def test_grouped_direct_matches_reference(shape, kernel_size, filters, strides, padding, groups):
    x = _input(shape)
    expected = reference_offset(x.numpy(), kernel_size, filters, strides, padding, groups=groups)
    actual = co.conv_offset_direct(x, kernel_size, filters, strides, padding, groups=groups)
    assert_close(actual, expected)
    assert_close(co.conv_offset(x, kernel_size, filters, strides, padding, groups=groups),
                 expected)


@pytest.mark.parametrize(
    "multiplier,strides,padding", [(1, 1, "same"), (4, 2, "valid"), (12, 1, "same")]
)
def test_depthwise_kernel_in_depthwise_conv_matches_reference(multiplier, strides, padding):
    x = _input((2, 7, 8, 3))
    kernel = co.depthwise_offset_kernel((3, 3), 3, multiplier)
    actual = tf.nn.depthwise_conv2d(x, kernel, (1, strides, strides, 1), padding.upper())
    expected = reference_offset(x.numpy(), 3, 3 * multiplier, strides, padding, groups=3)
    assert_close(actual, expected)


@pytest.mark.parametrize("method", ["auto", "direct", "matmul", "fft"])
def test_conv_offset_dispatch(method):
    x = _input((2, 6, 6, 4))
    expected = reference_offset(x.numpy(), 3, 8, 1, "same", 1)
    assert_close(co.conv_offset(x, 3, 8, padding="same", method=method), expected)


def test_conv_offset_argument_errors():
    x = _input((1, 6, 6, 4))
    with pytest.raises(ValueError, match="groups=1"):
        co.conv_offset(x, 3, 8, groups=2, method="fft")
    with pytest.raises(ValueError, match="method"):
        co.conv_offset(x, 3, 8, method="fast")
    with pytest.raises(ValueError, match="padding"):
        co.conv_offset_matmul(x, 3, 8, padding="causal")
    with pytest.raises(ValueError, match="strides"):
        co.conv_offset_fft(x, 3, 8, strides=(1, 2, 3))


def test_float64_inputs_stay_float64():
    x = tf.cast(_input((1, 6, 5, 3)), tf.float64)
    expected = reference_offset(x.numpy(), 3, 7, 1, "same", 1)
    for variant in VARIANTS.values():
        y = variant(x, 3, 7, 1, "same")
        assert y.dtype == tf.float64
        np.testing.assert_allclose(y, expected, atol=1e-12)


def test_input_and_alpha_gradients_agree_across_variants():
    x = _input((2, 7, 6, 5))
    upstream = _input((2, 4, 3, 9), seed=1)
    grads = []
    for variant in VARIANTS.values():
        alpha = tf.Variable(1.5)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = alpha * variant(x, 3, 9, 2, "same")
        grads.append(tape.gradient(y, [x, alpha], output_gradients=upstream))
    for dx, dalpha in grads[1:]:
        assert_close(dx, grads[0][0].numpy().astype(np.float64))
        np.testing.assert_allclose(dalpha, grads[0][1], rtol=1e-5)


# Stride-1 cases, where the factored variants' depthwise step has its own input gradient
# (a depthwise conv by the flipped taps); even kernels pad "same" unevenly.
ADJOINT_CASES = {
    "3x3_same": ((1, 5, 6, 3), 3, 7, 1, "same", 1),
    "3x3_valid": ((1, 6, 5, 2), 3, 9, 1, "valid", 1),
    "4x2_same_even": ((1, 6, 5, 2), (4, 2), 6, 1, "same", 1),
    "5x5_same_cout>P": ((1, 6, 6, 1), 5, 30, 1, "same", 1),
    "conv1d_k4_same": ((1, 9, 3), 4, 5, 1, "same", 1),
    "3x3_dilation2_same": ((1, 7, 6, 2), 3, 5, 1, "same", 2),
}


@pytest.mark.parametrize("variant", ["matmul", "fft"])
@pytest.mark.parametrize("case", sorted(ADJOINT_CASES))
def test_input_gradient_is_the_adjoint_of_the_reference(case, variant):
    # The input gradient for upstream dy is A^T dy, where A is the numpy reference map:
    # entry j is <A e_j, dy>, computed from the reference on every basis input e_j.
    shape, kernel_size, filters, strides, padding, dilation = ADJOINT_CASES[case]
    x = _input(shape)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = VARIANTS[variant](x, kernel_size, filters, strides, padding, dilation)
    dy = np.random.default_rng(3).standard_normal(y.shape)
    dx = tape.gradient(y, x, output_gradients=tf.constant(dy, tf.float32))
    expected = np.zeros(x.shape)
    for j in range(x.shape.num_elements()):
        basis = np.zeros(x.shape)
        basis.flat[j] = 1.0
        column = reference_offset(basis, kernel_size, filters, strides, padding, dilation)
        expected.flat[j] = np.sum(column * dy)
    assert_close(dx, expected)
