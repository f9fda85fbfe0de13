"""`keras_dctsparse.ops.native_conv`: padding helper and the autodiff wrapper, vs im2col."""

import numpy as np
import pytest
import tensorflow as tf

from keras_dctsparse.native import library
from keras_dctsparse.ops import native_conv
from numpy_reference import assert_sum_close
from numpy_reference import _pads
from numpy_reference import col2im
from numpy_reference import dct_block
from numpy_reference import im2col


@pytest.mark.parametrize("size, kernel, stride, dilation", [
    (8, 3, 1, 1), (9, 3, 2, 1), (10, 2, 3, 1), (7, 3, 1, 2), (5, 5, 1, 1)])
def test_explicit_pads_match_tensorflow(size, kernel, stride, dilation):
    for padding in ("same", "valid"):
        pads = native_conv.explicit_pads((size, size), (kernel, kernel), (stride, stride),
                                         padding, (dilation, dilation))
        (before, after), _ = _pads(size, kernel, stride, dilation, padding)
        assert pads == [before, after, before, after]
    with pytest.raises(ValueError, match="`padding` must be 'same' or 'valid'"):
        native_conv.explicit_pads((4, 4), (3, 3), (1, 1), "causal", (1, 1))


@pytest.mark.skipif(not library.available(), reason="native kernels unavailable")
@pytest.mark.parametrize("shape, kernel, strides, dilation, padding, filters, dtype, with_bias", [
    ((3, 11, 4), (3,), (2,), (1,), "same", 5, "float32", True),
    ((2, 45, 3), (5,), (1,), (2,), "valid", 5, "float32", False),  # longer than a tile
    ((3, 9, 8, 4), (3, 3), (1, 2), (1, 1), "same", 5, "float32", False),
    # The offset taps run 64 float32 (32 float64) channels at a time, then 16 (8), then
    # one by one: 83 filters take all three, on widths that end mid-group of 4 pixels.
    ((2, 6, 19, 3), (3, 3), (1, 1), (1, 1), "same", 83, "float32", True),
    ((2, 5, 7, 2), (3, 3), (2, 1), (1, 2), "same", 83, "float64", True),
])
def test_output_and_every_gradient_match_im2col(shape, kernel, strides, dilation, padding,
                                                filters, dtype, with_bias):
    rng = np.random.default_rng()
    rank = len(kernel)
    patch = int(np.prod(kernel)) * shape[-1]
    keys = np.sort(rng.choice(patch * filters, 20, replace=False))
    cols, rows = np.divmod(keys, patch)
    values = rng.standard_normal(20)
    x = rng.standard_normal(shape)
    weights = tf.constant(rng.standard_normal((3,) + (48,) * rank + (filters,)), dtype)
    x_t, alpha_t, values_t = (tf.constant(x, dtype), tf.constant(0.4, dtype),
                              tf.constant(values, dtype))
    bias = rng.standard_normal(filters) if with_bias else np.zeros(filters)
    bias_t = tf.constant(bias, dtype)
    with tf.GradientTape() as tape:
        tape.watch([x_t, alpha_t, values_t, bias_t])
        y = native_conv.native_conv(x_t, alpha_t, values_t, np.stack([rows, cols]),
                                    kernel, filters, strides, padding, dilation,
                                    bias=bias_t if with_bias else None)
        dy = weights[(slice(0, shape[0]),) + tuple(slice(0, d) for d in y.shape[1:-1])]
        loss = tf.reduce_sum(y * dy)
    dx, dalpha, dvalues, dbias = tape.gradient(loss, [x_t, alpha_t, values_t, bias_t])
    # 1-D as 2-D with a width of 1 (im2col is 2-D).
    x2 = x[:, :, None, :] if rank == 1 else x
    widen = (lambda t: t + (1,)) if rank == 1 else (lambda t: t)
    geometry = (widen(kernel), widen(strides), padding, widen(dilation))
    patches = im2col(x2, *geometry)
    sparse = np.zeros((patch, filters))
    sparse[rows, cols] = values
    offset = dct_block(filters, patch).T
    dyn = dy.numpy().astype(np.float64).reshape(patches.shape[:-1] + (filters,))
    y_want = patches @ (sparse + 0.4 * offset) + bias
    np.testing.assert_allclose(y.numpy().reshape(y_want.shape), y_want, rtol=1e-4, atol=1e-4)
    if with_bias:
        np.testing.assert_allclose(dbias.numpy(), dyn.reshape(-1, filters).sum(0), rtol=1e-4,
                                   atol=1e-4)
    else:
        assert dbias is None
    dx_want = col2im(dyn @ (sparse + 0.4 * offset).T, x2.shape, *geometry).reshape(x.shape)
    np.testing.assert_allclose(dx.numpy(), dx_want, rtol=1e-4, atol=1e-4)
    flat_p, flat_dy = patches.reshape(-1, patch), dyn.reshape(-1, filters)
    np.testing.assert_allclose(dvalues.numpy(), (flat_p.T @ flat_dy)[rows, cols], rtol=1e-4,
                               atol=1e-4)
    assert_sum_close(float(dalpha), (flat_p @ offset) * flat_dy, rtol=1e-4)


