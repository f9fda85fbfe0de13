"""The frozen DCT offset of a convolution, regenerated in-graph (pure TF, no Keras state).

A DCT-plus-sparse convolution computes ``y = conv(x, alpha * Kd + S)``. ``Kd`` is the frozen
offset kernel: output channel ``c`` is the ``c``-th orthonormal DCT-II coefficient of each
flattened input patch (spatial position row-major, channel index fastest), truncated when
``c_out < P`` and zero-padded when ``c_out > P`` (``P`` = patch length), so that the
``(c_out x P)`` matrix behind ``Kd`` is the top-left block of ``C_N`` with ``N = max(P, c_out)``
and all its singular values are 1.

Nothing here is stored as a weight: tables are rebuilt from ``tf.range`` and ``cos`` on every
call, which costs ``O(P * c_out)`` and is negligible next to the convolution itself.

Three ways to apply the offset to an input ``x`` are provided (all exact up to rounding):

* ``conv_offset_direct``: regenerate ``Kd`` and run ``tf.nn.convolution``. Costs as much as
  a dense convolution; supports any rank and ``groups``.
* ``conv_offset_matmul``: the offset is rank 2 per output channel over (patch position,
  channel). ``U = x @ cos``, ``V = x @ sin`` (1x1 convs, ``c_in x c_out`` each), then
  depthwise ``k x k`` convs with cos/sin taps, summed. For 3x3 ``c -> c`` this is about 2/9 of the
  dense multiply-adds.
* ``conv_offset_fft``: the same ``U, V`` from a length-``2N`` real FFT of each pixel's channel
  vector times a phase, then the same depthwise conv. Fewest flops, but the FFT length ``2N``
  grows with ``k * k * c_in``.

``conv_offset`` dispatches between them.

Layout is channels_last throughout (Keras's default): ``x`` is ``(batch, *spatial, c_in)``.
"""

import math

import tensorflow as tf

__all__ = [
    "METHODS",
    "cos_sin_half_turns",
    "dct_scale",
    "dct_block",
    "conv_offset_kernel",
    "depthwise_offset_kernel",
    "conv_offset_direct",
    "conv_offset_matmul",
    "conv_offset_fft",
    "auto_method_for",
    "conv_offset",
]

METHODS = ("auto", "direct", "matmul", "fft")


# ----------------------------------------------------------------------------------------------
# Argument normalization
# ----------------------------------------------------------------------------------------------


def _as_tuple(value, rank, name):
    """Returns ``value`` as a tuple of ``rank`` positive Python ints.

    Args:
        value: An int (broadcast to all dimensions) or a sequence of ``rank`` ints.
        rank: Number of spatial dimensions.
        name: Argument name, used in error messages.

    Returns:
        A tuple of ``rank`` ints.

    Example:
        >>> _as_tuple(2, 2, "strides")
        (2, 2)
    """
    values = (value,) * rank if isinstance(value, int) else tuple(value)
    if len(values) != rank or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(
            f"`{name}` must be a positive int or a tuple of {rank} positive ints, "
            f"got {name}={value!r}."
        )
    return values


def _kernel_tuple(kernel_size):
    """Validates an explicit ``kernel_size`` tuple (its length is the spatial rank).

    Args:
        kernel_size: A non-empty sequence of positive ints.

    Returns:
        The kernel size as a tuple of ints.

    Example:
        >>> _kernel_tuple([3, 3])
        (3, 3)
    """
    if isinstance(kernel_size, int):
        raise ValueError(
            "`kernel_size` must be a tuple whose length is the spatial rank "
            f"(e.g. (3, 3) for Conv2D, (3,) for Conv1D), got kernel_size={kernel_size!r}."
        )
    return _as_tuple(kernel_size, len(tuple(kernel_size)) or -1, "kernel_size")


