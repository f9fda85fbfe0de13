"""The DCTpS math in `keras.ops`: the implementation for the JAX and PyTorch backends.

Under `KERAS_BACKEND="tensorflow"` the layers use the TensorFlow kernels of
`transforms`, `sparse_matmul`, `sparse_conv` and `conv_offset` (CSR products, XLA
clusters, `tf.signal`, the sparse convolution). Under every other backend they use the
functions here, written with `keras.ops` only, so they run (and differentiate, and
compile under `jax.jit`) wherever Keras does. They compute the same functions as the
TensorFlow kernels to rounding:

- `dct_offset`: `D x`, the first `units` orthonormal DCT-II coefficients of `x`
  zero-padded to `N = max(n, units)`, by Makhoul's algorithm (one real FFT of length `N`,
  any `N`); its gradient is the autodiff of the same ops (the DCT-III).
- `sparse_matmul`: `x @ S` from the values and (row, column) positions of `S`, by
  `"gather"` (take + multiply + segment sum, `batch * nnz` work; on PyTorch its own
  `torch.sparse.mm`, same work, several times faster) or `"materialized"` (scatter into a
  temporary dense `(n, m)` kernel, then a dense matmul).
- `dct_block`, `conv_offset_kernel`, `depthwise_offset_kernel`: the frozen offset
  kernels of the convolutions, regenerated from `arange` and `cos` on every call (never
  stored, not saved).
- `scatter_kernel`, `convolve`: the dense kernel `base + S` and the convolution applying
  it.

Nothing here is a weight: the only tensors built are `O(N)` twiddle tables (numpy
constants of the traced function) and the conv offset tables, `O(P * c_out)`.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_dctsparse.ops import kernel_choice
from keras_dctsparse.ops import kernel_registry

__all__ = [
    "GENERIC_KERNELS",
    "choose_kernel",
    "compute_fans",
    "conv_offset_kernel",
    "convolve",
    "dct2_ortho",
    "dct_block",
    "dct_offset",
    "depthwise_offset_kernel",
    "linear_vjp",
    "offset_sparse_matmul",
    "scatter_kernel",
    "sparse_matmul",
]

#: The sparse matmul kernels of this module (`"csr"` exists only on TensorFlow).
GENERIC_KERNELS = ("gather", "materialized")


def compute_fans(shape):
    """`(fan_in, fan_out)` of a kernel shape, as Keras's variance-scaling initializers count them.

    Args:
        shape: Kernel shape (`(n, m)` for a dense kernel, `(*kernel_size, c_in, c_out)`
            for a convolution).

    Returns:
        `(fan_in, fan_out)` as floats.

    Example:

    >>> compute_fans((3, 3, 16, 32))
    (144.0, 288.0)
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive_field = math.prod(shape[:-2])
    return float(shape[-2] * receptive_field), float(shape[-1] * receptive_field)


# -- the DCT offset of dense layers ------------------------------------------------------------


