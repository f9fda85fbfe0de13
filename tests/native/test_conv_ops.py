"""The compiled ops of `keras_dctsparse/native/src/conv_ops.cc` against im2col/col2im and scipy.

`DctSparseConv2D` takes `uv = x @ [cos | sin]` (computed here in numpy; or, with
`uv_is_table`, the table `[cos | sin]` itself) and returns
`alpha * conv(x, Kd) + conv(x, S) + bias`; `DctSparseConv2DInputGrad` returns the transposed
sparse conv and `duv`, whose product with `[cos | sin]^T` completes `dx`;
`DctSparseConv2DValueGrad` returns `dvalues`. Every geometry path (strides and their
phases, dilation, "same"/"valid" padding, 1-row kernels, partial tiles, channel counts
that are not multiples of the lanes) on fresh random inputs.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_dctsparse.native import library
from numpy_reference import _pads
from numpy_reference import col2im
from numpy_reference import dct_block
from numpy_reference import im2col

pytestmark = pytest.mark.skipif(
    not library.available(), reason=f"native kernels unavailable: {library.unavailable_reason()}"
)

# (batch, h, w, c_in, filters, kernel, strides, dilation, padding, density)
CASES = [
    (2, 8, 8, 4, 6, (3, 3), (1, 1), (1, 1), "same", 0.3),
    (3, 9, 7, 5, 17, (3, 3), (2, 2), (1, 1), "same", 0.2),
    (1, 10, 11, 3, 4, (3, 2), (1, 2), (2, 1), "valid", 0.5),
    (2, 12, 12, 16, 32, (3, 3), (1, 1), (2, 2), "same", 0.05),
    (4, 28, 28, 1, 6, (5, 5), (1, 1), (1, 1), "valid", 0.8),
    (5, 6, 40, 8, 8, (1, 3), (1, 1), (1, 1), "same", 0.3),
    (33, 5, 5, 3, 20, (3, 3), (1, 1), (1, 1), "same", 1.0),
    (2, 17, 19, 7, 33, (3, 3), (3, 3), (1, 1), "valid", 0.1),
]

# Wide rows of uv (w * 2 * filters values), so that the table form computes uv in several
# bands of output rows (the op's kUvBandBytes, 512 KiB): bands of 14 rows (6 in float64),
# of 2 rows (1 in float64), strided and dilated.
BAND_CASES = [
    (1, 30, 32, 4, 128, (3, 3), (1, 1), (1, 1), "same", 0.02),
    (3, 11, 64, 8, 256, (3, 3), (1, 1), (1, 1), "same", 0.01),
    (1, 21, 40, 6, 200, (3, 3), (2, 2), (1, 1), "same", 0.05),
    (2, 20, 48, 5, 160, (3, 3), (1, 1), (2, 2), "valid", 0.05),
]


def _problem(case, dtype, rng):
    batch, h, w, c_in, filters, kernel, strides, dilation, padding, density = case
    patch = kernel[0] * kernel[1] * c_in
    nnz = max(1, int(density * patch * filters))
    keys = np.sort(rng.choice(patch * filters, nnz, replace=False))
    cols, rows = np.divmod(keys, patch)
    values = rng.standard_normal(nnz)
    sparse = np.zeros((patch, filters))
    sparse[rows, cols] = values
    x = rng.standard_normal((batch, h, w, c_in))
    pads = []
    for size, k, s, d in zip((h, w), kernel, strides, dilation):
        (before, after), _ = _pads(size, k, s, d, padding)
        pads += [before, after]
    n = max(patch, filters)
    phase = np.pi * np.arange(filters)[:, None] * (2 * np.arange(c_in)[None, :] + 1) / (2 * n)
    cos_sin = np.concatenate([np.cos(phase).T, np.sin(phase).T], axis=1)  # (c_in, 2 F)
    attrs = dict(kernel_size=list(kernel), strides=list(strides), dilations=list(dilation),
                 pads=pads, filters=filters)
    return dict(x=x, rows=rows.astype(np.int32), cols=cols.astype(np.int32), values=values,
                sparse=sparse, offset=dct_block(filters, patch).T, cos_sin=cos_sin,
                attrs=attrs, geometry=(kernel, strides, padding, dilation))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_offset, with_bias", [(True, True), (True, False), (False, True),
                                                    (False, False)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[1:5])) + f"-{c[8]}")
def test_forward_and_gradients_match_im2col(case, with_offset, with_bias, dtype):
    rng = np.random.default_rng()
    p = _problem(case, dtype, rng)
    ops = library.load()
    alpha = 0.7
    x, geometry = p["x"], p["geometry"]
    kernel = p["sparse"] + (alpha * p["offset"] if with_offset else 0)
    patches = im2col(x, *geometry)
    uv = (x @ p["cos_sin"]).astype(dtype) if with_offset else np.zeros((0, 0, 0, 0), dtype)
    bias = rng.standard_normal(kernel.shape[1]) if with_bias else np.zeros(0)
    positions = np.stack([p["rows"], p["cols"]])
    y, offset = ops.dct_sparse_conv2d(
        x.astype(dtype), uv, dtype(alpha), p["values"].astype(dtype), positions,
        bias.astype(dtype), with_offset=with_offset, **p["attrs"])
    tol = 2e-6 if dtype == np.float32 else 1e-13
    want = patches @ kernel + (bias if with_bias else 0)
    scale = (np.abs(patches) @ np.abs(kernel)).max() + np.abs(bias).max(initial=0)
    assert np.abs(y.numpy() - want).max() <= tol * scale
    if with_offset:
        np.testing.assert_allclose(offset.numpy(), patches @ p["offset"], atol=1e3 * tol)
    dy = rng.standard_normal(want.shape)
    dx, duv = ops.dct_sparse_conv2d_input_grad(
        dy.astype(dtype), dtype(alpha), p["values"].astype(dtype), positions,
        np.array(x.shape, np.int64), in_channels=x.shape[-1], with_offset=with_offset,
        **p["attrs"])
    want_dx = col2im(dy @ kernel.T, x.shape, *geometry)
    full_dx = dx.numpy() + (duv.numpy() @ p["cos_sin"].T if with_offset else 0)
    assert np.abs(full_dx - want_dx).max() <= 10 * tol * np.abs(dy).sum(-1).max() * max(
        1.0, np.abs(kernel).max())
    dvalues = ops.dct_sparse_conv2d_value_grad(x.astype(dtype), dy.astype(dtype), positions,
                                               **p["attrs"])
    want_dv = np.einsum("bhwp,bhwf->pf", patches, dy)[p["rows"], p["cols"]]
    bound = np.einsum("bhwp,bhwf->pf", np.abs(patches), np.abs(dy))[p["rows"], p["cols"]]
    assert np.all(np.abs(dvalues.numpy() - want_dv) <= 10 * tol * bound + 1e-30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("case", CASES + BAND_CASES,
                         ids=lambda c: "x".join(map(str, c[1:5])) + f"-{c[8]}")
def test_forward_from_the_table_matches_im2col(case, with_bias, dtype):
    """`uv_is_table`: the op multiplies each work unit's image rows by `[cos | sin]` itself
    (every geometry, with halo rows, units that split an image's rows, and bands of rows
    within a unit whose shared rows move to the front of the buffer)."""
    rng = np.random.default_rng()
    p = _problem(case, dtype, rng)
    ops = library.load()
    alpha = 0.7
    x, geometry = p["x"], p["geometry"]
    kernel = p["sparse"] + alpha * p["offset"]
    bias = rng.standard_normal(kernel.shape[1]) if with_bias else np.zeros(0)
    y, offset = ops.dct_sparse_conv2d(
        x.astype(dtype), p["cos_sin"].astype(dtype), dtype(alpha), p["values"].astype(dtype),
        np.stack([p["rows"], p["cols"]]), bias.astype(dtype), with_offset=True,
        offset_output=False, uv_is_table=True, **p["attrs"])
    patches = im2col(x, *geometry)
    want = patches @ kernel + (bias if with_bias else 0)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    scale = (np.abs(patches) @ np.abs(kernel)).max() + np.abs(bias).max(initial=0)
    assert np.abs(y.numpy() - want).max() <= tol * scale
    assert offset.shape == (0, 0, 0, 0)


def test_the_table_form_checks_its_arguments():
    ops = library.load()
    x = np.ones((1, 4, 4, 2), np.float32)
    attrs = dict(kernel_size=[3, 3], strides=[1, 1], dilations=[1, 1], pads=[1, 1, 1, 1],
                 filters=3)
    args = (np.float32(1), np.ones(1, np.float32), np.array([[0], [0]], np.int32),
            np.zeros(0, np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"table with uv_is_table; got \[2,5\]"):
        ops.dct_sparse_conv2d(x, np.ones((2, 5), np.float32), *args, with_offset=True,
                              offset_output=False, uv_is_table=True, **attrs)
    with pytest.raises(tf.errors.InvalidArgumentError, match="uv_is_table needs with_offset"):
        ops.dct_sparse_conv2d(x, np.ones((2, 6), np.float32), *args, with_offset=True,
                              offset_output=True, uv_is_table=True, **attrs)


def test_positions_out_of_range_are_errors():
    ops = library.load()
    x = np.ones((1, 4, 4, 2), np.float32)
    attrs = dict(kernel_size=[3, 3], strides=[1, 1], dilations=[1, 1], pads=[1, 1, 1, 1],
                 filters=3)
    uv = np.zeros((0, 0, 0, 0), np.float32)
    no_bias = np.zeros(0, np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(rows\) must be in .* = \[0, 18\)"):
        ops.dct_sparse_conv2d(x, uv, np.float32(1), np.ones(1, np.float32),
                              np.array([[18], [0]], np.int32), no_bias, with_offset=False,
                              **attrs)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"bias must be \(filters,\) = \(3,\)"):
        ops.dct_sparse_conv2d(x, uv, np.float32(1), np.ones(1, np.float32),
                              np.array([[0], [0]], np.int32), np.ones(2, np.float32),
                              with_offset=False, **attrs)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(columns\) must be sorted and in"):
        ops.dct_sparse_conv2d_value_grad(x, np.ones((1, 4, 4, 3), np.float32),
                                         np.array([[0], [3]], np.int32), **attrs)
    with pytest.raises(tf.errors.InvalidArgumentError, match="uv must be"):
        ops.dct_sparse_conv2d(x, np.ones((1, 4, 4, 5), np.float32), np.float32(1),
                              np.ones(1, np.float32), np.array([[0], [0]], np.int32), no_bias,
                              with_offset=True, **attrs)