def _padding(padding):
    """Returns ``"SAME"`` or ``"VALID"`` for a case-insensitive padding name.

    Args:
        padding: ``"same"`` or ``"valid"`` (any case).

    Returns:
        The upper-case padding string that ``tf.nn`` expects.

    Example:
        >>> _padding("same")
        'SAME'
    """
    upper = str(padding).upper()
    if upper not in ("SAME", "VALID"):
        raise ValueError(f"`padding` must be 'same' or 'valid', got padding={padding!r}.")
    return upper


def _divide(total, groups, name):
    """Returns ``total // groups``, checking that ``groups`` divides ``total``.

    Args:
        total: Channel count.
        groups: Number of groups.
        name: Name of the channel argument, for error messages.

    Returns:
        Channels per group.

    Example:
        >>> _divide(8, 2, "filters")
        4
    """
    if not isinstance(groups, int) or groups < 1 or total % groups:
        raise ValueError(
            f"`groups` must be a positive int dividing `{name}`, got groups={groups!r} "
            f"and {name}={total}."
        )
    return total // groups


def _table_dtype(dtype):
    """The float dtype the cos/sin tables are computed in (float64 stays, else float32).

    Args:
        dtype: Requested output dtype.

    Returns:
        ``tf.float64`` for float64, else ``tf.float32``.

    Example:
        >>> _table_dtype(tf.float16)
        tf.float32
    """
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


def _spatial(x, kernel_size):
    """Checks ``x`` against ``kernel_size`` and returns (spatial rank, kernel tuple, c_in).

    Args:
        x: Input tensor ``(batch, *spatial, c_in)`` with a static channel dimension.
        kernel_size: An int or a tuple with one entry per spatial dimension.

    Returns:
        ``(rank, kernel_size_tuple, in_channels)``.

    Example:
        >>> _spatial(tf.zeros((1, 8, 8, 3)), 3)
        (2, (3, 3), 3)
    """
    rank = x.shape.rank - 2
    if rank < 1:
        raise ValueError(f"`x` must have shape (batch, *spatial, channels), got {x.shape}.")
    in_channels = x.shape[-1]
    if in_channels is None:
        raise ValueError("The channel dimension of `x` must be known statically.")
    return rank, _as_tuple(kernel_size, rank, "kernel_size"), int(in_channels)


# ----------------------------------------------------------------------------------------------
# Exact DCT tables
# ----------------------------------------------------------------------------------------------


def cos_sin_half_turns(index, n, dtype):
    """``cos`` and ``sin`` of ``pi * index / (2n)`` with the index reduced mod ``4n`` first.

    The reduction is done in int64, so the float angle is always below ``2 pi`` and exact to
    rounding even when ``index`` is far beyond float precision (large ``N``).

    Args:
        index: Integer tensor (any int dtype, any shape).
        n: The DCT size ``N`` (Python int).
        dtype: Float dtype of the result.

    Returns:
        ``(cos, sin)`` tensors of ``index``'s shape.

    Example:
        >>> c, s = cos_sin_half_turns(tf.constant([0, 1]), 1, tf.float32)  # angles 0, pi/2
    """
    reduced = tf.math.floormod(tf.cast(index, tf.int64), 4 * n)
    angle = tf.cast(reduced, dtype) * tf.constant(math.pi / (2 * n), dtype)
    return tf.cos(angle), tf.sin(angle)


def dct_scale(rows, n, dtype=tf.float32):
    """The orthonormal DCT-II row scales ``s_k`` for ``k < rows``.

    Args:
        rows: Number of rows (Python int).
        n: The DCT size ``N`` (Python int).
        dtype: Float dtype of the result.

    Returns:
        A ``(rows,)`` tensor: ``sqrt(1/N)`` at 0, ``sqrt(2/N)`` elsewhere.

    Example:
        >>> [round(float(s), 4) for s in dct_scale(3, 4)]
        [0.5, 0.7071, 0.7071]
    """
    k = tf.range(rows)
    return tf.where(
        k == 0, tf.constant(math.sqrt(1.0 / n), dtype), tf.constant(math.sqrt(2.0 / n), dtype)
    )


