"""Tests for `ops.sparse_conv` against an independent numpy reference (im2col), forward and
gradients for x and values."""

import numpy as np
import pytest
import tensorflow as tf

from keras_dctsparse.ops import sparse_conv as sc
from numpy_reference import col2im
from numpy_reference import im2col


def random_support(patch, filters, nnz, rng):
    flat = rng.choice(patch * filters, nnz, replace=False)
    cols, rows = np.divmod(np.sort(flat), patch)  # column-major, as SparseWeight
    return rows, cols


def reference(x, values, rows, cols, kernel_size, filters, strides, padding, dilation,
              groups, dy):
    """Float64 output, dx and dvalues of conv(x, S) per group from im2col."""
    c_in_g, c_out_g = x.shape[-1] // groups, filters // groups
    patch = int(np.prod(kernel_size)) * c_in_g
    matrix = np.zeros((patch, filters))
    matrix[rows, cols] = values
    outputs, dx, dmatrix = [], np.zeros_like(x), np.zeros_like(matrix)
    for g in range(groups):
        x_g = x[..., g * c_in_g:(g + 1) * c_in_g]
        patches = im2col(x_g, kernel_size, strides, padding, dilation)
        w_g = matrix[:, g * c_out_g:(g + 1) * c_out_g]
        dy_g = dy[..., g * c_out_g:(g + 1) * c_out_g]
        outputs.append(patches @ w_g)
        dx[..., g * c_in_g:(g + 1) * c_in_g] = col2im(
            dy_g @ w_g.T, x_g.shape, kernel_size, strides, padding, dilation
        )
        dmatrix[:, g * c_out_g:(g + 1) * c_out_g] = (
            patches.reshape(-1, patch).T @ dy_g.reshape(-1, c_out_g)
        )
    return np.concatenate(outputs, axis=-1), dx, dmatrix[rows, cols]


CASES = {
    # name: (x shape, kernel, filters, strides, padding, dilation, groups)
    "3x3_same": ((2, 7, 6, 5), (3, 3), 8, (1, 1), "same", (1, 1), 1),
    "3x3_valid": ((2, 7, 6, 5), (3, 3), 8, (1, 1), "valid", (1, 1), 1),
    "3x3_same_stride2": ((2, 9, 8, 3), (3, 3), 6, (2, 2), "same", (1, 1), 1),
    "3x3_valid_stride2_leftover": ((2, 10, 9, 3), (3, 3), 6, (2, 2), "valid", (1, 1), 1),
    "5x3_unequal_strides": ((1, 9, 11, 3), (5, 3), 4, (1, 3), "same", (1, 1), 1),
    "3x3_dilation2_same": ((2, 9, 9, 3), (3, 3), 5, (1, 1), "same", (2, 2), 1),
    "2x3_dilation_valid": ((2, 9, 9, 3), (2, 3), 5, (1, 1), "valid", (3, 2), 1),
    "1x1": ((2, 5, 5, 6), (1, 1), 7, (1, 1), "same", (1, 1), 1),
    "4x4_same_even": ((2, 8, 7, 2), (4, 4), 3, (1, 1), "same", (1, 1), 1),
    "3x3_groups2": ((2, 6, 6, 4), (3, 3), 6, (1, 1), "same", (1, 1), 2),
    "3x3_groups4_stride2": ((2, 7, 7, 8), (3, 3), 8, (2, 2), "valid", (1, 1), 4),
    "conv1d_k5_same": ((3, 12, 4), (5,), 6, (1,), "same", (1,), 1),
    "conv1d_k3_stride2": ((3, 13, 4), (3,), 6, (2,), "valid", (1,), 1),
    "conv1d_dilation2_groups2": ((2, 12, 4), (3,), 4, (1,), "same", (2,), 2),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("density", [0.3, 0.02])
def test_matches_reference_forward_and_gradients(name, density):
    shape, kernel_size, filters, strides, padding, dilation, groups = CASES[name]
    rng = np.random.default_rng(abs(hash((name, density))) % 2**32)
    patch = int(np.prod(kernel_size)) * shape[-1] // groups
    nnz = max(1, int(density * patch * filters))
    rows, cols = random_support(patch, filters, nnz, rng)
    x = rng.standard_normal(shape)
    values = rng.standard_normal(nnz)
    expected, dx_ref, dv_ref = None, None, None
    xt = tf.constant(x, tf.float32)
    vt = tf.constant(values, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([xt, vt])
        y = sc.sparse_conv(xt, vt, tf.constant(rows), tf.constant(cols), kernel_size,
                           filters, strides, padding, dilation, groups)
        dy = rng.standard_normal(y.shape)
        loss = tf.reduce_sum(y * tf.constant(dy, tf.float32))
    dx, dv = tape.gradient(loss, [xt, vt])
    expected, dx_ref, dv_ref = reference(x, values, rows, cols, kernel_size, filters,
                                         strides, padding, dilation, groups, dy)
    for actual, wanted in ((y, expected), (dx, dx_ref), (dv, dv_ref)):
        assert actual.shape == wanted.shape
        np.testing.assert_allclose(actual.numpy(), wanted, rtol=1e-4,
                                   atol=1e-4 * np.abs(wanted).max())


def test_float64_and_positions_changed_after_tracing():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 6, 3))
    rows = tf.Variable(np.zeros(4, np.int32))
    cols = tf.Variable(np.zeros(4, np.int32))
    values = tf.constant(rng.standard_normal(4))

    @tf.function
    def run(inputs):
        return sc.sparse_conv2d(inputs, values, rows, cols, 3, 5, padding="same")

    for seed in (1, 2):
        r, c = random_support(27, 5, 4, np.random.default_rng(seed))
        rows.assign(r.astype(np.int32))
        cols.assign(c.astype(np.int32))
        y = run(tf.constant(x))
        assert y.dtype == tf.float64
        expected, _, _ = reference(x, values.numpy(), r, c, (3, 3), 5, (1, 1), "same",
                                   (1, 1), 1, np.zeros((2, 6, 6, 5)))
        np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_sparse_positions_splits_rows():
    # rows = (i * k_w + j) * c_in_g + ch; group of column c is c // (filters / groups).
    channels, taps_h, taps_w = sc.sparse_positions(
        tf.constant([0, 5, 7, 17]), tf.constant([0, 1, 3, 2]), (3, 3), 4, 4, groups=2
    )
    assert channels.numpy().tolist() == [0, 1, 3, 3]
    assert taps_h.numpy().tolist() == [0, 0, 1, 2]
    assert taps_w.numpy().tolist() == [0, 2, 0, 2]


