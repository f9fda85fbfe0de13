"""A convolution by a sparse kernel whose cost follows its nonzeros (pure TF, no Keras state).

``sparse_conv2d(x, values, rows, cols, ...)`` computes ``tf.nn.convolution(x, S)`` for the
kernel ``S`` given in the ``SparseWeight`` layout: ``S`` viewed as a
``(k_h * k_w * c_in_g, c_out)`` matrix with ``values[k]`` at ``(rows[k], cols[k])``, where
``rows = (i * k_w + j) * c_in_g + ch`` (tap ``(i, j)``, input channel ``ch`` of the group of
output channel ``cols``). It never builds the dense kernel.

How: in the channel-major layout ``(channels, batch, h, w)`` every nonzero ``k`` adds
``values[k]`` times one window of input plane ``ch_k`` (shifted by its tap) to output plane
``c_k``. An XLA windowed gather (``xla.gather`` with slice size ``(1, batch, h_out, w_out)``
and start ``(ch_k, i_k * d_h, j_k * d_w)``) fetches all those windows at once, then
``unsorted_segment_sum`` adds them into the output planes: ``nnz * batch * h_out * w_out``
multiply-adds, against ``k_h k_w c_in_g c_out * batch * h_out * w_out`` for the dense conv.
The positions are run-time tensors (no per-tap partition baked into the graph), so the op
stays correct when the positions are reloaded.

The backward is its own formulation (``tf.custom_gradient``), not autodiff of the gather:

* ``dx``: the same windowed gather on ``dy`` (zero-dilated by the stride, padded for a
  "full" correlation) at the flipped tap of each nonzero, scaled by ``values[k]`` and
  summed into input plane ``ch_k``: again ``nnz`` planes.
* ``dvalues[k]``: the dot product of the forward window of plane ``ch_k`` with ``dy``'s
  plane ``c_k`` (rows reduced in the cluster, the rest outside).

The three kernels run as XLA clusters (``tf.function(jit_compile=True)``); the layout
transposes around them run as TF ops (measured faster on CPU than inside the cluster). XLA
runs a scatter or a reduction on one thread, so the batch is split into one slice per core,
each transposed, convolved and transposed back on its own (in parallel); a batch of one is
split into chunks of output rows instead.
Strides, ``"same"``/``"valid"`` padding, dilation and groups are supported; 1-D convolutions
are run as 2-D with a width of 1 (``sparse_conv``). The spatial sizes of ``x`` must be static.
"""

import os

import tensorflow as tf
# XLA's windowed gather has no public TensorFlow API (tf.gather cannot take a window
# per index, and tf.raw_ops has no XlaGather), so the tf2xla wrapper is used.
from tensorflow.compiler.tf2xla.python import xla
from tensorflow.compiler.xla import xla_data_pb2


def _gather_dimensions():
    """Dimension numbers of a windowed gather on ``(C, B, H, W)`` at ``(ch, top, left)``."""
    numbers = xla_data_pb2.GatherDimensionNumbers()
    numbers.offset_dims.extend([1, 2, 3])
    numbers.collapsed_slice_dims.append(0)
    numbers.start_index_map.extend([0, 2, 3])
    numbers.index_vector_dim = 1
    return numbers


def _windows(planes, channels, tops, lefts, height, width):
    """``planes[channels[k], :, tops[k]:tops[k] + height, lefts[k]:lefts[k] + width]``, stacked.

    Args:
        planes: ``(C, B, H, W)`` tensor.
        channels, tops, lefts: int32 vectors of length ``nnz``.
        height, width: Window size (Python ints or int32 scalars).

    Returns:
        ``(nnz, B, height, width)``.
    """
    starts = tf.stack([channels, tops, lefts], axis=1)
    sizes = tf.stack([1, tf.shape(planes)[1], height, width])
    return xla.gather(planes, starts, _gather_dimensions(), sizes, indices_are_sorted=False)