def _dct_cos_sin(rows, cols, n, dtype, anchor=None):
    """Unscaled ``cos``/``sin`` of the DCT-II angles ``pi * k * (2j + 1) / (2N)``.

    Args:
        rows: Number of frequencies ``k`` (Python int).
        cols: Number of samples ``j`` (Python int).
        n: The DCT size ``N``.
        dtype: Float dtype.
        anchor: None, or an integer scalar tensor whose value is 0, added to both index
            ranges (see `dct_block`).

    Returns:
        ``(cos, sin)``, each ``(rows, cols)``.

    Example:
        >>> c, s = _dct_cos_sin(2, 4, 4, tf.float32)
    """
    if anchor is None:
        k = tf.range(rows, dtype=tf.int64)
        j = tf.range(cols, dtype=tf.int64)
    else:
        # Bounds that depend on the anchor: a RANGE with constant bounds is folded.
        anchor = tf.cast(anchor, tf.int64)
        k = tf.range(anchor, anchor + rows)
        j = tf.range(anchor, anchor + cols)
    return cos_sin_half_turns(k[:, None] * (2 * j[None, :] + 1), n, dtype)


def dct_block(rows, cols, dtype=tf.float32, anchor=None):
    """Top-left ``(rows, cols)`` block of the orthonormal DCT-II matrix ``C_N``.

    ``N = max(rows, cols)`` and ``C_N[k, j] = s_k * cos(pi * k * (2j + 1) / (2N))``. The block
    is generated in-graph (never stored); the angle is reduced mod ``4N`` in integers, so it is
    accurate for large ``N``. For ``rows <= cols`` the rows are orthonormal, otherwise the
    columns are: every singular value is 1.

    Args:
        rows: Number of rows (output size ``m``).
        cols: Number of columns (input size ``n``).
        dtype: Float dtype of the result.
        anchor: None, or an integer scalar tensor that is 0 at run time but unknown when
            the graph is built (for example ``min(batch_size, 0)``). It is added to the
            index ranges, so a graph optimizer cannot fold the block into a
            ``rows x cols`` constant: the TFLite export uses it to keep ``D`` implicit.

    Returns:
        A ``(rows, cols)`` tensor.

    Example:
        >>> d = dct_block(2, 4)
        >>> d.shape
        TensorShape([2, 4])
    """
    n = max(rows, cols)
    table_dtype = _table_dtype(dtype)
    cos, _ = _dct_cos_sin(rows, cols, n, table_dtype, anchor)
    return tf.cast(dct_scale(rows, n, table_dtype)[:, None] * cos, dtype)


# ----------------------------------------------------------------------------------------------
# Offset kernels
# ----------------------------------------------------------------------------------------------


def conv_offset_kernel(
    kernel_size, in_channels, filters, groups=1, dtype=tf.float32, anchor=None
):
    """The frozen DCT offset kernel ``Kd`` in Keras Conv layout ``(*kernel_size, c_in_g, c_out)``.

    With ``c_in_g = in_channels / groups``, ``P = prod(kernel_size) * c_in_g`` (the patch of
    one group) and ``N = max(P, filters)``: ``Kd[i, j, ch, o] = C_N[o, (i * k_w + j) * c_in_g
    + ch]`` (2-D; for other ranks the spatial index is flattened row-major). As a
    ``(filters x P)`` matrix it is the top-left block of ``C_N``, so all its singular values
    are 1. With ``groups > 1`` this is the authors' construction (``DCTconv2d`` in their
    code): output channel ``o`` (in group ``o // (filters / groups)``, Keras's contiguous
    grouping) applies row ``o`` of ``C_N`` to its own group's patch, and ``N`` counts ALL
    output channels. It is not one ``max(P, filters / groups)`` block repeated per group.

    Args:
        kernel_size: Tuple of spatial kernel sizes, e.g. ``(3, 3)`` (Conv2D), ``(5,)``
            (Conv1D); its length is the spatial rank.
        in_channels: Input channels ``c_in`` of the whole layer.
        filters: Output channels ``c_out`` of the whole layer.
        groups: Number of groups; must divide ``in_channels`` and ``filters``.
        dtype: Float dtype of the kernel.
        anchor: None, or a run-time zero that keeps the kernel from being constant-folded
            (see `dct_block`).

    Returns:
        A ``(*kernel_size, in_channels // groups, filters)`` tensor.

    Example:
        >>> conv_offset_kernel((3, 3), 16, 32).shape
        TensorShape([3, 3, 16, 32])
    """
    kernel_size = _kernel_tuple(kernel_size)
    c_in_g = _divide(in_channels, groups, "in_channels")
    _divide(filters, groups, "filters")
    patch = math.prod(kernel_size) * c_in_g
    block = tf.transpose(dct_block(filters, patch, dtype, anchor))  # (P, c_out)
    return tf.reshape(block, (*kernel_size, c_in_g, filters))