def test_errors_name_the_argument():
    x = tf.zeros((1, 5, 5, 2))
    v, r, c = tf.ones(1), tf.constant([0]), tf.constant([0])
    with pytest.raises(ValueError, match="padding='FULL'"):
        sc.sparse_conv2d(x, v, r, c, 3, 2, padding="full")
    with pytest.raises(ValueError, match="strides=0"):
        sc.sparse_conv2d(x, v, r, c, 3, 2, strides=0)
    with pytest.raises(ValueError, match="groups=2"):
        sc.sparse_conv2d(tf.zeros((1, 5, 5, 3)), v, r, c, 3, 2, groups=2)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        sc.sparse_conv2d(x, v, r, c, 7, 2)
    with pytest.raises(ValueError, match="rank 3"):
        sc.sparse_conv(tf.zeros((1, 4, 4, 4, 2)), v, r, c, (3, 3, 3), 2)

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 2))])
    def dynamic(inputs):
        return sc.sparse_conv2d(inputs, v, r, c, 3, 2)

    with pytest.raises(ValueError, match="static h, w"):
        dynamic.get_concrete_function()


def test_macs_follow_nnz():
    assert sc.sparse_conv_macs(147, 16 * 16) == 147 * 256


# (shape, nnz): small and large kernels, low and high density; the last is large enough
# for the column-major scatter into S^T (`SORTED_SCATTER_MIN_ELEMENTS`).
SCATTER_CASES = [((3, 3, 4, 5), 40), ((3, 3, 4, 5), 3), ((3, 3, 8, 1024), 300),
                 ((3, 3, 8, 1024), 5000), ((3, 3, 8, 1024), 60000), ((3, 3, 64, 1024), 30000),
                 ((3, 3, 64, 1024), 200000)]


def test_scatter_cases_cover_both_layouts():
    layouts = [sc.scatters_transposed(int(np.prod(shape)), nnz) for shape, nnz in SCATTER_CASES]
    assert set(layouts) == {True, False}
    assert not sc.scatters_transposed(sc.SORTED_SCATTER_MIN_ELEMENTS - 1, 10**9)
    assert not sc.scatters_transposed(2**20, 2**18 - 1)
    assert sc.scatters_transposed(2**20, 2**18)


