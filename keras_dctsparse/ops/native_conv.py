"""The native DCTpS convolution: `alpha * conv(x, Kd) + conv(x, S)` by the compiled ops.

The offset is factored (method.md, section 2): `uv = x @ [cos | sin]`, a `1 x 1` product
`c_in -> 2 * filters` run by TensorFlow's matmul (oneDNN), then the depthwise DCT taps,
which the native op `DctSparseConv2D` applies together with the sparse part `conv(x, S)`
(`nnz` multiply-adds per output pixel, vectorized over 16 output pixels) in one pass over
the output. The gradient is two more native ops, so that TensorFlow prunes the input
gradient where nothing reads it: `DctSparseConv2DInputGrad` (the transposed sparse conv
and the transposed taps, which TensorFlow's autodiff of the `1 x 1` product turns into
`dx`) and `DctSparseConv2DValueGrad` (the sampled `dvalues`); `dalpha = sum(dy * offset)`.

Whether a layer may use these ops (the graph is not saved for serving, the library is
built) is decided by the caller (`keras_dctsparse.layers.conv`, `keras_dctsparse.native.policy`).
One group only; 1-D convolutions run as 2-D with a height of 1 (the length along the
width, which the ops tile).
"""

import math

import tensorflow as tf

from keras_dctsparse.native import library
from keras_dctsparse.ops.conv_offset import _dct_cos_sin
from keras_dctsparse.ops.conv_offset import _table_dtype
from keras_dctsparse.ops.native_matmul import records_gradient

__all__ = ["direct_conv2d", "explicit_pads", "native_conv", "native_conv2d"]


def _same_pads(size, kernel, stride, dilation):
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def explicit_pads(spatial, kernel_size, strides, padding, dilation):
    """`[top, bottom, left, right]` of TensorFlow's `"same"` or `"valid"` padding.

    Example:

    >>> explicit_pads((8, 8), (3, 3), (1, 1), "same", (1, 1))
    [1, 1, 1, 1]
    >>> explicit_pads((9, 9), (3, 3), (2, 2), "valid", (1, 1))
    [0, 0, 0, 0]
    """
    padding = str(padding).lower()
    if padding not in ("same", "valid"):
        raise ValueError(f"`padding` must be 'same' or 'valid'; received padding={padding!r}.")
    pads = []
    for size, kernel, stride, rate in zip(spatial, kernel_size, strides, dilation):
        pads += list(_same_pads(size, kernel, stride, rate)) if padding == "same" else [0, 0]
    return pads


def _uv_table(x, filters, patch):
    """The `(c_in, 2 * filters)` table `[cos | sin]` of `x @ [cos | sin]`, in `x`'s dtype.

    Generated in-graph (folded to a constant).
    """
    in_channels = int(x.shape[-1])
    n = max(patch, int(filters))
    cos, sin = _dct_cos_sin(int(filters), in_channels, n, _table_dtype(x.dtype))
    return tf.cast(tf.transpose(tf.concat([cos, sin], axis=0)), x.dtype)


def _uv(x, filters, patch):
    """`x @ [cos | sin]`: per pixel `U` (channels `[0, filters)`) and `V` (the rest).

    Multiplied by the table stored `(2 * filters, c_in)` (`transpose_b`), whose input
    gradient is then the plain product. (A call that records no gradient passes the table
    to the op instead, which multiplies image rows by it as it needs them.)
    """
    in_channels = int(x.shape[-1])
    table = tf.transpose(_uv_table(x, filters, patch))  # (2 * filters, c_in), folded
    flat = tf.matmul(tf.reshape(x, (-1, in_channels)), table, transpose_b=True)
    return tf.reshape(flat, tf.concat([tf.shape(x)[:-1], [2 * int(filters)]], axis=0))


