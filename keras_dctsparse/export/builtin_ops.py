"""TFLite-exportable math: the DCT offset and the sparse product with builtin ops only.

`tf.signal.dct` and `tf.sparse.sparse_dense_matmul` need Flex (Select TF) ops,
which neither `tf.lite.Interpreter` nor `ai-edge-litert` can run, and TFLite's
only FFT kernel (`RFFT2D`) accepts power-of-two lengths only (see
`../shared/design/method.md`, section 7). The functions here are plain
TensorFlow that the converter lowers to builtin ops.

Orthonormal DCT-II of length `N` (Makhoul's algorithm):

1. Reorder `v = [x[0], x[2], x[4], ..., x[5], x[3], x[1]]` (reshape + transpose).
2. `V = DFT_N(v)`; only `V[0 .. N // 2]` is needed because `v` is real.
3. With `t[k] = exp(-i pi k / (2N)) V[k]`:
   `X[k] = s_k Re(t[k])` and `X[N - k] = -s_{N-k} Im(t[k])`.

The real DFT in step 2 is one `rfft` of length `N` when `N` is a power of two.
When `N = N1 * N2` with both factors at most `MAX_RADIX` (784 = 28 * 28,
300 = 20 * 15, 100 = 10 * 10; `mixed_radix_factors`) it is one Cooley-Tukey
split done by two small real matmuls and a twiddle multiply
(`_mixed_radix_dft`, stored constants only): measured 3.5 to 17 times faster
than Bluestein's transform in the TFLite interpreter for N = 100 .. 3000
(`benchmarks/tflite.py`), with fewer constant bytes. Otherwise (primes, a
prime factor above `MAX_RADIX`, `constants="computed"`) it is Bluestein's
chirp-z transform,
`V[k] = w[k]^* sum_j (v[j] w[j]^*) w[k - j]` with `w[l] = exp(i pi l^2 / N)`,
whose convolution is done by power-of-two FFTs of length
`M >= N + (number of frequencies) - 1`. TFLite has no complex arithmetic
beyond `RFFT2D`, `REAL` and `IMAG`, so complex values are carried as separate
real and imaginary float tensors: the complex forward FFT of the chirped
signal is two real FFTs, and the inverse FFT is
`IFFT(Z) = conj(FFT(conj(Z))) / M`, again two real FFTs. All constants (chirps,
the FFT of the chirp filter, twiddles) are O(N) floats; no `N x N` matrix is
ever built.

The sparse product is gather + multiply + `unsorted_segment_sum`
(`GATHER`, `MUL`, `UNSORTED_SEGMENT_SUM`, `TRANSPOSE` in TFLite).
"""

import functools
import math

import numpy as np
import tensorflow as tf

from keras_dctsparse.ops.conv_offset import cos_sin_half_turns

__all__ = [
    "CONSTANTS",
    "bluestein_fft_length",
    "dct2_ortho_builtin",
    "dct_kernel_at_load",
    "dct_offset_builtin",
    "is_power_of_two",
    "load_time_int",
    "mixed_radix_factors",
    "mixed_radix_tables_at_load",
    "run_time_zero",
    "sparse_matmul_builtin",
]


def is_power_of_two(value):
    """Whether a positive integer is a power of two.

    Args:
        value: Positive Python integer.

    Returns:
        `True` for 1, 2, 4, 8, ...

    Example:

    >>> is_power_of_two(1024), is_power_of_two(1000)
    (True, False)
    """
    return value > 0 and value & (value - 1) == 0


def bluestein_fft_length(length, count):
    """Power-of-two FFT length for Bluestein's algorithm.

    The linear convolution behind `count` frequencies of a length-`length` DFT
    involves lags `-(length - 1) .. count - 1`, so a circular convolution of
    length `M >= length + count - 1` computes it without wrap-around.

    Args:
        length: DFT length `N`.
        count: Number of leading frequencies needed (`1 <= count <= N`).

    Returns:
        The smallest power of two `M >= length + count - 1`.

    Example:

    >>> bluestein_fft_length(1000, 501)
    2048
    """
    return 1 << max(0, int(length + count - 2).bit_length())


def _phase(numerators, denominator):
    """`(cos, sin)` of `pi * numerators / denominator`, with integer numerators.

    The numerators are reduced modulo `2 * denominator` in exact integer
    arithmetic first, so the angles stay accurate for large indices.
    """
    reduced = np.mod(np.asarray(numerators, dtype=np.int64), 2 * denominator)
    angle = np.pi * reduced / denominator
    return np.cos(angle), np.sin(angle)


def _float32(array):
    return tf.constant(np.asarray(array, dtype=np.float32))