def _same_pad(size, kernel, stride, dilation):
    """TF's ``"SAME"`` padding ``(before, after)`` of one static dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _Geometry:
    """Static geometry of one 2-D convolution (all Python ints; equal geometries hash equal,
    so the XLA functions are traced once per geometry).

    Args:
        spatial: ``(H, W)`` of the input.
        kernel_size, strides, dilation: 2-tuples.
        padding: ``"SAME"`` or ``"VALID"``.
    """

    def __init__(self, spatial, kernel_size, strides, padding, dilation):
        self.spatial = spatial
        self.kernel_size = kernel_size
        self.strides = strides
        self.dilation = dilation
        self.pads = []
        self.out = []
        for size, k, s, d in zip(spatial, kernel_size, strides, dilation):
            before, after = _same_pad(size, k, s, d) if padding == "SAME" else (0, 0)
            span = (k - 1) * d + 1
            out = (size + before + after - span) // s + 1
            if out < 1:
                raise ValueError(
                    f"The input's spatial size {spatial} is smaller than the dilated kernel "
                    f"{kernel_size} (dilation {dilation}) with padding {padding!r}."
                )
            self.pads.append((before, after))
            self.out.append(out)

    def _key(self):
        return (self.spatial, self.kernel_size, self.strides, self.dilation, tuple(self.pads))

    def __eq__(self, other):
        return isinstance(other, _Geometry) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def strided_span(self, axis):
        """Window length that covers ``out`` outputs at the stride."""
        return (self.out[axis] - 1) * self.strides[axis] + 1


def _subsample(planes, strides):
    if strides == (1, 1):
        return planes
    return planes[:, :, :: strides[0], :: strides[1]]


def _input_windows(xc, channels, taps_h, taps_w, geometry, rows):
    """The forward windows of output rows ``rows = (first, count)``: ``(nnz, B, count, W_out)``."""
    (pt, pb), (pl, pr) = geometry.pads
    first, count = rows
    padded = tf.pad(xc, [[0, 0], [0, 0], [pt, pb], [pl, pr]])
    windows = _windows(
        padded,
        channels,
        taps_h * geometry.dilation[0] + first * geometry.strides[0],
        taps_w * geometry.dilation[1],
        (count - 1) * geometry.strides[0] + 1,
        geometry.strided_span(1),
    )
    return _subsample(windows, geometry.strides)


def _forward(xc, values, channels, taps_h, taps_w, cols, filters, geometry, rows):
    """``(filters, B, count, W_out)``: output rows ``rows = (first, count)`` of
    sum_k values[k] * window_k(x) into plane cols[k]."""
    windows = _input_windows(xc, channels, taps_h, taps_w, geometry, rows)
    scaled = windows * values[:, None, None, None]
    return tf.math.unsorted_segment_sum(scaled, cols, filters)


def _input_grad(dyc, values, channels, taps_h, taps_w, cols, in_channels, geometry, rows):
    """``(C, B, count, W)``: input rows ``rows = (first, count)`` of the transposed
    convolution of ``dy`` by the sparse kernel."""
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel_size, geometry.strides, geometry.dilation
    if (sh, sw) != (1, 1):
        # Zero-dilate dy by the stride: (C, B, Ho, Wo) -> (C, B, (Ho-1)*sh+1, (Wo-1)*sw+1).
        shape = tf.shape(dyc)
        ho, wo = geometry.out
        expanded = tf.reshape(dyc, [shape[0], shape[1], ho, 1, wo, 1])
        expanded = tf.pad(expanded, [[0, 0], [0, 0], [0, 0], [0, sh - 1], [0, 0], [0, sw - 1]])
        dyc = tf.reshape(expanded, [shape[0], shape[1], ho * sh, wo * sw])
        dyc = dyc[:, :, : (ho - 1) * sh + 1, : (wo - 1) * sw + 1]
    pads = []
    for axis, (k, d) in enumerate(((kh, dh), (kw, dw))):
        before = geometry.pads[axis][0]
        # Both are >= 0 for "valid"/"same" padding (before <= (k - 1) * d).
        pads.append(((k - 1) * d - before,
                     geometry.spatial[axis] + before - geometry.strided_span(axis)))
    dyc = tf.pad(dyc, [[0, 0], [0, 0], list(pads[0]), list(pads[1])])
    windows = _windows(
        dyc,
        cols,
        (kh - 1 - taps_h) * dh + rows[0],
        (kw - 1 - taps_w) * dw,
        rows[1],
        geometry.spatial[1],
    )
    return tf.math.unsorted_segment_sum(windows * values[:, None, None, None], channels,
                                        in_channels)


def _values_grad(xc, dyc, channels, taps_h, taps_w, cols, geometry, rows):
    """``(nnz, B, count)``: per nonzero, its input window times ``dy``'s plane on output
    rows ``rows = (first, count)``, summed over the width only (the caller sums the rest:
    a full reduction per nonzero inside XLA measured 3x slower on CPU)."""
    windows = _input_windows(xc, channels, taps_h, taps_w, geometry, rows)
    first, count = rows
    return tf.reduce_sum(windows * tf.gather(dyc[:, :, first:first + count], cols), axis=3)


_forward_xla = tf.function(_forward, jit_compile=True, autograph=False)
_input_grad_xla = tf.function(_input_grad, jit_compile=True, autograph=False)
_values_grad_xla = tf.function(_values_grad, jit_compile=True, autograph=False)


def _row_chunks(total, pieces):
    """``pieces`` (at most ``total``) contiguous ``(first, count)`` ranges covering ``total``.

    XLA on CPU runs a scatter or a reduction on one thread; independent chunks of rows run
    as separate clusters that TensorFlow schedules in parallel (measured 0.89x -> 0.69x of
    the dense conv forward at 1% on 2 cores).
    """
    pieces = max(1, min(total, pieces))
    bounds = [round(i * total / pieces) for i in range(pieces + 1)]
    return [(a, b - a) for a, b in zip(bounds, bounds[1:])]


def _threads():
    """Cores this process may use (the number of row chunks)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not on Linux.
        return os.cpu_count() or 1


