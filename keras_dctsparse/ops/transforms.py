"""The DCT offset `D x`, applied by a fast transform.

`D` is the top-left `(units x n)` block of the orthonormal DCT-II matrix `C_N`,
`N = max(n, units)` (see `../shared/design/method.md`, section 1): `D x` is the
first `units` ortho DCT-II coefficients of `x` zero-padded to length `N`. It is
computed in O(N log N) per row by Makhoul's algorithm (one real FFT of length
`N`, where `tf.signal.dct` takes one of length `2N`), and its gradient
`D^T dy` by the matching DCT-III (one inverse real FFT of length `N`); no
matrix is ever stored, the tables are O(N).
"""

import numpy as np
import tensorflow as tf

__all__ = [
    "dct2_ortho",
    "dct3_ortho",
    "dct_length",
    "dct_offset",
    "dct_matrix",
    "dct_offset_transpose",
]

_COMPLEX = {tf.float32: tf.complex64, tf.float64: tf.complex128}


def _twiddles(length, dtype):
    """`(w, s)`: `w[k] = exp(-i pi k / (2N))` for `k <= N // 2` and the ortho scales `s_k`."""
    k = np.arange(length // 2 + 1)
    twiddle = np.exp(-1j * np.pi * k / (2 * length))
    scale = np.full(length, np.sqrt(2.0 / length))
    scale[0] = np.sqrt(1.0 / length)
    return tf.constant(twiddle, _COMPLEX[dtype]), scale


def dct2_ortho(x):
    """Orthonormal DCT-II of the last axis of a rank-2 tensor (Makhoul's algorithm).

    `v = [x0, x2, x4, ..., x5, x3, x1]`, `V = rfft(v)` (length `N`),
    `X[k] = s_k Re(w_k V[k])` and `X[N - k] = -s_{N-k} Im(w_k V[k])`
    with `w_k = exp(-i pi k / (2N))`.

    Args:
        x: float32/float64 tensor of shape `(rows, N)`, static `N >= 2`.

    Returns:
        Tensor of the same shape and dtype: `x @ C_N^T`.

    Example:

    >>> y = dct2_ortho(tf.ones((1, 4)))
    >>> [round(v, 4) + 0.0 for v in y.numpy()[0].tolist()]
    [2.0, 0.0, 0.0, 0.0]
    """
    length = x.shape[-1]
    half_up = (length + 1) // 2
    padded = x if length % 2 == 0 else tf.pad(x, [[0, 0], [0, 1]])
    pairs = tf.reshape(padded, [-1, half_up, 2])
    evens = pairs[:, :, 0]
    odds = pairs[:, : length // 2, 1]
    reordered = tf.concat([evens, tf.reverse(odds, axis=[1])], axis=1)
    twiddle, scale = _twiddles(length, x.dtype)
    spectrum = tf.signal.rfft(reordered) * twiddle  # bins 0 .. N // 2
    low = tf.math.real(spectrum)  # X[0 .. N // 2]
    high = -tf.reverse(tf.math.imag(spectrum[:, 1:half_up]), axis=[1])  # X[N // 2 + 1 ..]
    return tf.concat([low, high], axis=1) * tf.constant(scale, x.dtype)


def dct3_ortho(coefficients):
    """Orthonormal DCT-III of the last axis (the inverse and transpose of `dct2_ortho`).

    `V[k] = conj(w_k) (X[k] / s_k - i X[N - k] / s_{N-k})` (`X[N] = 0`) for
    `k <= N // 2`, `v = irfft(V)` (length `N`), then the even/odd reordering is
    undone.

    Args:
        coefficients: float32/float64 tensor of shape `(rows, N)`, static `N >= 2`.

    Returns:
        Tensor of the same shape and dtype: `coefficients @ C_N`.

    Example:

    >>> x = tf.constant([[1.0, 2.0, 3.0]])
    >>> [round(v, 4) for v in dct3_ortho(dct2_ortho(x)).numpy()[0].tolist()]
    [1.0, 2.0, 3.0]
    """
    length = coefficients.shape[-1]
    half_up = (length + 1) // 2
    twiddle, scale = _twiddles(length, coefficients.dtype)
    unscaled = coefficients * tf.constant(1.0 / scale, coefficients.dtype)
    real = unscaled[:, : length // 2 + 1]
    # X[N - k] for k = 0 .. N // 2, with X[N] = 0.
    mirrored = tf.reverse(unscaled[:, length - length // 2 :], axis=[1])
    imag = tf.concat([tf.zeros_like(unscaled[:, :1]), mirrored], axis=1)
    spectrum = tf.math.conj(twiddle) * tf.complex(real, -imag)
    reordered = tf.signal.irfft(spectrum, fft_length=[length])
    evens = reordered[:, :half_up]
    odds = tf.reverse(reordered[:, half_up:], axis=[1])
    if length % 2:
        odds = tf.pad(odds, [[0, 0], [0, 1]])
    interleaved = tf.reshape(tf.stack([evens, odds], axis=2), [-1, 2 * half_up])
    return interleaved[:, :length]


# Compiled by XLA: it fuses the reordering, twiddles and scales around the FFT
# (about 1.5x faster than the same ops one by one on CPU, measured with
# benchmarks/dense_layer.py shapes); inside an outer XLA cluster they are inlined.
_dct2_compiled = tf.function(dct2_ortho, jit_compile=True)
_dct3_compiled = tf.function(dct3_ortho, jit_compile=True)


def _padded(values, length):
    """Rank-2 `values` zero-padded on the right to `length` columns."""
    size = values.shape[-1]
    return values if size == length else tf.pad(values, [[0, 0], [0, length - size]])


def _fast_offset(x, units):
    """`D x` for rank-2 `x`, with the DCT-III as its gradient (`D^T dy`)."""
    n = x.shape[-1]
    length = dct_length(n, units)

    @tf.custom_gradient
    def offset(x):
        def grad(dy):
            return dct_offset_transpose(dy, n)

        return _dct2_compiled(_padded(x, length))[:, :units], grad

    return offset(x)


def dct_offset_transpose(dy, input_dim):
    """`D^T dy`, the transpose of `dct_offset` (its input gradient), for rank-2 `dy`.

    The first `input_dim` entries of the orthonormal DCT-III of each row of `dy`
    zero-padded to `N = max(input_dim, units)` (`units = dy.shape[-1]`): one
    length-`N` inverse real FFT.

    Args:
        dy: float32/float64 tensor of shape `(rows, units)` with a static `units`.
        input_dim: Number of inputs `n` of the offset's layer.

    Returns:
        Tensor of shape `(rows, input_dim)`.

    Example:

    >>> dy = tf.constant([[1.0, 0.0, 0.0]])
    >>> [round(v, 4) for v in dct_offset_transpose(dy, 4).numpy()[0].tolist()]
    [0.5, 0.5, 0.5, 0.5]
    """
    units = dy.shape[-1]
    length = dct_length(input_dim, units)
    if length == 1:
        return dy
    return _dct3_compiled(_padded(dy, length))[:, :input_dim]


def dct_length(input_dim, units):
    """Length `N = max(input_dim, units)` of the DCT behind a `(input_dim, units)` layer.

    Args:
        input_dim: Number of inputs `n`.
        units: Number of outputs `m`.

    Returns:
        The integer `N`.

    Example:

    >>> dct_length(784, 300)
    784
    """
    return max(int(input_dim), int(units))


def dct_offset(x, units):
    """Applies the orthonormal DCT-II offset `D` to the last axis of `x`.

    Computes the first `units` coefficients of the orthonormal DCT-II of `x`
    zero-padded (or not) to `N = max(n, units)` along the last axis. All singular
    values of the implied `(units x n)` matrix are 1. The transform runs in
    float32 (or float64 for float64 inputs) and returns that dtype; callers cast
    to their compute dtype.

    Args:
        x: Tensor of shape `(..., n)` with a static last dimension.
        units: Number of output coefficients `m`.

    Returns:
        Tensor of shape `(..., units)`.

    Example:

    >>> y = dct_offset(tf.ones((2, 4)), 3)
    >>> y.shape
    TensorShape([2, 3])
    """
    x = tf.convert_to_tensor(x)
    if x.dtype not in (tf.float32, tf.float64):
        x = tf.cast(x, tf.float32)
    n = x.shape[-1]
    if n is None:
        raise ValueError(
            "dct_offset needs a static last dimension; got shape "
            f"{x.shape}."
        )
    length = dct_length(n, units)
    if length == 1:
        return x  # the 1-point ortho DCT-II is the identity
    if x.shape.rank == 2:
        return _fast_offset(x, int(units))
    leading = tf.shape(x)[:-1]
    y = _fast_offset(tf.reshape(x, [-1, n]), int(units))
    return tf.reshape(y, tf.concat([leading, [units]], 0))


def dct_matrix(rows, cols):
    """The `(rows x cols)` top-left block of the orthonormal DCT-II matrix, in numpy.

    Only meant for tests and inspection of small layers: the layers never build
    it. `N = max(rows, cols)`; entry `[k, j] = s_k cos(pi k (2j + 1) / (2N))`.

    Args:
        rows: Number of rows (output coefficients).
        cols: Number of columns (inputs).

    Returns:
        float64 numpy array of shape `(rows, cols)`.

    Example:

    >>> np.allclose(dct_matrix(4, 4) @ dct_matrix(4, 4).T, np.eye(4))
    True
    """
    length = max(rows, cols)
    k = np.arange(rows)[:, None]
    j = np.arange(cols)[None, :]
    # Integer angle modulo 4N keeps the cosine exact for large N.
    angle = (k * (2 * j + 1)) % (4 * length)
    scale = np.where(k == 0, np.sqrt(1.0 / length), np.sqrt(2.0 / length))
    return scale * np.cos(np.pi * angle / (2 * length))