@pytest.mark.skipif(not library.available(), reason="native kernels unavailable")
def test_one_dimensional_convolutions_run_along_the_tiled_width():
    """The ops tile the output width by 16 pixels: a 1-D length along the height (width 1)
    filled one lane in 16 (measured 4x slower)."""
    x = tf.ones((2, 40, 3))

    @tf.function
    def forward(x):
        return native_conv.native_conv(x, tf.constant(0.5), tf.ones((2,)),
                                       np.array([[0, 7], [0, 1]], np.int32), (5,), 4, (2,),
                                       "same", (1,))

    assert tuple(forward(x).shape) == (2, 20, 4)
    ops = [op for op in forward.get_concrete_function(x).graph.get_operations()
           if op.type == "DctSparseConv2D"]
    assert [(op.get_attr("kernel_size"), op.get_attr("strides")) for op in ops] == [
        ([1, 5], [1, 2])]
    assert ops[0].inputs[0].shape.as_list() == [2, 1, 40, 3]


@pytest.mark.skipif(not library.available(), reason="native kernels unavailable")
def test_gradients_of_an_inference_trace_match_im2col():
    """A call traced with no tape passes the `[cos | sin]` table to the op (which computes
    `uv` itself) and keeps no offset; differentiated after all, alpha's gradient recomputes
    the offset and `x`'s gets the share that flows through `uv = x @ table`."""
    rng = np.random.default_rng()
    x = tf.constant(rng.standard_normal((2, 6, 6, 3)), tf.float32)
    alpha = tf.constant(0.5)
    values = tf.constant(rng.standard_normal(5), tf.float32)
    positions = np.array([[0, 4, 9, 13, 26], [0, 1, 1, 2, 3]], np.int32)
    dy = rng.standard_normal((2, 6, 6, 4))

    @tf.function
    def forward(x, alpha, values):
        return native_conv.native_conv2d(x, alpha, values, positions, (3, 3), 4,
                                          padding="same")

    forward(x, alpha, values)  # traced without a tape
    assert [(op.get_attr("offset_output"), op.get_attr("uv_is_table")) for op in
            forward.get_concrete_function(x, alpha, values).graph.get_operations()
            if op.type == "DctSparseConv2D"] == [(False, True)]
    with tf.GradientTape() as tape:
        tape.watch([x, alpha, values])
        loss = tf.reduce_sum(forward(x, alpha, values) * dy)
    dx, dalpha, dvalues = tape.gradient(loss, [x, alpha, values])
    geometry = ((3, 3), (1, 1), "same", (1, 1))
    patches = im2col(x.numpy().astype(np.float64), *geometry)
    offset = dct_block(4, 27).T
    sparse = np.zeros((27, 4))
    sparse[positions[0], positions[1]] = values.numpy()
    assert_sum_close(dalpha.numpy(), (patches @ offset) * dy, rtol=1e-4)
    dx_want = col2im(dy @ (sparse + 0.5 * offset).T, x.shape, *geometry)
    np.testing.assert_allclose(dx.numpy(), dx_want, rtol=1e-4, atol=1e-4)
    flat_p, flat_dy = patches.reshape(-1, 27), dy.reshape(-1, 4)
    np.testing.assert_allclose(dvalues.numpy(), (flat_p.T @ flat_dy)[positions[0], positions[1]],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not library.available(), reason="native kernels unavailable")
@pytest.mark.parametrize("shape, kernel, strides, padding, filters, dtype", [
    ((3, 12, 12, 1), (5, 5), (1, 1), "same", 6, "float32"),
    ((2, 14, 14, 6), (5, 5), (1, 1), "valid", 16, "float32"),
    ((2, 9, 8, 3), (3, 3), (2, 2), "same", 20, "float64"),
    ((1, 7, 10, 2), (3, 2), (1, 3), "valid", 9, "float64"),
])
def test_direct_conv2d_and_its_gradients_match_im2col(shape, kernel, strides, padding, filters,
                                                      dtype):
    rng = np.random.default_rng()
    x = tf.constant(rng.standard_normal(shape), dtype)
    weights = tf.constant(rng.standard_normal((*kernel, shape[-1], filters)), dtype)
    with tf.GradientTape() as tape:
        tape.watch([x, weights])
        y = native_conv.direct_conv2d(x, weights, strides, padding)
        dy = tf.constant(rng.standard_normal(y.shape), dtype)
        loss = tf.reduce_sum(y * dy)
    dx, dweights = tape.gradient(loss, [x, weights])
    geometry = (kernel, strides, padding, (1, 1))
    patches = im2col(x.numpy().astype(np.float64), *geometry)
    flat = weights.numpy().astype(np.float64).reshape(-1, filters)
    dyn = dy.numpy().astype(np.float64)
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(y.numpy(), patches @ flat, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx.numpy(), col2im(dyn @ flat.T, shape, *geometry), rtol=tol,
                               atol=tol)
    np.testing.assert_allclose(dweights.numpy().reshape(flat.shape),
                               np.einsum("bhwp,bhwf->pf", patches, dyn), rtol=tol, atol=tol)


@pytest.mark.skipif(not library.available(), reason="native kernels unavailable")
def test_direct_conv2d_needs_static_sizes():
    @tf.function(input_signature=[tf.TensorSpec((None, None, 8, 1))])
    def unknown_height(x):
        return native_conv.direct_conv2d(x, tf.ones((3, 3, 1, 2)))

    with pytest.raises(ValueError, match="static h, w and channels"):
        unknown_height.get_concrete_function()