def _batch_chunked(inputs, weights, positions, filters, in_channels, geometry, pieces):
    """Forward and backward of ``sparse_conv2d`` in ``pieces`` independent batch slices.

    Each slice is transposed to the channel-major layout, convolved by one XLA cluster
    and transposed back on its own, so TensorFlow runs the slices in parallel and the
    results join along the batch (a contiguous concat). Against row chunks of the whole
    batch (``_row_chunked``, which pads and transposes the whole input once and joins the
    chunks along a strided axis), the ``sparse_kernel="sparse"`` layer at batch 32 measured
    (`benchmarks/conv_layer.py`'s ``conv_layer_rows``, two rounds of the old and new code
    alternating) 16 x 16 x 256 at 1%: forward 1.22-1.24x -> 1.14-1.16x of ``Conv2D``,
    train step 0.87-0.91x -> 0.83x; at 0.1% and at 32 x 32 x 128 equal to 5% faster.
    """
    batch = tf.shape(inputs)[0]
    bounds = [(batch * i // pieces, batch * (i + 1) // pieces) for i in range(pieces)]
    out_rows, in_rows = (0, geometry.out[0]), (0, geometry.spatial[0])
    xcs = [tf.transpose(inputs[lo:hi], [3, 0, 1, 2]) for lo, hi in bounds]
    outputs = tf.concat([
        tf.transpose(_forward_xla(xc, weights, *positions, filters, geometry, out_rows),
                     [1, 2, 3, 0])
        for xc in xcs
    ], axis=0)

    def grad(dy):
        dy = tf.stop_gradient(dy)
        dycs = [tf.transpose(dy[lo:hi], [3, 0, 1, 2]) for lo, hi in bounds]
        dx = tf.concat([
            tf.transpose(
                _input_grad_xla(dyc, weights, *positions, in_channels, geometry, in_rows),
                [1, 2, 3, 0],
            )
            for dyc in dycs
        ], axis=0)
        dvalues = tf.add_n([
            tf.reduce_sum(_values_grad_xla(xc, dyc, *positions, geometry, out_rows),
                          axis=[1, 2])
            for xc, dyc in zip(xcs, dycs)
        ])
        return dx, dvalues

    return outputs, grad


def _row_chunked(inputs, weights, positions, filters, in_channels, geometry):
    """Forward and backward of ``sparse_conv2d`` in chunks of output rows (for a batch
    too small to split: each chunk runs as its own XLA cluster, in parallel)."""
    xc = tf.transpose(inputs, [3, 0, 1, 2])
    out_rows = _row_chunks(geometry.out[0], _threads())
    yc = tf.concat([
        _forward_xla(xc, weights, *positions, filters, geometry, rows) for rows in out_rows
    ], axis=2)

    def grad(dy):
        dyc = tf.transpose(tf.stop_gradient(dy), [3, 0, 1, 2])
        dxc = tf.concat([
            _input_grad_xla(dyc, weights, *positions, in_channels, geometry, rows)
            for rows in _row_chunks(geometry.spatial[0], _threads())
        ], axis=2)
        dvalues = tf.add_n([
            tf.reduce_sum(_values_grad_xla(xc, dyc, *positions, geometry, rows), axis=[1, 2])
            for rows in out_rows
        ])
        return tf.transpose(dxc, [1, 2, 3, 0]), dvalues

    return tf.transpose(yc, [1, 2, 3, 0]), grad


def _as_pair(value, name):
    values = (value,) * 2 if isinstance(value, int) else tuple(value)
    if len(values) != 2 or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(
            f"`{name}` must be a positive int or a tuple of 2 positive ints; received "
            f"{name}={value!r}."
        )
    return values


def sparse_positions(rows, cols, kernel_size, in_channels, filters, groups=1):
    """Splits ``SparseWeight`` positions into (input channel, tap row, tap column).

    Args:
        rows: int tensor, ``(i * k_w + j) * c_in_g + ch`` per nonzero.
        cols: int tensor, the output channel per nonzero.
        kernel_size: ``(k_h, k_w)``.
        in_channels: Input channels of the whole convolution.
        filters: Output channels.
        groups: Groups (output channel ``c`` reads input channels of group
            ``c // (filters / groups)``).

    Returns:
        ``(channels, taps_h, taps_w)`` int32 vectors: the input channel each nonzero reads
        (in the whole input) and its tap.

    Example:
        >>> ch, i, j = sparse_positions(tf.constant([5]), tf.constant([0]), (3, 3), 2, 4)
        >>> [int(ch[0]), int(i[0]), int(j[0])]
        [1, 0, 2]
    """
    c_in_g = in_channels // groups
    rows = tf.cast(rows, tf.int32)
    cols = tf.cast(cols, tf.int32)
    taps, channels = tf.math.floordiv(rows, c_in_g), tf.math.floormod(rows, c_in_g)
    if groups > 1:
        channels += tf.math.floordiv(cols, filters // groups) * c_in_g
    return channels, tf.math.floordiv(taps, kernel_size[1]), tf.math.floormod(
        taps, kernel_size[1]
    )


def sparse_conv2d(
    x, values, rows, cols, kernel_size, filters, strides=1, padding="valid", dilation=1,
    groups=1,
):
    """``tf.nn.convolution(x, S)`` for a sparse ``S`` in ``nnz`` multiply-adds per output pixel.

    Args:
        x: ``(batch, h, w, c_in)`` float32/float64, static ``h, w, c_in``.
        values: ``(nnz,)`` values of ``S`` (``x.dtype``).
        rows: ``(nnz,)`` int, row of each value in the ``(k_h k_w c_in_g, filters)`` matrix
            view of the Keras kernel (``(i * k_w + j) * c_in_g + ch``).
        cols: ``(nnz,)`` int, output channel of each value.
        kernel_size: Int or 2-tuple.
        filters: Output channels.
        strides: Int or 2-tuple.
        padding: ``"same"`` or ``"valid"`` (any case).
        dilation: Int or 2-tuple.
        groups: Number of groups (dividing ``c_in`` and ``filters``).

    Returns:
        ``(batch, h_out, w_out, filters)``, as ``tf.nn.convolution`` with the dense ``S``.
        Differentiable in ``x`` and ``values`` (custom gradient, also ``nnz``-sized).

    Example:
        >>> y = sparse_conv2d(tf.ones((2, 8, 8, 4)), tf.ones((3,)), tf.constant([0, 9, 30]),
        ...                   tf.constant([0, 1, 5]), 3, 6, padding="same")
        >>> y.shape
        TensorShape([2, 8, 8, 6])
    """
    kernel_size = _as_pair(kernel_size, "kernel_size")
    strides = _as_pair(strides, "strides")
    dilation = _as_pair(dilation, "dilation")
    padding = str(padding).upper()
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"`padding` must be 'same' or 'valid'; received padding={padding!r}.")
    if x.shape.rank != 4 or None in x.shape[1:]:
        raise ValueError(
            "`x` must be (batch, h, w, channels) with static h, w and channels; received "
            f"shape {x.shape}."
        )
    in_channels = int(x.shape[-1])
    if in_channels % groups or filters % groups:
        raise ValueError(
            f"`groups` must divide the input channels and `filters`; received groups={groups}, "
            f"input channels={in_channels}, filters={filters}."
        )
    geometry = _Geometry(tuple(int(d) for d in x.shape[1:3]), kernel_size, strides, padding,
                         dilation)
    # Tensors, not variables: the custom gradient must not capture variables.
    rows, cols = tf.convert_to_tensor(rows), tf.convert_to_tensor(cols)
    channels, taps_h, taps_w = sparse_positions(rows, cols, kernel_size, in_channels,
                                                filters, groups)
    cols = tf.cast(cols, tf.int32)
    values = tf.cast(tf.convert_to_tensor(values), x.dtype)

    positions = (channels, taps_h, taps_w, cols)
    pieces = _threads()
    if x.shape[0] is not None:
        pieces = min(pieces, int(x.shape[0]))

    @tf.custom_gradient
    def convolve(inputs, weights):
        # stop_gradient: the XLA functions are never differentiated (XlaGather has no
        # gradient); `grad` below is the backward.
        inputs, weights = tf.stop_gradient(inputs), tf.stop_gradient(weights)
        if pieces > 1:
            return _batch_chunked(inputs, weights, positions, filters, in_channels,
                                  geometry, pieces)
        return _row_chunked(inputs, weights, positions, filters, in_channels, geometry)

    outputs = convolve(x, values)
    # The static output shape (lost in the chunked XLA gathers when the batch is unknown):
    # a following Flatten + Dense needs it.
    outputs.set_shape([x.shape[0], *geometry.out, filters])
    return outputs


def sparse_conv(
    x, values, rows, cols, kernel_size, filters, strides=1, padding="valid", dilation=1,
    groups=1,
):
    """``sparse_conv2d`` for 1-D (run as 2-D with a width of 1) or 2-D inputs.

    Args:
        x: ``(batch, *spatial, c_in)`` with 1 or 2 static spatial dimensions.
        values, rows, cols: ``S`` in the ``SparseWeight`` layout (see ``sparse_conv2d``).
        kernel_size, strides, dilation: Tuples with one entry per spatial dimension.
        filters: Output channels.
        padding: ``"same"`` or ``"valid"``.
        groups: Number of groups.

    Returns:
        ``(batch, *out_spatial, filters)``.

    Example:
        >>> y = sparse_conv(tf.ones((2, 10, 3)), tf.ones((1,)), tf.constant([4]),
        ...                 tf.constant([1]), (3,), 2)
        >>> y.shape
        TensorShape([2, 8, 2])
    """
    rank = x.shape.rank - 2
    if rank == 2:
        return sparse_conv2d(x, values, rows, cols, kernel_size, filters, strides, padding,
                             dilation, groups)
    if rank != 1:
        raise ValueError(f"sparse_conv supports 1-D and 2-D convolutions; received rank {rank}.")
    pair = lambda v: (tuple(v) if not isinstance(v, int) else (v,)) + (1,)  # noqa: E731
    y = sparse_conv2d(x[:, :, None, :], values, rows, cols, pair(kernel_size), filters,
                      pair(strides), padding, pair(dilation), groups)
    return y[:, :, 0, :]


# Kernels of at least this many entries, at least a quarter of them held, are scattered
# transposed (`scatter_kernel`, `scatters_transposed`).
SORTED_SCATTER_MIN_ELEMENTS = 1 << 19
SORTED_SCATTER_MIN_DENSITY = 0.25


def scatters_transposed(size, nnz):
    """Whether ``scatter_kernel`` writes column-major values into ``S^T`` and transposes.

    Args:
        size: Entries of the kernel.
        nnz: Values written.

    Returns:
        True for kernels of at least ``SORTED_SCATTER_MIN_ELEMENTS`` entries with a density
        of at least ``SORTED_SCATTER_MIN_DENSITY``.

    Example:
        >>> scatters_transposed(3 * 3 * 512 * 512, 700_000), scatters_transposed(4096, 4000)
        (True, False)
    """
    return size >= SORTED_SCATTER_MIN_ELEMENTS and nnz >= SORTED_SCATTER_MIN_DENSITY * size


def scatter_dense(flat, values, shape):
    """The ``shape`` matrix with ``values`` at the row-major ``flat`` indices, zeros elsewhere.

    ``SparseToDense`` (one pass of zeros and ``nnz`` writes, any order, no XLA cluster).
    Measured on CPU (2 cores, 3x3 conv kernels, batch 32, interleaved) against the XLA
    scatters the conv layers used before (``tensor_scatter_nd_add`` into the transposed
    kernel between two transposes, or straight into a copy of the base): as fast or
    faster everywhere, the forward of an 8x8x512 conv at 10% density 19.9 ms instead of
    24.2 ms (dense 18.1 ms), at 30% 23.1 ms instead of 24.7 ms; ``tf.scatter_nd`` and
    plain ``tensor_scatter_nd_add`` are several times slower than both.

    Args:
        flat: ``(nnz,)`` int32/int64 distinct indices into the flattened matrix.
        values: ``(nnz,)`` values.
        shape: ``(rows, cols)``.

    Returns:
        A ``shape`` tensor in the dtype of ``values``.

    Example:
        >>> scatter_dense(tf.constant([1, 2]), tf.ones(2), (2, 2)).numpy().tolist()
        [[0.0, 1.0], [1.0, 0.0]]
    """
    dense = tf.raw_ops.SparseToDense(
        sparse_indices=flat,
        output_shape=[shape[0] * shape[1]],
        sparse_values=values,
        default_value=tf.zeros((), values.dtype),
        validate_indices=False,
    )
    return tf.reshape(dense, shape)


def scatter_kernel(values, rows, cols, kernel_shape, base=None, column_major=False):
    """The dense kernel ``base + S`` from ``S``'s values and positions.

    For the fused path of the conv layers (one convolution with ``alpha * Kd + S``):
    ``S`` is written by ``scatter_dense`` and ``base`` added; its
    gradient is a gather for the values and ``dK`` for ``base``. With ``column_major``
    and every position held (density 1), ``S`` is a transpose of the values and nothing
    is scattered (8x8x512 conv kernel, train step of build + gradient: 3.5 ms against
    14 ms for a scatter). With ``column_major`` on large, dense enough kernels
    (``scatters_transposed``), the values are written in their own order into ``S^T``
    (sequential writes) and ``S^T`` is transposed; the value gradient reads the transposed
    ``dK`` in order. In the kernel's own layout the writes and reads jump by a row each:
    for the 4608 x 512 matrix of a 3x3x512x512 kernel at 30% the scatter took 5.7 ms
    against 2.9 ms and the gradient gather 4.9 against 2.7 ms (2304 x 256 at 30%: 0.97
    against 0.47 ms). In `benchmarks/conv_layer.py`'s ``conv_layer_rows``, old and new
    code alternating, the 8x8x512 conv at batch 32 and 30% went from 1.27-1.28x to
    1.12-1.17x of ``Conv2D`` forward; at 5-10% and below about 2**19 entries the transpose
    costs as much as it saves.

    Args:
        values: ``(nnz,)`` values of ``S``.
        rows, cols: ``(nnz,)`` int positions in the ``(prod(kernel_shape[:-1]),
            kernel_shape[-1])`` matrix view.
        kernel_shape: Shape of the kernel.
        base: None (zeros) or a tensor of ``kernel_shape`` added to ``S`` (``alpha * Kd``).
        column_major: True when the positions are unique and sorted by column, then row
            (``SparseWeight``'s order); any order is correct otherwise.

    Returns:
        A ``kernel_shape`` tensor in the dtype of ``values``.

    Example:
        >>> k = scatter_kernel(tf.ones(2), tf.constant([0, 3]), tf.constant([1, 0]), (2, 2, 2))
        >>> k.numpy().reshape(4, 2).tolist()
        [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
    """
    kernel_shape = tuple(int(d) for d in kernel_shape)
    values = tf.convert_to_tensor(values)
    width = kernel_shape[-1]
    height = 1
    for d in kernel_shape[:-1]:
        height *= d
    if column_major and values.shape[0] == height * width:
        # Every position, column-major: S^T (width, height) is a reshape of the values.
        full = tf.transpose(tf.reshape(values, (width, height)))
        if base is not None:
            full = full + tf.reshape(tf.cast(base, values.dtype), (height, width))
        return tf.reshape(full, kernel_shape)
    index_dtype = tf.int32 if height * width < 2**31 else tf.int64
    rows, cols = tf.cast(rows, index_dtype), tf.cast(cols, index_dtype)
    # Row-major indices into S^T: the column-major order is then sequential.
    transposed = column_major and scatters_transposed(height * width, values.shape[0])
    flat = cols * height + rows if transposed else rows * width + cols

    @tf.custom_gradient
    def scatter(weights, *start):
        weights = tf.stop_gradient(weights)
        start = tf.stop_gradient(start[0]) if start else None
        if transposed:
            kernel = tf.transpose(scatter_dense(flat, weights, (width, height)))
        else:
            kernel = scatter_dense(flat, weights, (height, width))
        kernel = kernel if start is None else kernel + start

        def grad(dkernel):
            dkernel = tf.stop_gradient(dkernel)
            read = tf.transpose(dkernel) if transposed else dkernel
            dvalues = tf.gather(tf.reshape(read, (-1,)), flat)
            return (dvalues,) if start is None else (dvalues, dkernel)

        return kernel, grad

    if base is None:
        return tf.reshape(scatter(values), kernel_shape)
    base = tf.reshape(tf.cast(base, values.dtype), (height, width))
    return tf.reshape(scatter(values, base), kernel_shape)


def sparse_conv_macs(nnz, out_pixels):
    """Multiply-adds of ``sparse_conv2d`` per example: one per nonzero and output pixel.

    Args:
        nnz: Nonzeros of ``S``.
        out_pixels: Output pixels per example (``h_out * w_out``).

    Returns:
        ``nnz * out_pixels``.

    Example:
        >>> sparse_conv_macs(10, 64)
        640
    """
    return int(nnz) * int(out_pixels)


__all__ = ["sparse_conv", "sparse_conv2d", "sparse_positions", "sparse_conv_macs",
           "scatter_dense", "scatter_kernel"]