def depthwise_offset_kernel(
    kernel_size, in_channels, depth_multiplier, dtype=tf.float32, anchor=None
):
    """The frozen DCT offset kernel in Keras DepthwiseConv layout ``(*kernel_size, c_in, dm)``.

    Depthwise is the grouped construction with ``groups = c_in`` (the authors' MobileNetV2
    uses ``groups=planes``): the patch of output channel ``o = ch * dm + m`` is channel
    ``ch``'s ``P = prod(kernel_size)`` window, and it applies row ``o`` of ``C_N`` with
    ``N = max(P, c_in * dm)``: ``K[i, j, ch, m] = C_N[ch * dm + m, i * k_w + j]``. Every
    output channel gets its own DCT row (not the same box filter ``C_P[0]`` everywhere).

    Args:
        kernel_size: Tuple of spatial kernel sizes, e.g. ``(3, 3)``.
        in_channels: Input channels ``c_in``.
        depth_multiplier: Outputs per input channel.
        dtype: Float dtype of the kernel.
        anchor: None, or a run-time zero that keeps the kernel from being constant-folded
            (see `dct_block`).

    Returns:
        A ``(*kernel_size, in_channels, depth_multiplier)`` tensor.

    Example:
        >>> depthwise_offset_kernel((3, 3), 8, 2).shape
        TensorShape([3, 3, 8, 2])
    """
    kernel_size = _kernel_tuple(kernel_size)
    grouped = conv_offset_kernel(
        kernel_size, in_channels, in_channels * depth_multiplier, in_channels, dtype, anchor
    )
    return tf.reshape(grouped, (*kernel_size, in_channels, depth_multiplier))


# ----------------------------------------------------------------------------------------------
# Applying the offset
# ----------------------------------------------------------------------------------------------


def conv_offset_direct(x, kernel_size, filters, strides=1, padding="valid", dilation=1, groups=1):
    """Offset by regenerating ``Kd`` and running ``tf.nn.convolution`` (any rank, groups).

    Args:
        x: Input ``(batch, *spatial, c_in)`` (channels_last), static ``c_in``.
        kernel_size: Int or tuple, one entry per spatial dimension.
        filters: Output channels ``c_out``.
        strides: Int or tuple.
        padding: ``"same"`` or ``"valid"``.
        dilation: Int or tuple (dilation rate).
        groups: Number of groups.

    Returns:
        The offset ``conv(x, Kd)`` of shape ``(batch, *out_spatial, filters)``.

    Example:
        >>> y = conv_offset_direct(tf.ones((2, 8, 8, 4)), 3, 16, padding="same")
        >>> y.shape
        TensorShape([2, 8, 8, 16])
    """
    rank, kernel_size, in_channels = _spatial(x, kernel_size)
    kernel = conv_offset_kernel(kernel_size, in_channels, filters, groups, x.dtype)
    return tf.nn.convolution(
        x,
        kernel,
        strides=_as_tuple(strides, rank, "strides"),
        padding=_padding(padding),
        dilations=_as_tuple(dilation, rank, "dilation"),
    )