@functools.lru_cache(maxsize=64)
def _bluestein_constants(length, count):
    """Chirps and filter spectrum of Bluestein's algorithm, as float64 numpy.

    Returns:
        `(chirp_cos, chirp_sin, filter_re, filter_im)`: `v[j] * (chirp_cos[j] -
        i chirp_sin[j])` is the chirped input (length `N`), and
        `filter_re + i filter_im` is `FFT_M(w) / M` (length `M`), the inverse
        FFT's `1 / M` folded in.
    """
    fft_length = bluestein_fft_length(length, count)
    j = np.arange(length, dtype=np.int64)
    chirp_cos, chirp_sin = _phase(j * j, length)
    lags = np.arange(-(length - 1), count, dtype=np.int64)
    filter_cos, filter_sin = _phase(lags * lags, length)
    chirp_filter = np.zeros(fft_length, dtype=np.complex128)
    chirp_filter[lags % fft_length] = filter_cos + 1j * filter_sin
    spectrum = np.fft.fft(chirp_filter) / fft_length
    return chirp_cos, chirp_sin, spectrum.real, spectrum.imag


@functools.lru_cache(maxsize=64)
def _output_twiddles(length, count, chirped):
    """`(c, d)` with `c[k] + i d[k] = s_k exp(i phi_k)`, `k < count`, float64 numpy.

    `phi_k = pi k / (2N)` is Makhoul's twiddle; Bluestein's output chirp
    `exp(-i pi k^2 / N)` adds `pi k^2 / N` when `chirped`. `s_k` is the
    orthonormal DCT-II scale.
    """
    k = np.arange(count, dtype=np.int64)
    numerators = 2 * k * k + k if chirped else k
    cos, sin = _phase(numerators, 2 * length)
    scale = np.full(count, np.sqrt(2.0 / length))
    scale[0] = np.sqrt(1.0 / length)
    return scale * cos, scale * sin


CONSTANTS = ("stored", "computed", "at_load")


class _Tables:
    """Base of the table providers: Makhoul's reordering as `_makhoul_reorder`."""

    def reorder(self, x):
        """Makhoul's reordering of the rows of `x` (`_makhoul_reorder`)."""
        return _makhoul_reorder(x)


class _StoredConstants(_Tables):
    """The transform's O(N) tables as float32 constants (computed in float64)."""

    def chirp(self, length, count):
        chirp_cos, chirp_sin, _, _ = _bluestein_constants(length, count)
        return _float32(chirp_cos), _float32(chirp_sin)

    def chirp_filter_spectrum(self, length, count):
        _, _, filter_re, filter_im = _bluestein_constants(length, count)
        return _float32(filter_re), _float32(filter_im)

    def twiddles(self, length, count, chirped):
        cos, sin = _output_twiddles(length, count, chirped)
        return _float32(cos), _float32(sin)

    def mixed_radix(self, length, count):
        """`(inner, twiddle_cos, twiddle_sin, outer)` of `_mixed_radix_dft` as constants."""
        return tuple(_float32(table) for table in _mixed_radix_constants(length, count))


class _AtLoadConstants(_StoredConstants):
    """Stored tables, except the mixed-radix DFT matrices: built at load time.

    For lengths `N` with a two-factor split and `N % 4 == 0`, the `cos` / `sin`
    matrices of `_mixed_radix_dft` are gathered from one stored half period
    of `cos(2 pi r / N)` (`N / 2 + 1` floats) by integer index arithmetic
    that the TFLite runtime evaluates once, when it prepares the graph
    (`RANGE`, `MUL`, `TILE`, `CONCATENATION`, `GATHER` of load-time inputs,
    see `load_time_int`), instead of storing the `2 N1^2 + 2 N + 4 N2 K2`
    numbers of the matrices (784: 393 floats instead of 4,480). The angle
    `2 pi p / N` of an integer product `p` is read at `fold((p + shift) mod
    N)`, `fold(r) = min(r, N - r)` (cos is even), with a shift of `N / 4` for
    `-sin` and `3 N / 4` for `sin`. Other lengths keep stored matrices. At run
    time the interpreter also holds the int32 index patterns the matrices are
    gathered with, about `12 N1 N` bytes (263 KB for 784 = 28 * 28, a quarter of
    the 784 x 300 dense kernel), which is why `form="auto"` uses this only under
    its memory bound.

    Args:
        ints: A function `value -> load_time_int(anchor, value)`.
    """

    def __init__(self, ints):
        self.ints = ints

    def mixed_radix(self, length, count):
        if length % 4:
            return super().mixed_radix(length, count)
        return mixed_radix_tables_at_load(length, count, self.ints)

    def reorder(self, x):
        """`_makhoul_reorder` as one `GATHER` of an index built at load time (fewer operators)."""
        length = x.shape[-1]
        # [0, 2, 4, ..., then the odd indices descending].
        order = tf.concat(
            [tf.range(self.ints(0), length, 2), tf.range(length - 1 - length % 2, self.ints(0), -2)],
            axis=0,
        )
        order.set_shape([length])  # static, for the shapes that follow (no operator)
        return tf.gather(x, order, axis=1)


