"""The compiled ops of `keras_dctsparse/native/src/direct_conv.cc` against im2col.

`DctSparseDirectConv2D(x, kernel)` is a dense convolution (`im2col(x) @ kernel`) and
`DctSparseDirectConv2DFilterGrad(x, dy)` its kernel gradient (`im2col(x)^T dy`), for every
geometry the ops take (strides, dilation, "same"/"valid" padding, output widths that do not
fill a block of pixels, channel counts that are not multiples of the lanes), on fresh
random inputs.
"""

import numpy as np
import pytest

from keras_dctsparse.native import library
from numpy_reference import _pads
from numpy_reference import im2col

pytestmark = pytest.mark.skipif(
    not library.available(), reason=f"native kernels unavailable: {library.unavailable_reason()}"
)

# (batch, h, w, c_in, filters, kernel, strides, dilation, padding)
CASES = [
    (3, 28, 28, 1, 6, (5, 5), (1, 1), (1, 1), "same"),  # LeNet-5's conv1
    (2, 14, 14, 6, 16, (5, 5), (1, 1), (1, 1), "valid"),  # LeNet-5's conv2
    (2, 9, 7, 3, 64, (3, 3), (1, 1), (1, 1), "same"),
    (1, 10, 11, 2, 33, (3, 2), (2, 1), (1, 1), "same"),
    (2, 12, 13, 4, 40, (3, 3), (1, 2), (2, 1), "valid"),
    (1, 5, 3, 5, 7, (3, 3), (1, 1), (1, 1), "same"),  # 3 output columns: one partial block
    (2, 6, 6, 3, 9, (1, 1), (1, 1), (1, 1), "valid"),
    (1, 11, 9, 2, 24, (3, 3), (3, 3), (2, 2), "same"),
    # Fewer filters than half a vector: whole-vector stores would run past the row's end.
    (2, 7, 6, 3, 1, (3, 3), (1, 1), (1, 1), "same"),
    (3, 4, 4, 1, 2, (3, 3), (1, 1), (1, 1), "same"),
    (2, 9, 5, 2, 3, (3, 3), (1, 1), (1, 1), "valid"),
]


def _problem(case, rng):
    batch, h, w, c_in, filters, kernel, strides, dilation, padding = case
    pads = []
    for size, k, s, d in zip((h, w), kernel, strides, dilation):
        (before, after), _ = _pads(size, k, s, d, padding)
        pads += [before, after]
    attrs = dict(kernel_size=list(kernel), strides=list(strides), dilations=list(dilation),
                 pads=pads, filters=filters)
    x = rng.standard_normal((batch, h, w, c_in))
    weights = rng.standard_normal((*kernel, c_in, filters))
    patches = im2col(x, kernel, strides, padding, dilation)
    return x, weights, patches, attrs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[1:5])) + f"-{c[8]}")
def test_forward_and_filter_gradient_match_im2col(case, dtype):
    rng = np.random.default_rng()
    x, weights, patches, attrs = _problem(case, rng)
    ops = library.load()
    tol = 2e-6 if dtype == np.float32 else 1e-13
    flat_kernel = weights.reshape(-1, weights.shape[-1])
    y = ops.dct_sparse_direct_conv2d(x.astype(dtype), weights.astype(dtype), **attrs).numpy()
    want = patches @ flat_kernel
    assert y.shape == want.shape
    assert np.abs(y - want).max() <= tol * (np.abs(patches) @ np.abs(flat_kernel)).max()
    dy = rng.standard_normal(want.shape)
    dkernel = ops.dct_sparse_direct_conv2d_filter_grad(x.astype(dtype), dy.astype(dtype),
                                                       **attrs).numpy()
    assert dkernel.shape == weights.shape
    want_dk = np.einsum("bhwp,bhwf->pf", patches, dy)
    bound = np.einsum("bhwp,bhwf->pf", np.abs(patches), np.abs(dy))
    assert np.all(np.abs(dkernel.reshape(want_dk.shape) - want_dk) <= 10 * tol * bound + 1e-30)


def test_the_ops_check_their_arguments():
    ops = library.load()
    x = np.zeros((1, 6, 6, 2), np.float32)
    attrs = dict(kernel_size=[3, 3], strides=[1, 1], dilations=[1, 1], pads=[1, 1, 1, 1],
                 filters=4)
    with pytest.raises(Exception, match=r"kernel must be \(3, 3, 2, 4\)"):
        ops.dct_sparse_direct_conv2d(x, np.zeros((3, 3, 1, 4), np.float32), **attrs)
    with pytest.raises(Exception, match=r"dy must be \(1, 6, 6, 4\)"):
        ops.dct_sparse_direct_conv2d_filter_grad(x, np.zeros((1, 6, 5, 4), np.float32), **attrs)
    with pytest.raises(Exception, match="kernel_size.* at most 64"):
        ops.dct_sparse_direct_conv2d(
            np.zeros((1, 70, 6, 1), np.float32), np.zeros((65, 1, 1, 4), np.float32),
            **{**attrs, "kernel_size": [65, 1], "pads": [0, 0, 0, 0]})