def _depthwise_taps(kernel_size, in_channels, filters, n, dtype):
    """Depthwise taps ``s_c cos(theta)`` (for ``U``) and ``-s_c sin(theta)`` (for ``V``).

    ``theta[t, c] = pi * c * t * c_in / N`` with ``t`` the row-major spatial tap index.

    Args:
        kernel_size: Tuple of 2 spatial sizes.
        in_channels: ``c_in``.
        filters: ``c_out``.
        n: The DCT size ``N``.
        dtype: Float dtype.

    Returns:
        ``(u_taps, v_taps)``, each a ``(k_h, k_w, filters, 1)`` depthwise filter.

    Example:
        >>> u_taps, v_taps = _depthwise_taps((3, 3), 4, 8, 36, tf.float32)
        >>> u_taps.shape
        TensorShape([3, 3, 8, 1])
    """
    t = tf.range(math.prod(kernel_size), dtype=tf.int64)[:, None]
    c = tf.range(filters, dtype=tf.int64)[None, :]
    cos, sin = cos_sin_half_turns(2 * in_channels * t * c, n, dtype)
    scale = dct_scale(filters, n, dtype)
    shape = (*kernel_size, filters, 1)
    return tf.reshape(cos * scale, shape), tf.reshape(-sin * scale, shape)