class _ComputedConstants(_Tables):
    """The same tables rebuilt by the graph on every call (`COS`, `SIN`, `RFFT2D`).

    Every index range is offset by `zero`, an int64 scalar that is 0 at run
    time but not a graph constant (for example `min(batch_size, 0)`), so the
    TFLite converter cannot fold the tables into stored constants: the file
    then holds no O(N) float arrays, at the price of computing them per call.
    Angles are reduced modulo a full turn in int64 before the float32 `COS`
    and `SIN`, so they stay accurate for large `N`.
    """

    def __init__(self, zero):
        self.zero = tf.cast(zero, tf.int64)

    def _range(self, size):
        # Both bounds depend on `zero`: a RANGE with constant bounds would be
        # folded into a stored int64 vector.
        return tf.range(self.zero, self.zero + size)

    @staticmethod
    def _phase(numerators, denominator):
        """`(cos, sin)` of `pi * numerators / denominator`, reduced exactly first."""
        return cos_sin_half_turns(2 * numerators, denominator, tf.float32)

    def chirp(self, length, count):
        j = self._range(length)
        return self._phase(j * j, length)

    def chirp_filter_spectrum(self, length, count):
        fft_length = bluestein_fft_length(length, count)
        position = self._range(fft_length)
        # Lag l sits at l mod M: 0 .. count - 1, then -(N - 1) .. -1 at the end.
        lag = tf.where(position < count, position, position - fft_length)
        used = (position < count) | (position >= fft_length - (length - 1))
        cos, sin = self._phase(lag * lag, length)
        zeros = tf.zeros_like(cos)
        scale = np.float32(1.0 / fft_length)
        re = tf.where(used, cos, zeros)[tf.newaxis, :] * scale
        im = tf.where(used, sin, zeros)[tf.newaxis, :] * scale
        p_re, p_im = _rfft_parts(re, fft_length)
        q_re, q_im = _rfft_parts(im, fft_length)
        spectrum_re, spectrum_im = _full_spectrum(p_re, p_im, q_re, q_im, fft_length)
        return spectrum_re[0], spectrum_im[0]

    def twiddles(self, length, count, chirped):
        k = self._range(count)
        numerators = 2 * k * k + k if chirped else k
        cos, sin = self._phase(numerators, 2 * length)
        scale = tf.where(
            k == 0, np.float32(np.sqrt(1.0 / length)), np.float32(np.sqrt(2.0 / length))
        )
        return scale * cos, scale * sin


def run_time_zero(x):
    """An int32 scalar that is 0 at run time but not a constant of the graph.

    `min(batch_size, 0)` of `x`, whose first (batch) dimension is dynamic in
    an exported graph: index ranges offset by it cannot be constant-folded
    by the TFLite converter, so tables built from them (DCT tables, the conv
    `Kd`, scattered `S`, unpacked positions) are computed by the interpreter
    instead of being stored in the file.

    Args:
        x: A tensor of rank >= 1.

    Returns:
        A scalar int32 tensor equal to 0.

    Example:

    >>> int(run_time_zero(tf.ones((3, 2))))
    0
    """
    return tf.minimum(tf.shape(x)[0], 0)


def _constants_for(x, constants, ints=None):
    if constants == "stored":
        return _StoredConstants()
    if constants == "computed":
        return _ComputedConstants(run_time_zero(x))
    if constants == "at_load":
        return _AtLoadConstants(ints or functools.partial(load_time_int, x))
    raise ValueError(
        f"Argument `constants` must be one of {CONSTANTS}; received constants={constants!r}."
    )


def _rfft_parts(signal, fft_length, count=None):
    """Real and imaginary parts of `rfft(signal)[..., :count]` (last axis).

    The parts are taken right after the FFT: TFLite builtins cannot slice or
    multiply complex tensors.
    """
    spectrum = tf.signal.rfft(signal, fft_length=[fft_length])
    re, im = tf.math.real(spectrum), tf.math.imag(spectrum)
    if count is None or count == re.shape[-1]:
        return re, im
    return re[..., :count], im[..., :count]


def _pad_last(x, size):
    """Zero-pads a rank-2 tensor on the right of its last axis to `size`."""
    extra = size - x.shape[-1]
    return x if extra == 0 else tf.pad(x, [[0, 0], [0, extra]])