def native_conv2d(x, alpha, values, positions, kernel_size, filters, strides=(1, 1),
                  padding="valid", dilation=(1, 1), bias=None):
    """`alpha * conv(x, Kd) + conv(x, S) + bias` (no offset when `alpha` is None), 2-D.

    The bias is added by the op as it writes each output tile (a separate `BiasAdd`
    reads and writes the whole output once more).

    Args:
        x: `(batch, h, w, c_in)` float32/float64 with static `h, w, c_in`.
        alpha: None, or the scalar offset scale (dtype of `x`).
        values: `(nnz,)` values of `S`.
        positions: `(2, nnz)` int32: rows of the `(kh * kw * c_in, filters)` matrix view
            of `S`, then output channels; sorted column-major.
        kernel_size, strides, dilation: 2-tuples of ints.
        filters: Output channels.
        padding: `"same"` or `"valid"`.
        bias: None, or the `(filters,)` bias (dtype of `x`).

    Returns:
        `(batch, h_out, w_out, filters)`, differentiable in `x`, `alpha`, `values` and
        `bias`.

    Example:

    >>> y = native_conv2d(tf.ones((1, 4, 4, 2)), tf.constant(1.0), tf.constant([0.0]),
    ...                   tf.constant([[0], [0]]), (3, 3), 3, padding="same")
    >>> tuple(y.shape)
    (1, 4, 4, 3)
    """
    ops = library.load()
    if x.shape.rank != 4 or None in x.shape[1:]:
        raise ValueError(
            "`x` must be (batch, h, w, channels) with static h, w and channels; received "
            f"shape {x.shape}."
        )
    kernel_size, strides, dilation = (tuple(int(v) for v in t)
                                      for t in (kernel_size, strides, dilation))
    in_channels = int(x.shape[-1])
    attrs = dict(
        kernel_size=list(kernel_size), strides=list(strides), dilations=list(dilation),
        pads=explicit_pads(tuple(int(d) for d in x.shape[1:3]), kernel_size, strides, padding,
                           dilation),
        filters=int(filters),
    )
    with_offset = alpha is not None
    with_bias = bias is not None
    scale = alpha if with_offset else tf.zeros((), x.dtype)
    bias = bias if with_bias else tf.zeros((0,), x.dtype)
    recording = records_gradient(x, scale, values, bias)
    patch = math.prod(kernel_size) * in_channels
    # A call that records no gradient (inference) passes the (c_in, 2 filters) table and the
    # op multiplies each work unit's image rows by it, so that uv never goes through memory.
    uv_is_table = with_offset and not recording
    if not with_offset:
        uv = tf.zeros((0, 0, 0, 0), x.dtype)
    elif uv_is_table:
        uv = _uv_table(x, filters, patch)
    else:
        uv = _uv(x, filters, patch)
    positions = tf.convert_to_tensor(positions, tf.int32)
    # alpha's gradient needs the offset: kept when a tape records this call, else
    # (inference) not written out, and recomputed should a gradient be asked for after all.
    keep_offset = with_offset and recording

    @tf.custom_gradient
    def conv(x, uv, scale, values, bias):
        y, offset = ops.dct_sparse_conv2d(x, uv, scale, values, positions, bias,
                                          with_offset=with_offset, offset_output=keep_offset,
                                          uv_is_table=uv_is_table, **attrs)

        def grad(dy):
            nonlocal offset
            if with_offset and not keep_offset:
                full_uv = _uv(x, filters, patch) if uv_is_table else uv
                offset = ops.dct_sparse_conv2d(x, full_uv, scale, tf.zeros_like(values),
                                               positions, tf.zeros((0,), x.dtype),
                                               with_offset=True, **attrs)[1]
            dx, duv = ops.dct_sparse_conv2d_input_grad(
                dy, scale, values, positions, tf.shape(x, out_type=tf.int64),
                in_channels=in_channels, with_offset=with_offset, **attrs,
            )
            if uv_is_table:
                # uv = x @ table inside the op: its share of dx, and the table's gradient.
                flat_duv = tf.reshape(duv, (-1, 2 * int(filters)))
                dx += tf.reshape(tf.matmul(flat_duv, uv, transpose_b=True), tf.shape(x))
                duv = tf.matmul(tf.reshape(x, (-1, in_channels)), flat_duv, transpose_a=True)
            dvalues = ops.dct_sparse_conv2d_value_grad(x, dy, positions, **attrs)
            dscale = tf.reduce_sum(dy * offset) if with_offset else tf.zeros_like(scale)
            dbias = tf.raw_ops.BiasAddGrad(out_backprop=dy) if with_bias else tf.zeros_like(bias)
            return dx, (duv if with_offset else tf.zeros_like(uv)), dscale, dvalues, dbias

        return y, grad

    return conv(x, uv, scale, values, bias)