def _same_pads(size, kernel, stride, dilation):
    """TF's ``"SAME"`` padding ``(before, after)`` for one dimension.

    Args:
        size: Input length (scalar int tensor).
        kernel: Kernel length.
        stride: Stride.
        dilation: Dilation rate.

    Returns:
        ``[before, after]`` as an int32 tensor.

    Example:
        >>> _same_pads(tf.constant(5), 3, 2, 1).numpy()
        array([1, 1], dtype=int32)
    """
    out = (size + stride - 1) // stride
    total = tf.maximum((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return tf.stack([total // 2, total - total // 2])


def _depthwise_conv2d(x, taps, strides, padding, dilation):
    """``tf.nn.depthwise_conv2d`` that also accepts unequal strides (TF's kernel does not).

    Unequal strides are done as an explicitly padded stride-1 conv, then subsampled; TF
    forbids strides > 1 together with dilation > 1 anyway.

    Args:
        x: ``(batch, h, w, channels)``.
        taps: ``(k_h, k_w, channels, 1)``.
        strides: 2-tuple.
        padding: ``"SAME"`` or ``"VALID"``.
        dilation: 2-tuple.

    Returns:
        The depthwise convolution, as ``tf.nn.convolution`` would compute it.

    Example:
        >>> x, taps = tf.ones((1, 5, 5, 2)), tf.ones((3, 3, 2, 1))
        >>> _depthwise_conv2d(x, taps, (1, 2), "SAME", (1, 1)).shape
        TensorShape([1, 5, 3, 2])
    """
    if strides[0] == strides[1]:
        return tf.nn.depthwise_conv2d(x, taps, (1, *strides, 1), padding, dilations=dilation)
    if padding == "SAME":
        shape = tf.shape(x)
        pads = [
            _same_pads(shape[axis + 1], taps.shape[axis], strides[axis], dilation[axis])
            for axis in range(2)
        ]
        zero = tf.zeros((2,), tf.int32)
        x = tf.pad(x, tf.stack([zero, *pads, zero]))
    full = tf.nn.depthwise_conv2d(x, taps, (1, 1, 1, 1), "VALID", dilations=dilation)
    return full[:, :: strides[0], :: strides[1], :]


def _constant_depthwise_conv2d(x, taps, strides, padding, dilation):
    """``_depthwise_conv2d`` by constant ``taps`` (no gradient for them).

    With stride and dilation 1 the input gradient is itself a depthwise conv: of ``dy``
    by the spatially flipped taps, padded so that it is the exact adjoint. In a profile of
    the sparse-path train step (32 x 32 x 128, batch 32, 0.1%), TensorFlow's
    ``DepthwiseConv2dNativeBackpropInput`` took 3.1 ms per call against 1.4 ms for the
    forward depthwise conv; the flipped conv took 1.7-2.2 ms. Other strides and dilations
    keep TensorFlow's gradient.

    Args:
        x: ``(batch, h, w, channels)``.
        taps: ``(k_h, k_w, channels, 1)`` constant depthwise filter.
        strides: 2-tuple.
        padding: ``"SAME"`` or ``"VALID"``.
        dilation: 2-tuple.

    Returns:
        The depthwise convolution, as ``_depthwise_conv2d`` computes it.

    Example:
        >>> x, taps = tf.ones((1, 5, 5, 2)), tf.ones((3, 3, 2, 1))
        >>> _constant_depthwise_conv2d(x, taps, (1, 1), "SAME", (1, 1)).shape
        TensorShape([1, 5, 5, 2])
    """
    if tuple(strides) != (1, 1) or tuple(dilation) != (1, 1):
        return _depthwise_conv2d(x, taps, strides, padding, dilation)
    flipped = tf.reverse(taps, [0, 1])
    adjoint_pads = [[0, 0]]
    for axis in range(2):
        span = taps.shape[axis] - 1
        before = span // 2 if padding == "SAME" else 0
        after = span - before if padding == "SAME" else 0
        adjoint_pads.append([span - before, span - after])
    adjoint_pads.append([0, 0])

    @tf.custom_gradient
    def convolve(inputs):
        def grad(dy):
            return tf.nn.depthwise_conv2d(dy, flipped, (1, 1, 1, 1), adjoint_pads)

        return tf.nn.depthwise_conv2d(inputs, taps, (1, 1, 1, 1), padding), grad

    return convolve(x)


def _uv_matmul(x, filters, n):
    """``U`` and ``V`` per pixel as two ``(c_in x c_out)`` matmuls (1x1 convs).

    ``U_c = sum_ch x_ch cos(pi c (2ch + 1) / (2N))``, ``V_c`` the same with ``sin``. Two
    separate products (rather than one against ``[cos | sin]``) avoid slicing the result,
    which is measurably faster on CPU, backward especially.

    Args:
        x: ``(..., c_in)``.
        filters: ``c_out``.
        n: The DCT size ``N``.

    Returns:
        ``(U, V)``, each ``(..., filters)``.

    Example:
        >>> u, v = _uv_matmul(tf.ones((2, 4)), 3, 36)
        >>> u.shape
        TensorShape([2, 3])
    """
    in_channels = x.shape[-1]
    flat = tf.reshape(x, (-1, in_channels))
    shape = tf.concat([tf.shape(x)[:-1], [filters]], axis=0)
    tables = _dct_cos_sin(filters, in_channels, n, _table_dtype(x.dtype))
    return tuple(
        tf.reshape(tf.matmul(flat, tf.cast(table, x.dtype), transpose_b=True), shape)
        for table in tables
    )


def _uv_fft(x, filters, n):
    """``U`` and ``V`` per pixel from a length-``2N`` real FFT of the channel vector.

    ``U - iV = exp(-i pi c / (2N)) * FFT_2N(x zero-padded)[c]`` for ``c < c_out``.

    Args:
        x: ``(..., c_in)``.
        filters: ``c_out`` (at most ``N``).
        n: The DCT size ``N``.

    Returns:
        ``(U, V)``, each ``(..., filters)`` in ``x.dtype``.

    Example:
        >>> u, v = _uv_fft(tf.ones((2, 4)), 3, 36)
        >>> u.shape
        TensorShape([2, 3])
    """
    real_dtype = _table_dtype(x.dtype)
    spectrum = tf.signal.rfft(tf.cast(x, real_dtype), fft_length=[2 * n])[..., :filters]
    cos, sin = cos_sin_half_turns(tf.range(filters), n, real_dtype)
    phased = spectrum * tf.complex(cos, -sin)
    return tf.cast(tf.math.real(phased), x.dtype), tf.cast(-tf.math.imag(phased), x.dtype)


def _conv_offset_factored(x, kernel_size, filters, strides, padding, dilation, uv_fn):
    """Shared body of the factored variants: per-pixel ``U, V``, then depthwise taps.

    Conv1D inputs are run as 2-D with a width of 1, which lets strides/dilation be passed
    as equal pairs to the depthwise kernel.

    Args:
        x: ``(batch, *spatial, c_in)`` with 1 or 2 spatial dimensions.
        kernel_size: Int or tuple.
        filters: ``c_out``.
        strides: Int or tuple.
        padding: ``"same"`` or ``"valid"``.
        dilation: Int or tuple.
        uv_fn: ``_uv_matmul`` or ``_uv_fft``.

    Returns:
        The offset, as ``conv_offset_direct`` computes it with ``groups=1``.

    Example:
        >>> y = _conv_offset_factored(tf.ones((1, 6, 6, 2)), 3, 4, 1, "same", 1, _uv_fft)
    """
    rank, kernel_size, in_channels = _spatial(x, kernel_size)
    if rank not in (1, 2):
        raise ValueError(f"The factored offset supports 1-D and 2-D convs, got rank {rank}.")
    strides = _as_tuple(strides, rank, "strides")
    dilation = _as_tuple(dilation, rank, "dilation")
    padding = _padding(padding)
    if rank == 1:
        x = x[:, :, None, :]
        kernel_size, strides, dilation = kernel_size + (1,), strides * 2, dilation * 2
    n = max(math.prod(kernel_size) * in_channels, filters)
    taps = _depthwise_taps(kernel_size, in_channels, filters, n, _table_dtype(x.dtype))
    y = tf.add_n([
        _constant_depthwise_conv2d(part, tf.cast(tap, x.dtype), strides, padding, dilation)
        for part, tap in zip(uv_fn(x, filters, n), taps)
    ])
    return y[:, :, 0, :] if rank == 1 else y


def conv_offset_matmul(x, kernel_size, filters, strides=1, padding="valid", dilation=1):
    """Offset as two ``c_in x c_out`` 1x1 convs (cos, sin) plus two depthwise k x k convs.

    Per output channel the offset kernel is rank 2 over (patch position, channel):
    ``C_N[c, t c_in + ch] = s_c (cos(theta_ct) cos(phi_c,ch) - sin(theta_ct) sin(phi_c,ch))``
    with ``theta = pi c t c_in / N`` and ``phi = pi c (2ch + 1) / (2N)``. Multiply-adds per
    output pixel: ``2 c_in c_out + 2 k_h k_w c_out``, against ``k_h k_w c_in c_out`` dense.
    ``groups=1`` only; 1-D or 2-D.

    Args:
        x: Input ``(batch, *spatial, c_in)``, 1 or 2 spatial dims, static ``c_in``.
        kernel_size: Int or tuple.
        filters: Output channels ``c_out``.
        strides: Int or tuple.
        padding: ``"same"`` or ``"valid"``.
        dilation: Int or tuple.

    Returns:
        The same tensor as ``conv_offset_direct`` (to rounding).

    Example:
        >>> y = conv_offset_matmul(tf.ones((2, 8, 8, 4)), 3, 16, padding="same")
        >>> y.shape
        TensorShape([2, 8, 8, 16])
    """
    return _conv_offset_factored(x, kernel_size, filters, strides, padding, dilation, _uv_matmul)


def conv_offset_fft(x, kernel_size, filters, strides=1, padding="valid", dilation=1):
    """Offset from a per-pixel length-``2N`` real FFT plus a depthwise k x k conv.

    Method.md section 2: ``U + iV`` is the phase-shifted FFT of each pixel's zero-padded
    channel vector (``V`` = minus the imaginary part), then
    ``offset_c(pos) = s_c sum_t (cos(theta_ct) U_c(pos + t) - sin(theta_ct) V_c(pos + t))``.
    Strides, padding and dilation apply to the depthwise step (``U, V`` are linear in the
    pixel, so zero padding commutes). ``groups=1`` only; 1-D or 2-D.

    Args:
        x: Input ``(batch, *spatial, c_in)``, 1 or 2 spatial dims, static ``c_in``.
        kernel_size: Int or tuple.
        filters: Output channels ``c_out``.
        strides: Int or tuple.
        padding: ``"same"`` or ``"valid"``.
        dilation: Int or tuple.

    Returns:
        The same tensor as ``conv_offset_direct`` (to rounding).

    Example:
        >>> y = conv_offset_fft(tf.ones((2, 8, 8, 4)), 3, 16, padding="same")
        >>> y.shape
        TensorShape([2, 8, 8, 16])
    """
    return _conv_offset_factored(x, kernel_size, filters, strides, padding, dilation, _uv_fft)


def _auto_method(x, kernel_size, filters, groups):
    """Picks the variant for ``conv_offset(method="auto")`` (from benchmarks/conv_offset.py).

    Args:
        x: Input tensor.
        kernel_size: Int or tuple.
        filters: ``c_out``.
        groups: Number of groups.

    Returns:
        ``"direct"`` or ``"matmul"``.

    Example:
        >>> _auto_method(tf.zeros((1, 8, 8, 64)), 3, 64, 1)
        'matmul'
    """
    _, kernel_size, in_channels = _spatial(x, kernel_size)
    return auto_method_for(kernel_size, in_channels, filters, groups)


def auto_method_for(kernel_size, in_channels, filters, groups=1):
    """``_auto_method`` from the shapes alone (also used by the conv layers' cost model).

    Args:
        kernel_size: Tuple of spatial kernel sizes (its length is the rank).
        in_channels: ``c_in``.
        filters: ``c_out``.
        groups: Number of groups.

    Returns:
        ``"direct"`` or ``"matmul"``.

    Example:
        >>> auto_method_for((3, 3), 64, 64)
        'matmul'
    """
    kernel_size = tuple(kernel_size)
    if groups != 1 or len(kernel_size) > 2:
        return "direct"
    taps = math.prod(kernel_size)
    # Factored multiply-adds per pixel vs dense; the depthwise/add overhead makes the
    # factored form pay off only with a clear flop margin.
    factored = 2 * in_channels * filters + 2 * taps * filters
    return "matmul" if 2 * factored < taps * in_channels * filters else "direct"


def conv_offset(
    x, kernel_size, filters, strides=1, padding="valid", dilation=1, groups=1, method="auto"
):
    """The DCT offset ``conv(x, Kd)`` by the chosen method (no stored kernel).

    Args:
        x: Input ``(batch, *spatial, c_in)`` (channels_last), static ``c_in``.
        kernel_size: Int or tuple, one entry per spatial dimension.
        filters: Output channels ``c_out``.
        strides: Int or tuple.
        padding: ``"same"`` or ``"valid"``.
        dilation: Int or tuple.
        groups: Number of groups (``"matmul"`` and ``"fft"`` need 1).
        method: ``"auto"``, ``"direct"``, ``"matmul"`` or ``"fft"``. ``"auto"`` uses
            ``"matmul"`` for ungrouped 1-D/2-D convs where it saves over half the
            multiply-adds (e.g. 3x3), otherwise ``"direct"``.

    Returns:
        ``(batch, *out_spatial, filters)``.

    Example:
        >>> y = conv_offset(tf.ones((2, 8, 8, 4)), 3, 16, padding="same")
        >>> y.shape
        TensorShape([2, 8, 8, 16])
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got method={method!r}.")
    if method == "auto":
        method = _auto_method(x, kernel_size, filters, groups)
    if method == "direct":
        return conv_offset_direct(x, kernel_size, filters, strides, padding, dilation, groups)
    if groups != 1:
        raise ValueError(f"method={method!r} supports groups=1 only, got groups={groups}.")
    variant = conv_offset_matmul if method == "matmul" else conv_offset_fft
    return variant(x, kernel_size, filters, strides, padding, dilation)