def _makhoul_reorder(x):
    """`[x[0], x[2], x[4], ..., x[5], x[3], x[1]]` along the last axis (rank 2).

    De-interleaves with reshape + transpose: a stride-2 slice of the last axis
    is several times slower in TensorFlow.
    """
    length = x.shape[-1]
    half_up = (length + 1) // 2
    pairs = tf.reshape(_pad_last(x, 2 * half_up), [-1, half_up, 2])
    evens, odds = tf.unstack(tf.transpose(pairs, [0, 2, 1]), axis=1)
    odds = odds[:, : length // 2]  # drops the zero added for odd lengths
    return tf.concat([evens, tf.reverse(odds, axis=[1])], axis=1)


def _full_spectrum(p_re, p_im, q_re, q_im, fft_length):
    """`FFT_M(p + i q)` for real `p, q`, from their half spectra.

    Uses `FFT(p)[M - k] = conj(FFT(p)[k])` (same for `q`).

    Returns:
        `(re, im)`, each of shape `(batch, M)`.
    """
    half = fft_length // 2
    low_re, low_im = p_re - q_im, p_im + q_re  # bins 0 .. M/2
    high_re, high_im = p_re + q_im, q_re - p_im  # bins M, M-1, .., M/2
    re = tf.concat([low_re, tf.reverse(high_re[:, 1:half], axis=[1])], axis=1)
    im = tf.concat([low_im, tf.reverse(high_im[:, 1:half], axis=[1])], axis=1)
    return re, im


def _bluestein_dft(v, count, tables):
    """`w[k] * DFT_N(v)[k]`, `k < count`, for real `v` of any length `N` (rank 2).

    Bluestein's algorithm without the output chirp (`w[k] = exp(i pi k^2 / N)`),
    which the caller folds into its own twiddles.

    Returns:
        `(re, im)`, each of shape `(batch, count)`.
    """
    length = v.shape[-1]
    fft_length = bluestein_fft_length(length, count)
    chirp_cos, chirp_sin = tables.chirp(length, count)
    # Separate FFTs of the real and imaginary parts: batching them with
    # concat + split costs more in copies than it saves.
    chirped_re = _pad_last(v * chirp_cos, fft_length)
    chirped_im = _pad_last(-(v * chirp_sin), fft_length)
    p_re, p_im = _rfft_parts(chirped_re, fft_length)
    q_re, q_im = _rfft_parts(chirped_im, fft_length)
    a_re, a_im = _full_spectrum(p_re, p_im, q_re, q_im, fft_length)
    b_re, b_im = tables.chirp_filter_spectrum(length, count)
    z_re = a_re * b_re - a_im * b_im
    z_im = a_re * b_im + a_im * b_re
    # IFFT(z) = conj(FFT(z_re) - i FFT(z_im)) (the 1 / M is in the filter).
    r_re, r_im = _rfft_parts(z_re, fft_length, count)
    i_re, i_im = _rfft_parts(z_im, fft_length, count)
    return r_re + i_im, i_re - r_im


# Largest factor of a two-factor (Cooley-Tukey) split of a non-power-of-two DFT length
# that `_mixed_radix_dft` uses (its tables hold about 2 * N1^2 + 4 * N2 * K2 + 2 * N numbers).
MAX_RADIX = 64


def mixed_radix_factors(length):
    """`(N1, N2)` with `N1 * N2 = length` for the two-matmul DFT, or None (Bluestein then).

    The most balanced split with both factors in `[2, MAX_RADIX]` (`N1 >= N2`).

    Args:
        length: DFT length `N` (Python int).

    Returns:
        A pair of ints, or None when `N` has no such split (primes, or a prime
        factor above `MAX_RADIX`).

    Example:

    >>> mixed_radix_factors(784), mixed_radix_factors(300), mixed_radix_factors(97)
    ((28, 28), (20, 15), None)
    """
    best = None
    for small in range(2, int(math.isqrt(length)) + 1):
        if length % small == 0 and length // small <= MAX_RADIX:
            best = (length // small, small)
    return best


@functools.lru_cache(maxsize=64)
def _mixed_radix_constants(length, count):
    """Tables of `_mixed_radix_dft`, float64 numpy.

    Returns:
        `(inner, twiddle_cos, twiddle_sin, outer)`: the `(N1, 2 N1)` matrix
        `[cos | -sin]` of `DFT_N1`, the `(N2, N1)` twiddles `W_N^(n2 k1)`
        (`cos`, `sin` of `2 pi n2 k1 / N`) and the `(2 N2, 2 K2)` real form
        `[[C, -S], [S, C]]` of the first `K2 = ceil(count / N1)` columns of
        `DFT_N2`.
    """
    n1, n2 = mixed_radix_factors(length)
    outer_count = -(-count // n1)
    a = np.arange(n1)
    cos1, sin1 = _phase(2 * np.outer(a, a), n1)
    inner = np.concatenate([cos1, -sin1], axis=1)
    twiddle_cos, twiddle_sin = _phase(2 * np.outer(np.arange(n2), a), length)
    cos2, sin2 = _phase(2 * np.outer(np.arange(n2), np.arange(outer_count)), n2)
    outer = np.block([[cos2, -sin2], [sin2, cos2]])
    return inner, twiddle_cos, twiddle_sin, outer


def mixed_radix_tables_at_load(length, count, ints):
    """The tables of `_mixed_radix_dft` as tensors the interpreter builds at load time.

    Same values as `_mixed_radix_constants` (float32): `inner` `(N1, 2 N1)`,
    `twiddle_cos`, `twiddle_sin` `(N2, N1)` and `outer` `(2 N2, 2 K2)`, from
    one stored half period `cos(2 pi r / N)`, `r = 0 .. N / 2`, gathered at
    integer angle indices built from `RANGE`, `MUL`, `TILE`,
    `CONCATENATION` and `GATHER` of load-time integers, which the TFLite
    runtime evaluates once when it prepares the graph (see `load_time_int`).

    Args:
        length: DFT length `N`, with `mixed_radix_factors(N)` and `N % 4 == 0`.
        count: Number of leading frequencies needed.
        ints: A function `value -> load_time_int(anchor, value)`.

    Returns:
        `(inner, twiddle_cos, twiddle_sin, outer)` float32 tensors.

    Example:

    >>> tables = mixed_radix_tables_at_load(12, 5, functools.partial(load_time_int, tf.ones((1, 1))))
    >>> [t.shape.as_list() for t in tables]
    [[4, 8], [3, 4], [3, 4], [6, 4]]
    """
    n1, n2 = mixed_radix_factors(length)
    if length % 4:
        raise ValueError(f"The DFT length must be a multiple of 4; received {length}.")
    outer_count = -(-count // n1)

    def outer_product(first, step, second):
        # [first[i] * second[j]] with first = 0, step, 2 step, ... (int32 MUL).
        rows = tf.reshape(tf.range(ints(0), first * step, step), [first, 1])
        return rows * tf.range(ints(0), second)

    # Integer angles p (the angle is 2 pi p / N).
    inner_p = outer_product(n1, n2, n1)  # a b N2: DFT_N1
    twiddle_p = outer_product(n2, 1, n1)  # n2 k1
    outer_p = outer_product(n2, n1, outer_count)  # n2 k2 N1: DFT_N2
    largest = max((n1 - 1) * (n1 - 1) * n2, (n2 - 1) * (n1 - 1), (n2 - 1) * (outer_count - 1) * n1)
    periods = largest // length + 2  # covers p + shift for every shift < N
    half = length // 2
    # fold(r) = min(r, N - r) over one period, tiled: cos(2 pi r / N) = cos_half[fold(r mod N)].
    # Every RANGE takes one load-time operand (so the converter cannot fold it into
    # a stored vector), always ints(0) or ints(1): each distinct load-time integer
    # costs operators in the file.
    fold = tf.concat(
        [tf.range(ints(0), half + 1), tf.range(half - 1, ints(0), -1)], axis=0
    )
    folded = tf.tile(fold, [periods])
    span = (periods - 1) * length

    def shifted(shift):
        # fold((p + shift) mod N) for p < span.
        return folded if shift == 0 else tf.gather(folded, tf.range(shift, shift + span, ints(1)))

    cos_at, minus_sin_at, sin_at = shifted(0), shifted(length // 4), shifted(3 * length // 4)
    cos_half, _ = _phase(2 * np.arange(half + 1), length)
    table = _float32(cos_half)

    def at(pattern, products):
        return tf.gather(pattern, products)

    inner = tf.concat([at(cos_at, inner_p), at(minus_sin_at, inner_p)], axis=1)
    outer_cos, outer_sin = at(cos_at, outer_p), at(sin_at, outer_p)
    outer = tf.concat(
        [
            tf.concat([outer_cos, at(minus_sin_at, outer_p)], axis=1),
            tf.concat([outer_sin, outer_cos], axis=1),
        ],
        axis=0,
    )
    tables = (
        tf.gather(table, inner),
        tf.gather(table, at(cos_at, twiddle_p)),
        tf.gather(table, at(sin_at, twiddle_p)),
        tf.gather(table, outer),
    )
    # Static shapes (ranges that start at a load-time integer have none in a graph);
    # set_shape adds no operator.
    for tensor, shape in zip(tables, [(n1, 2 * n1), (n2, n1), (n2, n1), (2 * n2, 2 * outer_count)]):
        tensor.set_shape(shape)
    return tables


def _mixed_radix_dft(v, count, tables):
    """`DFT_N(v)[k]`, `k < count`, for real `v` of length `N = N1 * N2` (rank 2), by matmuls.

    Cooley-Tukey with one split: `n = N2 n1 + n2`, `k = k1 + N1 k2`,
    `X[k] = sum_n2 W_N^(n2 k1) W_N2^(n2 k2) sum_n1 x[N2 n1 + n2] W_N1^(n1 k1)`:
    a real `(N1 -> 2 N1)` matmul (the inner DFTs of the real input), the
    twiddles (elementwise), and a real `(2 N2 -> 2 K2)` matmul (the outer
    DFTs, only the `K2 = ceil(count / N1)` needed columns). TFLite:
    `FULLY_CONNECTED` / `BATCH_MATMUL`, `MUL`, `ADD`, `SUB`, `RESHAPE`,
    `TRANSPOSE`, `CONCATENATION`, `STRIDED_SLICE`. About
    `2 N N1 + 4 N K2` multiply-adds per row and O(N) constants when both
    factors are small (`mixed_radix_factors`).

    Returns:
        `(re, im)`, each of shape `(batch, count)`.
    """
    length = v.shape[-1]
    n1, n2 = mixed_radix_factors(length)
    inner, t_cos, t_sin, outer = tables.mixed_radix(length, count)
    outer_count = -(-count // n1)
    a = tf.transpose(tf.reshape(v, [-1, n1, n2]), [0, 2, 1])  # [b, n2, n1]
    y = tf.matmul(tf.reshape(a, [-1, n1]), inner)  # [b * n2, 2 n1]
    y_re, y_im = tf.split(tf.reshape(y, [-1, n2, 2 * n1]), 2, axis=2)
    z_re = y_re * t_cos + y_im * t_sin  # times W_N^(n2 k1) = cos - i sin
    z_im = y_im * t_cos - y_re * t_sin
    z = tf.transpose(tf.concat([z_re, z_im], axis=1), [0, 2, 1])  # [b, k1, 2 n2]
    x = tf.matmul(tf.reshape(z, [-1, 2 * n2]), outer)  # [b * k1, 2 k2]
    x = tf.transpose(tf.reshape(x, [-1, n1, 2 * outer_count]), [0, 2, 1])  # [b, 2 k2, k1]
    re, im = tf.split(x, 2, axis=1)
    re = tf.reshape(re, [-1, outer_count * n1])[:, :count]
    im = tf.reshape(im, [-1, outer_count * n1])[:, :count]
    return re, im


def _makhoul_spectrum(v, count, tables):
    """`(re, im)` of `DFT_N(v)[k]` times a phase that `_output_twiddles` undoes.

    Args:
        v: Reordered signal, shape `(batch, N)`.
        count: Number of leading frequencies, at most `N // 2 + 1`.

    Returns:
        `(re, im, chirped)`; `chirped` tells `_output_twiddles` which phase to use.
    """
    length = v.shape[-1]
    if is_power_of_two(length):
        re, im = _rfft_parts(v, length, count)
        return re, im, False
    if isinstance(tables, _StoredConstants) and mixed_radix_factors(length):
        re, im = _mixed_radix_dft(v, count, tables)
        return re, im, False
    re, im = _bluestein_dft(v, count, tables)
    return re, im, True


def _dct2_leading(x, count, constants="stored", ints=None):
    """First `count` orthonormal DCT-II coefficients of the rows of `x` (rank 2)."""
    length = x.shape[-1]
    if length == 1:
        return x  # the 1-point orthonormal DCT-II is the identity
    half = length // 2
    num_freqs = min(count, half + 1)
    tables = _constants_for(x, constants, ints)
    re, im, chirped = _makhoul_spectrum(tables.reorder(x), num_freqs, tables)
    cos, sin = tables.twiddles(length, num_freqs, chirped)
    # X[k] = Re(t[k]) for k <= N/2, with t[k] = s_k exp(-i phi_k) (re + i im).
    coefficients = re * cos + im * sin
    if count > num_freqs:
        # X[N - k] = -Im(t[k]) for 1 <= k < N - N/2 (the scale is s_1 there).
        top = length - half
        upper = re[:, 1:top] * sin[1:top] - im[:, 1:top] * cos[1:top]
        coefficients = tf.concat([coefficients, tf.reverse(upper, axis=[1])], 1)
    return coefficients[:, :count] if count < coefficients.shape[-1] else coefficients


def _as_rows(x):
    """Float32 `x` of shape `(..., n)` as `(rows, n)`, plus the leading shape."""
    x = tf.convert_to_tensor(x)
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    width = x.shape[-1]
    if width is None:
        raise ValueError(f"Expected a static last dimension; got shape {x.shape}.")
    if x.shape.rank == 2:
        return x, None
    return tf.reshape(x, [-1, width]), tf.shape(x)[:-1]


def _from_rows(y, leading_shape):
    """Inverse of `_as_rows` for a result of shape `(rows, width)`."""
    if leading_shape is None:
        return y
    return tf.reshape(y, tf.concat([leading_shape, [y.shape[-1]]], axis=0))


def _dct2_first(x, length, count, constants="stored", ints=None):
    """Pads `x` to `length` and returns its first `count` DCT-II coefficients."""
    rows, leading_shape = _as_rows(x)
    width = rows.shape[-1]
    if length < width:
        raise ValueError(
            f"The DCT length ({length}) must be at least the input size ({width})."
        )
    coefficients = _dct2_leading(_pad_last(rows, length), count, constants, ints)
    return _from_rows(coefficients, leading_shape)


def dct2_ortho_builtin(x, length=None, constants="stored", ints=None):
    """Orthonormal DCT-II along the last axis, with TFLite builtin ops only.

    Matches `scipy.fft.dct(x_padded, type=2, norm="ortho")` where `x_padded` is
    `x` zero-padded to `length`. Works for any length (power-of-two lengths use
    one real FFT, lengths with a two-factor split `mixed_radix_factors` two small
    DFT matmuls, others Bluestein's algorithm over power-of-two FFTs).

    Args:
        x: Tensor of shape `(..., n)` with a static `n`; computed in float32.
        length: Transform length `N >= n`; defaults to `n`.
        constants: `"stored"` (default): the transform's O(N) tables (chirps,
            chirp-filter spectrum, twiddles) are float32 constants of the
            graph, hence of an exported file. `"computed"`: the graph rebuilds
            them on every call (`COS`, `SIN`, two more `RFFT2D` for
            non-power-of-two lengths), so a file holds none of them; slower.
            `"at_load"`: as `"stored"`, but the matrices of the mixed-radix
            DFT (lengths with a two-factor split, `N % 4 == 0`) are built by
            the interpreter once, when it prepares the graph, from one stored
            half period of `N / 2 + 1` cosines (`mixed_radix_tables_at_load`):
            a smaller file, the same speed where the runtime evaluates
            operators of constant inputs at preparation (TFLite does).
        ints: For `"at_load"`: None (integers anchored on `x`'s batch size,
            `load_time_int`) or a function `value -> load_time_int(anchor,
            value)` sharing them between layers.

    Returns:
        float32 tensor of shape `(..., N)`.

    Raises:
        ValueError: if `length < n`, `n` is not static or `constants` is unknown.

    Example:

    >>> y = dct2_ortho_builtin(tf.ones((2, 3)), length=5)
    >>> y.shape
    TensorShape([2, 5])
    """
    width = tf.convert_to_tensor(x).shape[-1]
    length = width if length is None else int(length)
    return _dct2_first(x, length, length, constants, ints)


def dct_offset_builtin(x, units, constants="stored", ints=None):
    """The DCT offset `D x` of a `(n -> units)` layer, with TFLite builtin ops only.

    Same result as `keras_dctsparse.ops.transforms.dct_offset`: the first
    `units` orthonormal DCT-II coefficients of `x` zero-padded to
    `N = max(n, units)`. Only the needed frequencies are computed.

    Args:
        x: Tensor of shape `(..., n)` with a static `n`; computed in float32.
        units: Number of output coefficients `m`.
        constants, ints: As for `dct2_ortho_builtin`: the transform's tables
            `"stored"` (default), `"computed"` on every call, or `"at_load"`.

    Returns:
        float32 tensor of shape `(..., units)`.

    Example:

    >>> dct_offset_builtin(tf.ones((2, 784)), 300).shape
    TensorShape([2, 300])
    """
    width = tf.convert_to_tensor(x).shape[-1]
    return _dct2_first(x, max(width, int(units)), int(units), constants, ints)


def sparse_matmul_builtin(x, values, rows, cols, units):
    """`y[..., c] = sum_{k: cols[k] = c} x[..., rows[k]] * values[k]`, builtin ops only.

    Gather + multiply + `unsorted_segment_sum`; the positions need no ordering
    and duplicates add up. Forward only (for export); training uses
    `keras_dctsparse.ops.sparse_matmul`.

    Args:
        x: Tensor of shape `(..., n)` with a static `n` (any batch size).
        values: float tensor `(nnz,)`, the nonzeros of `S` (kernel orientation
            `(n, units)`).
        rows: int32 tensor `(nnz,)`, input index of each nonzero.
        cols: int32 tensor `(nnz,)`, output index of each nonzero.
        units: Number of outputs (Python int).

    Returns:
        float32 tensor of shape `(..., units)`.

    Example:

    >>> x = tf.constant([[1.0, 2.0, 3.0]])
    >>> y = sparse_matmul_builtin(x, tf.constant([2.0, 1.0]), [2, 0], [1, 1], 2)
    >>> y.numpy().tolist()
    [[0.0, 7.0]]
    """
    x_rows, leading_shape = _as_rows(x)
    values = tf.cast(values, tf.float32)
    # Work on x^T so that both the gather and the segment sum use axis 0.
    picked = tf.gather(tf.transpose(x_rows), rows) * values[:, tf.newaxis]
    summed = tf.math.unsorted_segment_sum(picked, cols, int(units))
    return _from_rows(tf.transpose(summed), leading_shape)


# ---------------------------------------------------------------------------------------------
# Tensors the TFLite runtime computes once, when it prepares the graph.
#
# The TFLite interpreter evaluates some operators while it prepares the graph
# (`allocate_tensors`) when all their inputs are constants or tensors computed
# that way, and keeps their outputs as read-only tensors that later calls do not
# recompute: SHAPE, STRIDED_SLICE, RANGE, GATHER, TILE, RESHAPE, CONCATENATION
# and MUL, and REDUCE_PROD for at most 8 outputs (measured with ai-edge-litert 2.3 by
# `benchmarks/tflite_load_time_ops.py`: ADD, SUB, CAST, FLOOR_MOD, SCATTER_ND,
# SELECT_V2 and the other candidates of its table are not; an earlier probe found COS and
# FULLY_CONNECTED not evaluated either). The XNNPACK delegate takes the float
# MUL / RESHAPE / CONCATENATION nodes itself (then they run on every call), but
# not GATHER, TILE or integer ops, so a kernel built by integer index arithmetic
# and one final float GATHER from a small table is computed once and then read
# by FULLY_CONNECTED like a stored constant: XNNPACK packs it as static weights.


def load_time_int(x, value):
    """An int32 scalar equal to `value`, computed when the interpreter prepares the graph.

    `STRIDED_SLICE(shape(x), [0], [1], [2])` is the batch size as a 1-vector
    (a stride of 2 keeps the converter from turning it into a SLICE, which the
    runtime does not evaluate early); slicing the constant `[value]` backwards
    from that index gives `[value]` for every batch size (the start is clamped
    to the last element). The converter cannot fold it (the batch size is
    dynamic); the runtime evaluates it at `allocate_tensors`, so index ranges
    that start from it are not stored in the file and not recomputed per call.

    Args:
        x: A tensor whose first (batch) dimension is dynamic in the exported graph.
        value: Python int.

    Returns:
        A scalar int32 tensor equal to `value`.

    Example:

    >>> int(load_time_int(tf.ones((3, 2)), 5))
    5
    """
    batch = tf.strided_slice(tf.shape(x), [0], [1], [2])
    picked = tf.strided_slice(
        tf.constant([int(value)], tf.int32), batch, [0], [-1], end_mask=1
    )
    return tf.reshape(picked, [])


def _periodic_index(ints, length, count):
    """int32 `L` with `L[0] = 2N + 1` and `L[p] = min(p mod 4N, 4N - p mod 4N)` for `p >= 1`.

    `N = length`; `p` runs over `0 .. count - 1`. `L[p]` indexes a table of
    `cos(pi r / (2N))`, `r = 0 .. 2N` (half a period: `cos` is even in
    `4N - r`), plus one extra entry (index `2N + 1`) for `p = 0`. Built from
    two RANGEs, a CONCATENATION and a TILE of load-time inputs.
    """
    period = tf.concat(
        [
            tf.range(ints(1), 2 * length + 1, 1),  # r = 1 .. 2N
            tf.range(2 * length - 1, -1, ints(-1)),  # 4N - r, r = 2N+1 .. 4N
        ],
        axis=0,
    )
    repeats = max(1, -(-(count - 1) // (4 * length)))
    return tf.concat([tf.constant([2 * length + 1], tf.int32), tf.tile(period, [repeats])], 0)


def dct_kernel_at_load(x, units, input_dim, alpha, ints=None):
    """`alpha * D^T`, the `(units, input_dim)` DCT offset kernel, built at load time.

    `D^T[k, j] = s_k cos(pi k (2j + 1) / (2N))`, `N = max(input_dim, units)`
    (the offset of `dct_offset_builtin`, as the `FULLY_CONNECTED` weight
    layout). Built from operators the TFLite runtime evaluates once, when it
    prepares the graph (see `load_time_int`): the products
    `p = k (2j + 1)` (int32 `RANGE`s and `MUL`), their reduction to half a
    period (`GATHER` from a `TILE`d index pattern) and one float `GATHER`
    from a table of `2N + 2` float32 numbers (`alpha s_k cos(pi r / (2N))`,
    computed in float64). The file holds that table and no `units x
    input_dim` tensor; at run time the interpreter holds the kernel plus the
    int32 index tensors it was built from (about `4 * 5 * units * input_dim`
    bytes in all, `p` ranging up to `2 * input_dim * units`).

    Args:
        x: The layer's input (its batch dimension dynamic in the exported graph).
        units: Output size `m`.
        input_dim: Input size `n`.
        alpha: Python float, the layer's offset scale.
        ints: None, or a function `value -> load_time_int(x, value)` (to
            share those tensors between layers).

    Returns:
        float32 tensor of shape `(units, input_dim)`.

    Raises:
        ValueError: if `(2 * input_dim - 1) * (units - 1)` does not fit in int32.

    Example:

    >>> kernel = dct_kernel_at_load(tf.ones((1, 3)), 2, 3, 1.0)
    >>> np.round(kernel.numpy().astype(np.float64), 4).tolist()
    [[0.5774, 0.5774, 0.5774], [0.7071, 0.0, -0.7071]]
    """
    length = max(int(units), int(input_dim))
    count = (2 * input_dim - 1) * (units - 1) + 1  # products p = 0 .. count - 1
    if count > np.iinfo(np.int32).max:
        raise ValueError(
            f"A ({input_dim} -> {units}) layer is too big for a kernel built at load time: "
            f"the DCT angle products reach {count - 1}, beyond int32."
        )
    if ints is None:
        ints = functools.partial(load_time_int, x)
    odd = tf.range(ints(1), 2 * input_dim, 2)  # 2j + 1
    rows = tf.range(ints(0), units)  # k
    products = tf.reshape(rows, [units, 1]) * odd
    index = tf.gather(_periodic_index(ints, length, count), products)
    r = np.arange(2 * length + 1, dtype=np.int64)
    cos, _ = _phase(r, 2 * length)
    table = np.concatenate(
        [float(alpha) * np.sqrt(2.0 / length) * cos, [float(alpha) * np.sqrt(1.0 / length)]]
    )
    return tf.gather(_float32(table), index)