def dct2_ortho(x):
    """Orthonormal DCT-II of the last axis of a rank-2 tensor (Makhoul's algorithm, any length).

    `v = [x0, x2, x4, ..., x5, x3, x1]`, `V = rfft(v)` (length `N`),
    `X[k] = s_k Re(w_k V[k])` and `X[N - k] = -s_{N-k} Im(w_k V[k])` with
    `w_k = exp(-i pi k / (2N))`.

    Args:
        x: float32/float64 tensor of shape `(rows, N)`, static `N >= 2`.

    Returns:
        Tensor of the same shape and dtype: `x @ C_N^T`.

    Example:

    >>> y = dct2_ortho(keras.ops.ones((1, 4)))
    >>> [round(float(v), 4) + 0.0 for v in keras.ops.convert_to_numpy(y)[0]]
    [2.0, 0.0, 0.0, 0.0]
    """
    length = int(x.shape[-1])
    half_up = (length + 1) // 2
    dtype = keras.backend.standardize_dtype(x.dtype)
    reordered = ops.concatenate([x[:, 0::2], ops.flip(x[:, 1::2], axis=1)], axis=1)
    real, imag = ops.rfft(reordered)  # bins 0 .. N // 2
    angle = -np.pi * np.arange(length // 2 + 1) / (2 * length)
    cos = ops.convert_to_tensor(np.cos(angle), dtype)
    sin = ops.convert_to_tensor(np.sin(angle), dtype)
    low = real * cos - imag * sin  # X[0 .. N // 2] (unscaled)
    high = -ops.flip((real * sin + imag * cos)[:, 1:half_up], axis=1)  # X[N // 2 + 1 ..]
    scale = np.full(length, np.sqrt(2.0 / length))
    scale[0] = np.sqrt(1.0 / length)
    return ops.concatenate([low, high], axis=1) * ops.convert_to_tensor(scale, dtype)


def dct_offset(x, units):
    """`D x`: the first `units` orthonormal DCT-II coefficients of the last axis of `x`.

    `x` is zero-padded (or not) to `N = max(n, units)`; all singular values of the implied
    `(units x n)` matrix are 1. Same function as `keras_dctsparse.ops.transforms.dct_offset`.

    Args:
        x: float tensor of shape `(..., n)` with a static last dimension.
        units: Number of output coefficients `m`.

    Returns:
        Tensor of shape `(..., units)`, the dtype of `x`.

    Example:

    >>> tuple(dct_offset(keras.ops.ones((2, 4)), 3).shape)
    (2, 3)
    """
    n = int(x.shape[-1])
    units = int(units)
    length = max(n, units)
    if length == 1:
        return x  # the 1-point ortho DCT-II is the identity
    leading = ops.shape(x)[:-1]
    flat = ops.reshape(x, (-1, n))
    if length > n:
        flat = ops.pad(flat, [(0, 0), (0, length - n)])
    y = dct2_ortho(flat)[:, :units]
    return ops.reshape(y, (*leading, units))


def dct_block(rows, cols, dtype="float32"):
    """Top-left `(rows, cols)` block of the orthonormal DCT-II matrix `C_N`, `N = max(rows, cols)`.

    Generated from `arange` and `cos` (never stored). The angle index `k (2j + 1)` is
    reduced mod `4N` in int64 arithmetic before the float conversion, so the block is
    accurate for large `N`.

    Args:
        rows: Number of rows (output size).
        cols: Number of columns (input size).
        dtype: Float dtype of the result.

    Returns:
        A `(rows, cols)` tensor.

    Example:

    >>> tuple(dct_block(2, 4).shape)
    (2, 4)
    """
    n = max(int(rows), int(cols))
    table_dtype = "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"
    k = ops.arange(rows, dtype="int32")
    j = ops.arange(cols, dtype="int32")
    # k * (2j + 1) < 2 * N**2 fits int32 (JAX's default integer) while N < 32768; larger
    # blocks take their angle indices from numpy in int64.
    if 2 * n * n < 2**31:
        index = (k[:, None] * (2 * j[None, :] + 1)) % (4 * n)
        angle = ops.cast(index, table_dtype) * (math.pi / (2 * n))
        cos = ops.cos(angle)
    else:
        index = (np.arange(rows, dtype=np.int64)[:, None]
                 * (2 * np.arange(cols, dtype=np.int64)[None, :] + 1)) % (4 * n)
        cos = ops.convert_to_tensor(np.cos(index * (math.pi / (2 * n))), table_dtype)
    scale = np.full((int(rows), 1), math.sqrt(2.0 / n))
    scale[0] = math.sqrt(1.0 / n)
    return ops.cast(ops.convert_to_tensor(scale, table_dtype) * cos, dtype)


# -- the DCT offset kernels of convolutions ------------------------------------------------------


def conv_offset_kernel(kernel_size, in_channels, filters, groups=1, dtype="float32"):
    """The frozen DCT offset kernel `Kd` in Keras Conv layout `(*kernel_size, c_in / groups, c_out)`.

    Same kernel as `keras_dctsparse.ops.conv_offset.conv_offset_kernel`:
    `Kd[..., ch, o] = C_N[o, p * c_in_g + ch]` for spatial tap `p` (row-major), with
    `P = prod(kernel_size) * c_in_g` and `N = max(P, filters)`.

    Args:
        kernel_size: Tuple of spatial kernel sizes.
        in_channels: Input channels of the whole layer.
        filters: Output channels of the whole layer.
        groups: Number of groups (divides `in_channels` and `filters`).
        dtype: Float dtype of the kernel.

    Returns:
        A `(*kernel_size, in_channels // groups, filters)` tensor.

    Example:

    >>> tuple(conv_offset_kernel((3, 3), 16, 32).shape)
    (3, 3, 16, 32)
    """
    kernel_size = tuple(int(k) for k in kernel_size)
    in_group = int(in_channels) // int(groups)
    patch = math.prod(kernel_size) * in_group
    block = ops.transpose(dct_block(filters, patch, dtype))  # (P, c_out)
    return ops.reshape(block, (*kernel_size, in_group, int(filters)))


def depthwise_offset_kernel(kernel_size, in_channels, depth_multiplier, dtype="float32"):
    """The frozen DCT offset kernel in Keras DepthwiseConv layout `(*kernel_size, c_in, dm)`.

    Same kernel as `keras_dctsparse.ops.conv_offset.depthwise_offset_kernel`:
    `K[i, j, ch, m] = C_N[ch * dm + m, i * k_w + j]`, `N = max(kh * kw, c_in * dm)`.

    Args:
        kernel_size: Tuple of spatial kernel sizes.
        in_channels: Input channels `c_in`.
        depth_multiplier: Outputs per input channel `dm`.
        dtype: Float dtype of the kernel.

    Returns:
        A `(*kernel_size, in_channels, depth_multiplier)` tensor.

    Example:

    >>> tuple(depthwise_offset_kernel((3, 3), 8, 2).shape)
    (3, 3, 8, 2)
    """
    kernel_size = tuple(int(k) for k in kernel_size)
    block = ops.transpose(
        dct_block(int(in_channels) * int(depth_multiplier), math.prod(kernel_size), dtype)
    )  # (P, c_in * dm)
    return ops.reshape(block, (*kernel_size, int(in_channels), int(depth_multiplier)))


# -- the sparse part -------------------------------------------------------------------------------


def scatter_kernel(values, rows, cols, kernel_shape, base=None):
    """`base + S` as a dense tensor of `kernel_shape` (a temporary, never a weight).

    Args:
        values: `(nnz,)` values of `S`.
        rows: `(nnz,)` int rows of the `(prod(kernel_shape[:-1]), kernel_shape[-1])` view.
        cols: `(nnz,)` int columns.
        kernel_shape: Shape of the kernel.
        base: None, or a tensor of `kernel_shape` (the dtype of `values`) added to `S`.

    Returns:
        A tensor of `kernel_shape`.

    Example:

    >>> k = scatter_kernel(keras.ops.ones((2,)), np.array([0, 1]), np.array([1, 0]), (2, 2))
    >>> keras.ops.convert_to_numpy(k).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    kernel_shape = tuple(int(d) for d in kernel_shape)
    num_rows = math.prod(kernel_shape[:-1])
    positions = ops.stack([ops.cast(rows, "int32"), ops.cast(cols, "int32")], axis=1)
    # scatter_update, not scatter: the positions are distinct, and Keras 3.15's PyTorch
    # `scatter` loops over the entries in Python (seconds for a few thousand).
    zeros = ops.zeros((num_rows, kernel_shape[-1]), values.dtype)
    matrix = ops.scatter_update(zeros, positions, values)
    kernel = ops.reshape(matrix, kernel_shape)
    return kernel if base is None else kernel + base


def choose_kernel(input_dim, units, nnz, batch, dtype="float32"):
    """The cheaper of `GENERIC_KERNELS` for a layer by `kernel_choice.estimated_step_costs`.

    Args:
        input_dim: Number of inputs `n`.
        units: Number of outputs `m`.
        nnz: Number of nonzeros of `S`.
        batch: Rows of the input, or None (`kernel_choice.ASSUMED_BATCH`).
        dtype: Float dtype.

    Returns:
        `"gather"` or `"materialized"`.

    Example:

    >>> choose_kernel(100_000, 100_000, 10, batch=4)
    'gather'
    """
    batch = kernel_choice.ASSUMED_BATCH if batch is None else batch
    costs = kernel_choice.estimated_step_costs(input_dim, units, nnz, batch, dtype)
    return min(GENERIC_KERNELS, key=lambda name: costs.get(name, math.inf))


def _registry_backend():
    """The registry backend of these kernels: Keras's, or `KERAS_OPS` under TensorFlow."""
    backend = keras.backend.backend()
    return kernel_registry.KERAS_OPS if backend == "tensorflow" else backend


def sparse_matmul(x, values, rows, cols, units, kernel="auto"):
    """`x @ S` for `S` given by its values at `(rows, cols)` of an `(n, units)` matrix.

    Args:
        x: float tensor of shape `(batch, n)`.
        values: `(nnz,)` values (cast to the dtype of `x`).
        rows: `(nnz,)` int rows.
        cols: `(nnz,)` int columns.
        units: Number of columns `m` of `S`.
        kernel: `"auto"` (`choose_kernel`), `"gather"` or `"materialized"` (the
            kernels of `keras_dctsparse.ops.kernel_registry` for this backend).

    Returns:
        Tensor of shape `(batch, units)`, the dtype of `x`.

    Example:

    >>> y = sparse_matmul(keras.ops.ones((1, 3)), keras.ops.ones((2,)),
    ...                   np.array([0, 2]), np.array([1, 1]), units=2)
    >>> keras.ops.convert_to_numpy(y).tolist()
    [[0.0, 2.0]]
    """
    return kernel_registry.matmul(
        x, values, rows, cols, int(units), kernel=kernel, backend=_registry_backend()
    )


def offset_sparse_matmul(x, alpha, values, rows, cols, units, kernel="auto"):
    """`alpha * D x + x @ S`: the DCT offset (`dct_offset`) plus `sparse_matmul`.

    Same arguments as `sparse_matmul`, plus `alpha`, a scalar tensor of the dtype of `x`.

    Example:

    >>> y = offset_sparse_matmul(keras.ops.ones((1, 4)), 1.0, keras.ops.zeros((1,)),
    ...                          np.array([0]), np.array([0]), units=4)
    >>> [round(float(v), 4) + 0.0 for v in keras.ops.convert_to_numpy(y)[0]]
    [2.0, 0.0, 0.0, 0.0]
    """
    return kernel_registry.matmul(
        x, values, rows, cols, int(units), kernel=kernel, alpha=alpha,
        backend=_registry_backend(),
    )


def _prepare(x, values, rows, cols):
    """The kernels' argument types: values in the dtype of `x` (positions as given)."""
    return ops.cast(values, x.dtype), rows, cols


def _choose(x, input_dim, units, nnz):
    batch = x.shape[0]
    # An unknown or symbolic batch (e.g. jax2tf's shape polymorphism in `model.export`).
    batch = batch if isinstance(batch, int) else None
    return choose_kernel(input_dim, units, nnz, batch, keras.backend.standardize_dtype(x.dtype))


def _with_offset(product):
    """`alpha * D x + product(x, ...)`: the offset by `dct_offset` next to the product."""

    def offset_product(x, alpha, values, rows, cols, units):
        return product(x, values, rows, cols, units) + alpha * dct_offset(x, units)

    return offset_product


def _materialized(x, values, rows, cols, units):
    return ops.matmul(x, scatter_kernel(values, rows, cols, (int(x.shape[-1]), units)))


def _gather(x, values, rows, cols, units):
    products = ops.take(x, ops.cast(rows, "int32"), axis=1) * values  # (batch, nnz)
    summed = ops.segment_sum(
        ops.transpose(products), ops.cast(cols, "int32"), num_segments=int(units)
    )  # (units, batch)
    return ops.transpose(summed)


def _dense_matmul(x, matrix, units, alpha):
    outputs = ops.matmul(x, matrix)
    if alpha is not None:
        outputs = outputs + alpha * dct_offset(x, units)
    return outputs


def _torch_sparse_matmul(x, values, rows, cols, units):
    """`"gather"` on PyTorch: `torch.sparse.mm` forward and input gradient, sampled value gradient.

    Same `batch * nnz` work as take + segment sum, but PyTorch's own sparse kernel: measured
    about 5x faster for the product of a training step at 2048 x 2048, density 1%, batch
    256 (Keras's PyTorch `segment_sum` repeats the segment ids per example and scatters).
    The value gradient is the sampled product `sum_b x[b, rows] * dy[b, cols]`: autograd
    through `torch.sparse.mm` would build the dense `(m, n)` gradient of `S`.
    """
    return _torch_sparse_product().apply(x, values, rows.long(), cols.long(), units)


_TORCH_SPARSE_PRODUCT = []


def _torch_sparse_product():
    """The `torch.autograd.Function` of `_torch_sparse_matmul` (defined on first use)."""
    if _TORCH_SPARSE_PRODUCT:
        return _TORCH_SPARSE_PRODUCT[0]
    import torch

    def coo(indices, values, shape):
        return torch.sparse_coo_tensor(indices, values, shape, check_invariants=False)

    class SparseProduct(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, values, rows, cols, units):
            ctx.save_for_backward(x, values, rows, cols)
            ctx.units = units
            transposed = coo(torch.stack([cols, rows]), values, (units, x.shape[-1]))
            return torch.sparse.mm(transposed, x.T).T

        @staticmethod
        def backward(ctx, grad):
            x, values, rows, cols = ctx.saved_tensors
            grad_x = grad_values = None
            if ctx.needs_input_grad[0]:
                matrix = coo(torch.stack([rows, cols]), values, (x.shape[-1], ctx.units))
                grad_x = torch.sparse.mm(matrix, grad.T).T
            if ctx.needs_input_grad[1]:
                grad_values = (x[:, rows] * grad[:, cols]).sum(0)
            return grad_x, grad_values, None, None, None

    _TORCH_SPARSE_PRODUCT.append(SparseProduct)
    return SparseProduct


_GENERIC = (kernel_registry.KERAS_OPS,) + kernel_registry.GENERIC_BACKENDS
kernel_registry.register_kernel(kernel_registry.SparseKernel(
    "gather", _GENERIC, xla_safe=True, matmul=_gather, offset_matmul=_with_offset(_gather),
    description="take + multiply + segment sum (batch * nnz work)",
))
kernel_registry.register_kernel(kernel_registry.SparseKernel(
    "gather", ("torch",), xla_safe=True, matmul=_torch_sparse_matmul,
    offset_matmul=_with_offset(_torch_sparse_matmul),
    description="torch.sparse.mm forward and input gradient, sampled value gradient",
))
kernel_registry.register_kernel(kernel_registry.SparseKernel(
    "materialized", _GENERIC, xla_safe=True, matmul=_materialized,
    offset_matmul=_with_offset(_materialized), shape_allowed=kernel_choice.materialized_allowed,
    shape_limit="n * m <= kernel_choice.MAX_MATERIALIZED_ELEMENTS",
    description="S scattered into a temporary dense kernel, then a dense matmul",
))
kernel_registry.register_backend(_GENERIC, _prepare, _choose, _dense_matmul)


# -- convolutions ----------------------------------------------------------------------------------


def convolve(x, kernel, strides, padding, dilation_rate, depthwise=False):
    """Channels_last convolution of `x` by a Keras-layout kernel (grouped from its shape).

    Args:
        x: `(batch, *spatial, c_in)` tensor.
        kernel: `(*kernel_size, c_in / groups, c_out)` (or depthwise
            `(*kernel_size, c_in, dm)`) tensor.
        strides: Tuple of strides.
        padding: `"valid"` or `"same"`.
        dilation_rate: Tuple of dilation rates.
        depthwise: Whether `kernel` is a depthwise kernel.

    Returns:
        The channels_last output.

    Example:

    >>> y = convolve(keras.ops.ones((1, 5, 5, 2)), keras.ops.ones((3, 3, 2, 4)),
    ...              (1, 1), "valid", (1, 1))
    >>> tuple(y.shape)
    (1, 3, 3, 4)
    """
    if depthwise:
        return ops.depthwise_conv(
            x, kernel, strides=strides, padding=padding, data_format="channels_last",
            dilation_rate=dilation_rate,
        )
    return ops.conv(
        x, kernel, strides=strides, padding=padding, data_format="channels_last",
        dilation_rate=dilation_rate,
    )


def linear_vjp(function, shape, dtype, cotangent):
    """The gradient of `sum(function(k) * cotangent)` w.r.t. `k` at `k = 0`, on any backend.

    For a `function` linear in `k` (a convolution by the kernel `k`) this is its
    transpose applied to `cotangent`: the kernel gradient for that output gradient.

    Args:
        function: A function of one tensor of `shape`, linear in it.
        shape: Shape of `k`.
        dtype: Dtype of `k`.
        cotangent: Tensor of the shape of `function`'s output.

    Returns:
        A tensor of `shape`.

    Example:

    >>> x = keras.ops.convert_to_tensor(np.array([[1.0, 2.0]]))
    >>> g = linear_vjp(lambda k: keras.ops.matmul(x, k), (2, 1), "float64",
    ...                keras.ops.convert_to_tensor(np.array([[3.0]])))
    >>> keras.ops.convert_to_numpy(g).ravel().tolist()
    [3.0, 6.0]
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        kernel = tf.zeros(shape, dtype)
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            outputs = function(kernel)
        return tape.gradient(outputs, kernel, output_gradients=cotangent)
    if backend == "jax":
        import jax

        _, vjp = jax.vjp(function, jax.numpy.zeros(shape, dtype))
        return vjp(cotangent)[0]
    if backend == "torch":
        import torch

        kernel = torch.zeros(shape, dtype=cotangent.dtype, device=cotangent.device,
                             requires_grad=True)
        with torch.enable_grad():
            outputs = function(kernel)
            (gradient,) = torch.autograd.grad(outputs, kernel, grad_outputs=cotangent)
        return gradient
    raise ValueError(
        f"linear_vjp supports the tensorflow, jax and torch backends; KERAS_BACKEND is "
        f"{backend!r}."
    )
