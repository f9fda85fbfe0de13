"""The DCT offset `D x`, applied by a fast transform.

`D` is the top-left `(units x n)` block of the orthonormal DCT-II matrix `C_N`,
`N = max(n, units)` (see `../shared/design/method.md`, section 1): `D x` is the
first `units` ortho DCT-II coefficients of `x` zero-padded to length `N`. It is
computed in O(N log N) per row with `tf.signal.dct`; no matrix is ever stored.
"""

import numpy as np
import tensorflow as tf


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
    if length > n:
        paddings = [[0, 0]] * (x.shape.rank - 1) + [[0, length - n]]
        x = tf.pad(x, paddings)
    if length == 1:
        coefficients = x  # the 1-point ortho DCT-II is the identity
    else:
        coefficients = tf.signal.dct(x, type=2, norm="ortho")
    if units < length:
        coefficients = coefficients[..., :units]
    return coefficients


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