@pytest.mark.parametrize("shape, nnz", SCATTER_CASES)
@pytest.mark.parametrize("with_base", [False, True])
def test_scatter_kernel_and_gradients(with_base, shape, nnz):
    rng = np.random.default_rng()
    height, width = int(np.prod(shape[:-1])), shape[-1]
    rows, cols = random_support(height, width, nnz, rng)
    order = rng.permutation(nnz)  # Any order, not only column-major.
    check_scatter_kernel(shape, rows[order], cols[order], with_base, rng)
    # SparseWeight's column-major order (sorted by column, then row).
    by_column = np.lexsort((rows, cols))
    check_scatter_kernel(shape, rows[by_column], cols[by_column], with_base, rng,
                         column_major=True)


@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("shape", [(3, 3, 4, 5), (3, 3, 8, 1024)])
def test_scatter_kernel_full_density_column_major(with_base, shape):
    # Every position, sorted by column then row: the kernel is a transpose of the values.
    height, width = int(np.prod(shape[:-1])), shape[-1]
    cols, rows = np.divmod(np.arange(height * width), height)
    check_scatter_kernel(shape, rows, cols, with_base, np.random.default_rng(),
                         column_major=True)


def check_scatter_kernel(shape, rows, cols, with_base, rng, column_major=False):
    """`scatter_kernel` and its gradients against a numpy scatter on random values."""
    height, width = int(np.prod(shape[:-1])), shape[-1]
    values = tf.constant(rng.standard_normal(len(rows)))
    base = tf.constant(rng.standard_normal(shape)) if with_base else None
    dk = rng.standard_normal(shape)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(values)
        if with_base:
            tape.watch(base)
        kernel = sc.scatter_kernel(values, tf.constant(rows), tf.constant(cols), shape, base,
                                   column_major=column_major)
        loss = tf.reduce_sum(kernel * dk)
    expected = np.zeros((height, width))
    expected[rows, cols] = values.numpy()
    expected = expected.reshape(shape) + (base.numpy() if with_base else 0.0)
    np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(tape.gradient(loss, values).numpy(),
                               dk.reshape(height, width)[rows, cols], rtol=1e-12)
    if with_base:
        np.testing.assert_allclose(tape.gradient(loss, base).numpy(), dk, rtol=1e-12)


def test_static_output_shape_with_unknown_batch():
    # Regression: with an unknown batch the output lost its spatial sizes, so a
    # Flatten + Dense after a sparse conv failed to build (LeNet-5 at density 0.001).
    values, rows, cols = tf.ones((3,)), tf.constant([0, 9, 30]), tf.constant([0, 1, 5])

    @tf.function(input_signature=[tf.TensorSpec((None, 14, 14, 6))])
    def convolve(x):
        y = sc.sparse_conv2d(x, values, rows, cols, 5, 16)
        assert y.shape.as_list() == [None, 10, 10, 16], y.shape
        return y

    assert convolve(tf.ones((2, 14, 14, 6))).shape == (2, 10, 10, 16)


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_unknown_batch_split_into_slices(batch):
    # With an unknown static batch the work is split into batch slices at run time
    # (uneven for 3, one empty slice for 1 on two threads): forward and both gradients
    # must still match the reference.
    rng = np.random.default_rng(batch)
    rows, cols = random_support(27, 5, 12, rng)
    values = rng.standard_normal(12)

    @tf.function(input_signature=[tf.TensorSpec((None, 6, 7, 3)), tf.TensorSpec((None, 6, 7, 5))])
    def run(inputs, dy):
        v = tf.constant(values, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch([inputs, v])
            y = sc.sparse_conv2d(inputs, v, tf.constant(rows), tf.constant(cols), 3, 5,
                                 padding="same")
            loss = tf.reduce_sum(y * dy)
        return (y, *tape.gradient(loss, [inputs, v]))

    x = rng.standard_normal((batch, 6, 7, 3))
    dy = rng.standard_normal((batch, 6, 7, 5))
    actual = run(tf.constant(x, tf.float32), tf.constant(dy, tf.float32))
    wanted = reference(x, values, rows, cols, (3, 3), 5, (1, 1), "same", (1, 1), 1, dy)
    for got, want in zip(actual, wanted):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