def native_conv(x, alpha, values, positions, kernel_size, filters, strides, padding, dilation,
                bias=None):
    """`native_conv2d` for 1-D (run as 2-D with a height of 1) or 2-D inputs.

    Args:
        x: `(batch, *spatial, c_in)` with 1 or 2 static spatial dimensions.
        alpha, values, positions, filters, padding, bias: As for `native_conv2d`.
        kernel_size, strides, dilation: Tuples with one entry per spatial dimension.

    Returns:
        `(batch, *out_spatial, filters)`.

    Example:

    >>> y = native_conv(tf.ones((2, 10, 3)), None, tf.ones((1,)), tf.constant([[4], [1]]),
    ...                 (3,), 2, (1,), "valid", (1,))
    >>> tuple(y.shape)
    (2, 8, 2)
    """
    rank = x.shape.rank - 2
    if rank == 2:
        return native_conv2d(x, alpha, values, positions, kernel_size, filters, strides,
                             padding, dilation, bias)
    if rank != 1:
        raise ValueError(f"native_conv supports 1-D and 2-D convolutions; received rank {rank}.")
    # The length runs along the width, which the ops tile by 16 output pixels (a height
    # of 1: the taps of a (1, k) kernel are numbered as those of the (k,) kernel).
    pair = lambda v: (1,) + tuple(v)  # noqa: E731
    y = native_conv2d(x[:, None, :, :], alpha, values, positions, pair(kernel_size), filters,
                      pair(strides), padding, pair(dilation), bias)
    return y[:, 0, :, :]


def direct_conv2d(x, kernel, strides=(1, 1), padding="valid"):
    """`conv(x, kernel)` by the native direct convolution (`DctSparseDirectConv2D`), 2-D.

    A dense convolution for patches of few channels, where TensorFlow's `Conv2D` is slow
    (`kernel_choice.use_direct_conv` says where); the fused path of `DCTSparseConv2D` runs
    its effective kernel `alpha * Kd + S` through it there. The kernel gradient is
    `DctSparseDirectConv2DFilterGrad`; the input gradient TensorFlow's
    `Conv2DBackpropInput` (as fast as the direct form on those shapes, and pruned where
    nothing reads it, as in a network's first layer).

    Args:
        x: `(batch, h, w, c_in)` float32/float64 with static `h, w, c_in`.
        kernel: `(kh, kw, c_in, filters)`, dtype of `x`.
        strides: 2-tuple of ints.
        padding: `"same"` or `"valid"`.

    Returns:
        `(batch, h_out, w_out, filters)`, differentiable in `x` and `kernel`.

    Raises:
        ValueError: for an `x` without static spatial sizes and channels.

    Example:

    >>> y = direct_conv2d(tf.ones((1, 4, 4, 1)), tf.ones((3, 3, 1, 2)), padding="same")
    >>> float(y[0, 1, 1, 0]), float(y[0, 0, 0, 0])
    (9.0, 4.0)
    """
    ops = library.load()
    if x.shape.rank != 4 or None in x.shape[1:]:
        raise ValueError(
            "`x` must be (batch, h, w, channels) with static h, w and channels; received "
            f"shape {x.shape}."
        )
    strides = tuple(int(v) for v in strides)
    kernel_size = tuple(int(d) for d in kernel.shape[:2])
    filters = int(kernel.shape[3])
    attrs = dict(
        kernel_size=list(kernel_size), strides=list(strides), dilations=[1, 1],
        pads=explicit_pads(tuple(int(d) for d in x.shape[1:3]), kernel_size, strides, padding,
                           (1, 1)),
        filters=filters,
    )

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=kernel, out_backprop=dy,
                strides=[1, *strides, 1], padding=str(padding).upper(),
            )
            return dx, ops.dct_sparse_direct_conv2d_filter_grad(x, dy, **attrs)

        return ops.dct_sparse_direct_conv2d(x, kernel, **attrs), grad

    return conv(x, kernel)
