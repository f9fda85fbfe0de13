"""DCT-plus-sparse convolutions: `DCTSparseConv1D`, `DCTSparseConv2D`, `DCTSparseDepthwiseConv2D`.

Every layer computes `activation(conv(x, alpha * Kd + S) + bias)` (method.md section 2):
`Kd` is the frozen DCT offset kernel of `keras_dctsparse.ops.conv_offset` (output channel `c`
is the `c`-th orthonormal DCT-II coefficient of each flattened, channel-fastest patch), never
stored: it is regenerated in-graph from `range`/`cos` on every call. `S` is the trainable
sparse part (`SparseWeight`) with the shape of the Keras kernel, and `alpha` one scalar.

Backends: what follows is the TensorFlow path. Under JAX and PyTorch (`call_with_kernel`)
every layer runs one `keras.ops.conv`/`depthwise_conv` with the dense
temporary kernel `alpha * Kd + S` (`keras_dctsparse.ops.keras_ops`); `sparse_kernel="sparse"`
and `offset_method="matmul"`/`"fft"` need TensorFlow and are refused there.

How `S` is applied (`sparse_kernel`) and how the offset is applied (`offset_method`):

- `sparse_kernel="dense"`: `S` is scattered into a temporary dense kernel (not a weight)
  and applied by the layer's dense convolution. The offset then costs nothing extra with
  `offset_method="fused"`: one convolution with `alpha * Kd + S` (only the `O(P * c_out)`
  table regeneration is added). Right at high density, where `S` costs a dense conv anyway.
- `sparse_kernel="sparse"`: `S` is applied by `keras_dctsparse.ops.sparse_conv` in
  `nnz` multiply-adds per output pixel (XLA windowed gathers of channel planes, its own
  backward), and the offset separately: `offset_method="auto"` then means
  `conv_offset(method="auto")` (the factored `"matmul"` variant for ungrouped 3x3-like
  kernels, else `"direct"`). Pays at low density: `alpha * conv_offset(x) + sparse_conv(x, S)`.
- `sparse_kernel="native"`: the compiled ops of `keras_dctsparse.ops.native_conv`: the
  factored offset (`uv = x @ [cos | sin]` by TensorFlow's matmul, then the depthwise DCT
  taps) and `S` in `nnz` multiply-adds per output pixel, in one native op per direction.
  Only where native ops may run (`keras_dctsparse.native.policy`: Keras's `fit`/`predict`
  steps, eager calls; never in graphs traced for export, never under XLA), for one group
  and 1-D or 2-D inputs; elsewhere the layer runs the stock plan `"auto"` would pick.
- `sparse_kernel="auto"` (default): `choose_conv_plan` picks one of these from a cost
  model (kernel size, channels, groups, nnz, output pixels, where native ops may run),
  when the layer is traced.
- `offset_method="direct"`, `"matmul"`, `"fft"` force that variant of
  `keras_dctsparse.ops.conv_offset` for a separately computed offset (factored variants
  need `groups=1`; depthwise layers support `"fused"`/`"direct"` only and always apply
  `S` densely: their dense conv is already cheap).

All variants compute the same function to rounding. The transform runs in
`layer.transform_dtype()` (float32 under mixed precision), the result is cast by `combine`.
Grouped convolutions are run as one convolution per group, then concatenated: TensorFlow's
native grouped convolution returns no kernel gradient on CPU (TF 2.21).
"""

import math
import numbers

import keras
from keras import ops

from keras_dctsparse.layers import validation
from keras_dctsparse.layers.base import DCT_MACS_PER_LOG
from keras_dctsparse.layers.base import DCTSparseLayer
from keras_dctsparse.layers.base import dct_matmul_macs
from keras_dctsparse.layers.base import spatial_positions
from keras_dctsparse.layers.sparse_weight import TENSORFLOW
from keras_dctsparse.ops import keras_ops

__all__ = [
    "OFFSET_METHODS",
    "CONV_SPARSE_KERNELS",
    "conv_output_shape",
    "DATA_FORMATS",
    "SPARSE_FIXED",
    "SPARSE_PER_DENSITY",
    "FACTORED_OVERHEAD",
    "SPARSE_PATH_MAX",
    "SPARSE_MIN_MACS",
    "NATIVE_OFFSET_FACTOR",
    "NATIVE_PER_DENSITY",
    "NATIVE_PER_MEMORY",
    "NATIVE_FORWARD_OFFSET_FACTOR",
    "NATIVE_FORWARD_PER_DENSITY",
    "NATIVE_FORWARD_PER_MEMORY",
    "native_conv_cost",
    "native_conv_forward_cost",
    "choose_conv_plan",
    "DIRECT_CONV_MAX_CHANNEL_PAIRS",
    "use_direct_conv",
    "DCTSparseConv2D",
    "DCTSparseConv1D",
    "DCTSparseDepthwiseConv2D",
]

if TENSORFLOW:
    import tensorflow as tf

    from keras_dctsparse.native import library
    from keras_dctsparse.ops import conv_offset as conv_ops
    from keras_dctsparse.ops import native_conv as native_conv_ops
    from keras_dctsparse.ops import native_kernel
    from keras_dctsparse.ops import native_matmul
    from keras_dctsparse.ops import sparse_conv as sparse_conv_ops
    from keras_dctsparse.ops import sparse_matmul

OFFSET_METHODS = ("auto", "fused", "direct", "matmul", "fft")
CONV_SPARSE_KERNELS = ("auto", "dense", "sparse", "native")
DATA_FORMATS = ("channels_last", "channels_first")

# Cost model of `choose_conv_plan`, in units of one dense convolution of the same shape,
# fitted to benchmarks/conv_layer.py (3x3 "same", 128 and 256 channels, batch 32, 2-core
# CPU, TF 2.21): the sparse conv costs about SPARSE_FIXED (layout transposes, XLA
# launches) plus SPARSE_PER_DENSITY * density (measured sparse path forward, offset
# included: 0.48 / 0.58 / 0.65 / 0.94 at density 0.1% / 0.3% / 0.5% / 1% for 256
# channels, 0.62 / 0.69 / 0.88 / 1.12 for 128), the factored offset about
# FACTORED_OVERHEAD times its share of the dense multiply-adds (0.35-0.45 measured). The
# sparse path is chosen when its estimate is below SPARSE_PATH_MAX (the fused path costs
# about 1.0-1.05 at these densities).
SPARSE_FIXED = 0.1
SPARSE_PER_DENSITY = 55.0
FACTORED_OVERHEAD = 1.7
SPARSE_PATH_MAX = 0.95
# Below this many dense multiply-adds per call (output pixels * kernel size) the fixed
# costs (about 0.3 ms on 2 cores) dominate both paths. Measured at 0.1%: the sparse path
# still wins at batch 1 on 2x2x512 (1.27x vs fused 2.12x Conv2D) and 8x8x256 (1.09x vs
# 1.61x), not on 16x16x64 (1.36x vs 1.20x).
SPARSE_MIN_MACS = 4_000_000
# Native path (`sparse_kernel="native"`), in units of a dense conv's train step: the
# factored offset's multiply-adds (cos/sin product and taps) at NATIVE_OFFSET_FACTOR times
# their share, S at NATIVE_PER_DENSITY times the density, and per output pixel the memory
# passes over about c_in + 5 * filters values (the uv product written and read, y, the
# offset kept for alpha's gradient, the input panel) at NATIVE_PER_MEMORY times their share
# of the dense multiply-adds. S's multiply-adds are counted per tile of 16 output pixels
# along the width, as in the forward's rule below: a map 8 pixels wide fills half of each
# tile. Least-squares fit (rms 0.06; the constants before, fitted to fewer shapes without
# the tiles' fill, rms 0.27) to train steps of `python benchmarks/conv_layer.py --shapes
# 32,64,64 16,128,128 32,128,128 16,256,256 8,256,256 8,512,512 --batch 32 --density 0.15
# 0.1 0.05 0.03 --kinds native fused --repeats 5`, at 15% / 10% / 5% / 3%: 32x32x64
# 1.38 / 1.18 / 1.08 / 0.94, 16x16x128 1.17 / 0.95 / 0.76 / 0.72, 32x32x128 1.16 / 0.93 /
# 0.76 / 0.70, 16x16x256 1.05 / 0.84 / 0.60 / 0.55, 8x8x256 1.92 / 1.47 / 0.95 / 0.78,
# 8x8x512 1.94 / 1.32 / 0.86 / 0.68 (fused 0.97-1.05). It also predicts the narrow maps
# of VGG19's last layers at 10% EPL (6.15%, batch 128, two runs of
# `benchmarks/conv_layer.py --shapes 8,256,256 4,512,512 2,512,512 --batch 128 --density
# 0.0615 --kinds native fused`: 8x8x256 0.87-1.19, 4x4x512 1.47-1.89, 2x2x512 2.38-2.69,
# predicted 1.02, 1.57, 2.77; at 0.6-1%: 4x4x512 0.48, 2x2x512 0.46).
NATIVE_OFFSET_FACTOR = 1.4
NATIVE_PER_DENSITY = 4.9
NATIVE_PER_MEMORY = 35.0
# The native path's forward alone (a call that records no gradient: Keras's predict and
# evaluate steps), in units of the dense conv's forward, with the same three terms, S's
# multiply-adds counted per tile of 16 output pixels along the width (an 8-wide map fills
# half of each tile). There the op multiplies the input rows by [cos | sin] itself, one
# work unit's rows at a time, so uv never goes through memory. Least-squares fit to
# `benchmarks/conv_layer.py --kinds native fused` (and `--kinds auto`) forwards, 3x3
# "same", batch 32, at 0.1% / 1% / 5% / 10% / 20%: 32x32x64 0.63 / 0.66 / 0.70 / 0.85 /
# 1.16, 16x16x128 0.44 / 0.46 / 0.61 / 0.74 / 1.08, 32x32x128 0.37 / 0.40 / - / 0.69,
# 16x16x256 0.35 / 0.39 / - / 0.73, 8x8x256 0.43 / 0.50 / 0.81 / 1.23 / 2.00, 8x8x512
# 0.38 / 0.47 / 0.87 / 1.53 / 2.21 (the fused path: 0.97-1.09 at 5-20%).
NATIVE_FORWARD_OFFSET_FACTOR = 1.7
NATIVE_FORWARD_PER_DENSITY = 4.2
NATIVE_FORWARD_PER_MEMORY = 1.3


def conv_output_shape(
    input_shape, filters, kernel_size, strides, padding, data_format, dilation_rate
):
    """Output shape of a convolution, as Keras's conv layers compute it.

    Per spatial dimension of size `n` (None stays None), with kernel size `k`,
    stride `s` and dilation `d`: `"valid"` gives `floor((n - d * (k - 1) - 1) / s) + 1`,
    `"same"` gives `ceil(n / s)`.

    Args:
        input_shape: Input shape, batch first.
        filters: Output channels (or None).
        kernel_size: Tuple of spatial kernel sizes.
        strides: Tuple of strides.
        padding: `"valid"` or `"same"` (a causal conv has the `"same"` length).
        data_format: `"channels_last"` or `"channels_first"`.
        dilation_rate: Tuple of dilation rates.

    Returns:
        The output shape as a tuple.

    Raises:
        ValueError: If a `"valid"` output dimension would be zero or negative.

    Example:

    >>> conv_output_shape((None, 28, 28, 1), 8, (5, 5), (2, 2), "valid",
    ...                   "channels_last", (1, 1))
    (None, 12, 12, 8)
    """
    input_shape = tuple(input_shape)
    channels_last = data_format == "channels_last"
    spatial = input_shape[1:-1] if channels_last else input_shape[2:]
    out = []
    for size, kernel, stride, dilation in zip(spatial, kernel_size, strides, dilation_rate):
        if size is None:
            out.append(None)
        elif padding == "valid":
            length = (int(size) - dilation * (kernel - 1) - 1) // stride + 1
            if length <= 0:
                raise ValueError(
                    "Computed output size would be zero or negative. Received "
                    f"input_shape={input_shape}, kernel_size={tuple(kernel_size)}, "
                    f"dilation_rate={tuple(dilation_rate)}, strides={tuple(strides)}, "
                    f"padding={padding!r}."
                )
            out.append(length)
        else:
            out.append(-(-int(size) // stride))
    if channels_last:
        return (input_shape[0], *out, filters)
    return (input_shape[0], filters, *out)


def _native_shares(kernel_size, in_channels, filters, nnz, offset):
    """The native path's three terms as shares of the dense conv's multiply-adds: S's
    multiply-adds, the memory passes per output pixel, the factored offset's products."""
    taps = math.prod(kernel_size)
    size = taps * in_channels * filters
    offset_share = (2 * in_channels * filters + 2 * taps * filters) / size
    return nnz / size, (in_channels + 5 * filters) / size, (
        offset_share if offset == "dct" else 0.0)


def native_conv_cost(kernel_size, in_channels, filters, nnz, offset="dct", out_width=None,
                     lanes=16):
    """Estimated train step of the native path, in units of the dense conv's (see constants).

    Args:
        kernel_size: Tuple of spatial kernel sizes.
        in_channels: Input channels.
        filters: Output channels.
        nnz: Nonzeros of `S`.
        offset: `"dct"` or None.
        out_width: Output pixels along the width (1-D: the output length), or None
            (unknown: full tiles).
        lanes: Output pixels per tile of the native ops (16 float32, 8 float64 with
            AVX-512; 8 and 4 with AVX2: `keras_dctsparse.native.library.lane_count`).

    Example:

    >>> round(native_conv_cost((3, 3), 128, 128, 147), 2)
    0.52
    >>> nnz = round(0.0615 * 9 * 512 * 512)
    >>> [round(native_conv_cost((3, 3), 512, 512, nnz, out_width=w), 2) for w in (8, 4, 2)]
    [0.96, 1.57, 2.77]
    """
    density, memory, offset_share = _native_shares(kernel_size, in_channels, filters, nnz,
                                                   offset)
    filled = out_width / (-(-out_width // lanes) * lanes) if out_width else 1.0
    return (NATIVE_PER_DENSITY * density / filled + NATIVE_PER_MEMORY * memory
            + NATIVE_OFFSET_FACTOR * offset_share)


def native_conv_forward_cost(kernel_size, in_channels, filters, nnz, out_width=None,
                             lanes=16, offset="dct"):
    """Estimated forward of the native path, in units of the dense conv's forward.

    Args:
        kernel_size, in_channels, filters, nnz, offset: As for `native_conv_cost`.
        out_width: Output pixels along the width (the ops' tiles run along it), or None
            (unknown: full tiles).
        lanes: Output pixels per tile (16 for float32, 8 for float64 with AVX-512; 8 and
            4 with AVX2).

    Example:

    >>> [round(native_conv_forward_cost((3, 3), 256, 256, round(0.1 * 9 * 256 * 256), w), 2)
    ...  for w in (16, 8)]
    [0.81, 1.23]
    """
    density, memory, offset_share = _native_shares(kernel_size, in_channels, filters, nnz,
                                                   offset)
    filled = out_width / (-(-out_width // lanes) * lanes) if out_width else 1.0
    return (NATIVE_FORWARD_PER_DENSITY * density / filled
            + NATIVE_FORWARD_PER_MEMORY * memory
            + NATIVE_FORWARD_OFFSET_FACTOR * offset_share)


# The fused path's convolution (one conv with `alpha * Kd + S`) runs as the native direct
# convolution (`ops.native_conv.direct_conv2d`) where `c_in * filters` is at most this:
# there TensorFlow's Conv2D is slow. The op against `tf.nn.conv2d`, timed alone on the AVX2
# host (batch 128, best ms of 20 interleaved, an earlier build of the op; TF / direct,
# forward, then forward + kernel gradient): LeNet-5's
# 5x5 convs 28x28 1 -> 6 "same" 6.37 / 2.00 and 13.21 / 3.11, 14x14 6 -> 16 "valid" 1.48 /
# 1.46 and 3.31 / 2.36; 3x3 "same" 32x32 3 -> 64 8.24 / 7.10 and 22.99 / 20.34, 28x28 8 ->
# 16 4.29 / 3.86 and 11.71 / 10.45; above the bound mixed or slower: 32x32 16 -> 16 6.51 /
# 6.78 and 18.19 / 17.32, 16x16 8 -> 32 1.82 / 2.07 and 4.31 / 4.45, 16x16 4 -> 128 3.70 /
# 4.69 and 9.68 / 12.56, 16x16 64 -> 64 15.34 / 22.50.
DIRECT_CONV_MAX_CHANNEL_PAIRS = 192


def use_direct_conv(in_channels, filters, groups=1, depthwise=False, dilation=(1, 1), rank=2,
                    native=False):
    """Whether the fused path convolves by the native direct convolution.

    Args:
        in_channels: Input channels of the layer.
        filters: Output channels.
        groups: Groups of the convolution (the direct convolution has one).
        depthwise: Whether the layer is depthwise.
        dilation: Dilation rates (the direct convolution's input gradient, TensorFlow's
            `Conv2DBackpropInput`, takes none on the CPU).
        rank: Spatial rank (2 only).
        native: Whether native ops may run for this call.

    Returns:
        bool.

    Example:

    >>> use_direct_conv(1, 6, native=True), use_direct_conv(64, 64, native=True)
    (True, False)
    >>> use_direct_conv(1, 6, native=False)
    False
    """
    return (
        native
        and rank == 2
        and groups == 1
        and not depthwise
        and all(int(d) == 1 for d in dilation)
        and in_channels * filters <= DIRECT_CONV_MAX_CHANNEL_PAIRS
    )


def choose_conv_plan(
    kernel_size,
    in_channels,
    filters,
    groups,
    nnz,
    out_pixels,
    offset="dct",
    offset_method="auto",
    sparse_kernel="auto",
    depthwise=False,
    native=False,
    forward_only=False,
    out_width=None,
    lanes=16,
):
    """How a DCTpS conv applies `S` and the offset: `(s_path, offset_method)`.

    `s_path` is `"dense"` (S scattered into a kernel and convolved densely), `"sparse"`
    (`ops.sparse_conv`, `nnz` multiply-adds per output pixel) or `"native"` (the native
    ops of `ops.native_conv`, offset included); `offset_method` the resolved method
    (`"fused"` only with the dense path, `"native"` with the native path; `None` without
    offset). With `sparse_kernel="auto"` the cheapest path by the module's cost model (in
    units of a dense conv of the same shape):

    - dense path: 1 (`"fused"`: one conv with `alpha * Kd + S`),
    - sparse path: `SPARSE_FIXED + SPARSE_PER_DENSITY * density` for `S`, plus the
      separate offset (`FACTORED_OVERHEAD` times the factored share of the multiply-adds
      for `"matmul"`, 1 for `"direct"`, nothing without offset),
    - native path: `native_conv_cost` (when `native`, in place of the sparse path: it
      computes the same thing faster); for a call that records no gradient
      (`forward_only`), `native_conv_forward_cost` against the fused forward,

    taking a non-dense path when it is below `SPARSE_PATH_MAX`. Depthwise and grouped
    convs, and calls of fewer than `SPARSE_MIN_MACS` dense multiply-adds (`out_pixels`
    None: unknown batch, treated as large), keep the dense path. `sparse_kernel="native"`
    where native ops may not run (`native` False) is planned as `"auto"`.

    Args:
        kernel_size: Tuple of spatial kernel sizes.
        in_channels: Input channels of the layer.
        filters: Output channels of the layer.
        groups: Groups (depthwise: the input channels).
        nnz: Nonzeros of `S`.
        out_pixels: `batch * prod(out_spatial)` of the call, or None if unknown.
        offset: `"dct"` or None.
        offset_method: The layer's `offset_method`.
        sparse_kernel: The layer's `sparse_kernel` (`"auto"`, `"dense"`, `"sparse"`,
            `"native"`).
        depthwise: Whether the layer is depthwise.
        native: Whether the native path may run for this call (policy, library, dtype,
            one group, 1-D or 2-D, static sizes, `"values"` format).
        forward_only: Whether the call records no gradient (no tape active when it is
            traced: Keras's predict and evaluate steps).
        out_width: Output pixels along the width (1-D: the output length), or None.
        lanes: Output pixels per tile of the native ops (16 float32, 8 float64 with
            AVX-512; 8 and 4 with AVX2: `keras_dctsparse.native.library.lane_count`).

    Returns:
        `(s_path, offset_method)`.

    Example:

    >>> choose_conv_plan((3, 3), 256, 256, 1, nnz=590, out_pixels=32 * 16 * 16)
    ('sparse', 'matmul')
    >>> choose_conv_plan((3, 3), 256, 256, 1, nnz=590, out_pixels=32 * 16 * 16, native=True)
    ('native', 'native')
    >>> choose_conv_plan((3, 3), 256, 256, 1, nnz=58982, out_pixels=32 * 16 * 16)
    ('dense', 'fused')
    >>> choose_conv_plan((3, 3), 256, 256, 1, nnz=58982, out_pixels=32 * 16 * 16, native=True,
    ...                  forward_only=True, out_width=16)
    ('native', 'native')
    """
    taps = math.prod(kernel_size)
    in_group = in_channels // groups
    size = taps * in_group * filters
    native = native and groups == 1 and not depthwise and offset_method in ("auto", "matmul")
    if sparse_kernel == "native":
        if native:
            return "native", ("native" if offset == "dct" else None)
        sparse_kernel = "auto"
    if sparse_kernel == "auto":
        if offset_method == "fused" or depthwise or groups != 1 or (
            out_pixels is not None and out_pixels * size < SPARSE_MIN_MACS
        ):
            sparse_kernel = "dense"
        elif native:
            # The native path does what the stock sparse path does, faster: it replaces it.
            if forward_only:
                cost = native_conv_forward_cost(kernel_size, in_channels, filters, nnz,
                                                out_width, lanes, offset)
            else:
                cost = native_conv_cost(kernel_size, in_channels, filters, nnz, offset,
                                        out_width, lanes)
            if cost < SPARSE_PATH_MAX:
                return "native", ("native" if offset == "dct" else None)
            sparse_kernel = "dense"
        else:
            cost = SPARSE_FIXED + SPARSE_PER_DENSITY * nnz / size
            if offset == "dct":
                method = offset_method
                if method == "auto":
                    method = conv_ops.auto_method_for(kernel_size, in_channels, filters, groups)
                if method == "direct":
                    cost += 1.0
                else:
                    cost += FACTORED_OVERHEAD * (
                        2 * in_channels * filters + 2 * taps * filters
                    ) / size
            sparse_kernel = "sparse" if cost < SPARSE_PATH_MAX else "dense"
    if offset != "dct":
        return sparse_kernel, None
    if offset_method == "auto":
        if sparse_kernel == "dense":
            return "dense", "fused"
        return "sparse", conv_ops.auto_method_for(kernel_size, in_channels, filters, groups)
    return sparse_kernel, offset_method


def _int_tuple(name, value, rank):
    """`value` (an int or a sequence of `rank` ints, all >= 1) as a tuple of Python ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        values = (int(value),) * rank
    else:
        try:
            values = tuple(value)
        except TypeError:
            values = ()
    if len(values) != rank or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
        for v in values
    ):
        raise ValueError(
            f"Argument `{name}` must be a positive integer or a tuple of {rank} positive "
            f"integers; received {name}={value!r}."
        )
    return tuple(int(v) for v in values)


class _DCTSparseConvBase(DCTSparseLayer):
    """The conv logic the DCTpS conv layers share (not used directly).

    Subclasses define `_kernel_shape`, `_out_channels`, `_offset_kernel` and `_convolve`
    (and may restrict `offset_method`).
    """

    rank = None
    depthwise = False
    paddings = ("valid", "same")
    factored_methods = ("matmul", "fft")

    def __init__(
        self,
        kernel_size,
        strides=1,
        padding="valid",
        data_format=None,
        dilation_rate=1,
        groups=1,
        density=None,
        offset="dct",
        offset_method="auto",
        sparse_kernel="auto",
        **kwargs,
    ):
        # `sparse_kernel` means the conv path here ("auto", "dense", "sparse"), not the
        # dense layers' matmul kernel: the base class gets its default.
        self.conv_sparse_kernel = validation.check_choice(
            "sparse_kernel", sparse_kernel, CONV_SPARSE_KERNELS
        )
        super().__init__(density=density, offset=offset, **kwargs)
        rank = self.rank
        self.kernel_size = _int_tuple("kernel_size", kernel_size, rank)
        self.strides = _int_tuple("strides", strides, rank)
        self.dilation_rate = _int_tuple("dilation_rate", dilation_rate, rank)
        self.padding = validation.check_choice("padding", padding, self.paddings)
        if data_format is None:
            data_format = keras.config.image_data_format()
        self.data_format = validation.check_choice("data_format", data_format, DATA_FORMATS)
        self.groups = validation.check_positive_int("groups", groups)
        self.offset_method = validation.check_choice(
            "offset_method", offset_method, OFFSET_METHODS
        )
        if self.conv_sparse_kernel == "sparse" and self.offset_method == "fused":
            raise ValueError(
                "offset_method='fused' folds the offset into a dense kernel and cannot be "
                "combined with sparse_kernel='sparse'; use offset_method='auto', 'direct', "
                "'matmul' or 'fft', or sparse_kernel='auto'/'dense'."
            )
        if self.conv_sparse_kernel in ("sparse", "native") and self.sparse_format == "masked":
            raise ValueError(
                f"sparse_kernel={self.conv_sparse_kernel!r} needs sparse_format='values' (a "
                "masked kernel is dense); received sparse_format='masked'."
            )
        if self.conv_sparse_kernel == "native" and self.offset_method not in ("auto", "matmul"):
            raise ValueError(
                "sparse_kernel='native' applies the offset in its own factored form "
                "(offset_method='auto' or 'matmul'); received "
                f"offset_method={self.offset_method!r}."
            )
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                "`strides > 1` is not supported together with `dilation_rate > 1`; received "
                f"strides={self.strides} and dilation_rate={self.dilation_rate}."
            )
        if not TENSORFLOW:
            # keras.ops has no sparse conv and no factored offset: one conv with
            # alpha * Kd + S ("fused"; "direct" is the same function at twice the cost).
            if self.conv_sparse_kernel in ("sparse", "native") or self.offset_method in (
                "matmul", "fft"
            ):
                raise ValueError(
                    f"sparse_kernel={self.conv_sparse_kernel!r} with "
                    f"offset_method={self.offset_method!r} needs the TensorFlow backend; "
                    f"KERAS_BACKEND is {keras.backend.backend()!r}, where the conv layers "
                    "run one convolution with alpha * Kd + S (sparse_kernel='auto' or "
                    "'dense', offset_method='auto', 'fused' or 'direct')."
                )
        # S is applied as a dense conv of its scattered kernel: no CSR kernel, XLA is fine.
        self.supports_jit = True
        self.input_spec = keras.layers.InputSpec(ndim=rank + 2)

    # -- subclass hooks ------------------------------------------------------------------------

    def _kernel_shape(self, in_channels):
        raise NotImplementedError

    def _out_channels(self, in_channels):
        raise NotImplementedError

    def _offset_kernel(self, in_channels, dtype, anchor=None):
        """`Kd` in the Keras kernel layout (`anchor`: see `conv_offset.dct_block`)."""
        raise NotImplementedError

    def _convolve(self, x, kernel, padding):
        """The layer's convolution of channels_last `x` by a kernel in Keras layout."""
        raise NotImplementedError

    # -- shared machinery ----------------------------------------------------------------------

    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def _check_methods(self):
        if self.conv_sparse_kernel == "native" and (self.groups != 1 or self.depthwise):
            raise ValueError(
                "sparse_kernel='native' supports ungrouped convolutions only; received "
                f"groups={self.groups}{' (depthwise)' if self.depthwise else ''}. Use "
                "sparse_kernel='auto' or 'dense'."
            )
        if self.offset_method in self.factored_methods and self.groups != 1:
            raise ValueError(
                f"offset_method={self.offset_method!r} supports groups=1 only; received "
                f"groups={self.groups}. Use offset_method='auto', 'fused' or 'direct'."
            )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != self.rank + 2:
            raise ValueError(
                f"Layer '{self.name}' expects inputs of rank {self.rank + 2} "
                f"(batch, {'spatial, ' * self.rank}channels); received "
                f"input_shape={input_shape}."
            )
        in_channels = input_shape[self._channel_axis]
        if in_channels is None:
            raise ValueError(
                f"Layer '{self.name}' needs the channel dimension of its input to be "
                f"defined; received input_shape={input_shape}."
            )
        in_channels = int(in_channels)
        if in_channels % self.groups:
            raise ValueError(
                f"The number of input channels must be divisible by `groups`; received "
                f"groups={self.groups} and input channels={in_channels} "
                f"(input_shape={input_shape})."
            )
        self._check_methods()
        self.build_sparse_part(
            self._kernel_shape(in_channels), bias_size=self._out_channels(in_channels)
        )
        self.input_spec = keras.layers.InputSpec(
            ndim=self.rank + 2, axes={self._channel_axis: in_channels}
        )

    @property
    def _in_channels(self):
        return self._in_channels_of(self.sparse_weight.kernel_shape)

    def _in_channels_of(self, kernel_shape):
        return kernel_shape[-2] * self.groups

    @property
    def kernel(self):
        """The effective kernel `alpha * Kd + S` in Keras layout (for inspection only).

        This materializes the dense kernel: the layer itself never stores it.
        """
        self._check_built("kernel")
        return self._effective_kernel(self.transform_dtype())

    def _effective_kernel(self, dtype):
        weight = self.sparse_weight
        if (
            TENSORFLOW
            and self.offset == "dct"
            and self.sparse_format == "values"
            and native_kernel.native_scatter_pays(math.prod(weight.kernel_shape), weight.nnz)
            and sparse_matmul.native_allowed(dtype)
        ):
            # alpha * Kd + S in one native pass over the kernel (`ops.native_kernel`).
            kernel = native_kernel.native_scatter_kernel(
                tf.reshape(self._offset_kernel(self._in_channels, dtype), weight.matrix_shape),
                self.alpha_as(dtype),
                tf.cast(tf.convert_to_tensor(weight.values), dtype),
                weight.positions_tensor(),
            )
            return tf.reshape(kernel, weight.kernel_shape)
        offset = None
        if self.offset == "dct":
            offset = self.alpha_as(dtype) * self._offset_kernel(self._in_channels, dtype)
        return weight.dense_kernel(dtype, offset)

    def _plan(self, x, padding):
        """`(s_path, offset_method)` for the channels_last input `x` (`choose_conv_plan`)."""
        sparse_kernel = self.conv_sparse_kernel
        if sparse_kernel in ("auto", "native") and (
            self.sparse_format == "masked" or None in x.shape[1:-1]
        ):
            # A masked kernel is dense; the sparse conv needs static spatial sizes.
            sparse_kernel = "dense"
        # Unknown sizes (the batch, a spatial size) stay None.
        out_shape = conv_output_shape(
            tuple(x.shape),
            1,
            self.kernel_size,
            strides=self.strides,
            padding=padding,
            data_format="channels_last",
            dilation_rate=self.dilation_rate,
        )
        out_width = out_shape[-2]  # the native ops tile the width (1-D: the length)
        pixels = math.prod(out_shape[:-1]) if None not in out_shape[:-1] else None
        in_channels = self._in_channels
        native = (
            self.sparse_format == "values"
            and None not in x.shape[1:-1]
            and self.rank <= 2
            and sparse_matmul.native_allowed(x.dtype)
        )
        return choose_conv_plan(
            self.kernel_size,
            in_channels,
            self._out_channels(in_channels),
            in_channels if self.depthwise else self.groups,
            self.sparse_weight.nnz,
            pixels,
            offset=self.offset,
            offset_method=self.offset_method,
            sparse_kernel=sparse_kernel,
            depthwise=self.depthwise,
            native=native,
            forward_only=not native_matmul.any_tape_active(),
            out_width=out_width,
            lanes=library.lane_count(x.dtype.as_numpy_dtype) if native else 64 // x.dtype.size,
        )

    def fused_conv_is_direct(self, x):
        """Whether the fused path convolves the channels_last `x` by the native direct
        convolution (`use_direct_conv`: few channels, where native ops may run)."""
        in_channels = self._in_channels
        return use_direct_conv(
            in_channels, self._out_channels(in_channels), self.groups, self.depthwise,
            self.dilation_rate, self.rank,
            native=None not in x.shape[1:] and sparse_matmul.native_allowed(x.dtype),
        )

    def _sparse_conv(self, x, padding):
        """`conv(x, S)` by `ops.sparse_conv` (channels_last `x`), in nnz multiply-adds."""
        weight = self.sparse_weight
        rows, cols = weight.positions()
        return sparse_conv_ops.sparse_conv(
            x,
            tf.cast(tf.convert_to_tensor(weight.values), x.dtype),
            rows,
            cols,
            self.kernel_size,
            self._out_channels(self._in_channels),
            self.strides,
            padding,
            self.dilation_rate,
            self.groups,
        )

    def _native_conv(self, x, padding, dtype):
        """`alpha * conv(x, Kd) + conv(x, S) + bias` by `ops.native_conv` (channels_last `x`).

        The op adds the bias as it writes each output tile, which saves the separate
        `BiasAdd`'s pass over the output.
        """
        weight = self.sparse_weight
        alpha = self.alpha_as(dtype) if self.offset == "dct" else None
        return native_conv_ops.native_conv(
            x, alpha, tf.cast(tf.convert_to_tensor(weight.values), dtype),
            weight.positions_tensor(),
            self.kernel_size, self._out_channels(self._in_channels), self.strides, padding,
            self.dilation_rate,
            bias=None if self.bias is None else tf.cast(self.bias, dtype),
        )

    def finish(self, outputs, bias_added=False):
        """Casts to the compute dtype, adds the bias and applies the activation.

        As `DCTSparseLayer.finish`, but the bias is added by `tf.nn.bias_add` on the
        channels_last output (as Keras's own convolutions do after grappler): its
        gradient is one `BiasAddGrad`, which oneDNN fuses into the kernel gradient's
        `Conv2DBackpropFilter`. A broadcasting `+` differentiates into a generic `Sum`
        over batch and space instead: measured 0.15 ms (LeNet-5's conv1, batch 128, 2
        cores) of a 3.3 ms training step.

        Args:
            outputs: The linear output.
            bias_added: Whether `outputs` holds the bias already (the native path).
        """
        if not TENSORFLOW:
            return super().finish(outputs)
        outputs = tf.cast(outputs, self.compute_dtype)
        if self.bias is not None and not bias_added:
            outputs = tf.nn.bias_add(outputs, tf.cast(self.bias, outputs.dtype))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def call(self, inputs):
        return self.call_with_kernel(inputs)

    def call_with_kernel(self, inputs, kernel_fn=None):
        """The layer's computation, optionally with a kernel supplied by `kernel_fn`.

        On TensorFlow the linear part follows the layer's plan (`choose_conv_plan`: one
        conv with `alpha * Kd + S`, or the sparse path plus a separate offset); on the
        other backends it is one `keras.ops` conv with `alpha * Kd + S`.

        Args:
            inputs: The layer's input (its `data_format`).
            kernel_fn: None (use the weights and `offset_method`), or a function of the
                channels_last input `x` (in `transform_dtype()`) returning the full kernel
                `alpha * Kd + S` in Keras layout, applied as one convolution (TensorFlow
                only). The TFLite export passes a kernel rebuilt from builtin ops and
                frozen weights.

        Returns:
            The layer's output.
        """
        dtype = self.transform_dtype()
        x = ops.cast(inputs, dtype)
        if self.data_format == "channels_first":
            x = ops.transpose(x, [0, *range(2, self.rank + 2), 1])
        padding = self.padding
        bias_added = False
        if padding == "causal":
            left = (self.kernel_size[0] - 1) * self.dilation_rate[0]
            x = ops.pad(x, [(0, 0), (left, 0), (0, 0)])
            padding = "valid"
        if not TENSORFLOW:
            linear = keras_ops.convolve(
                x, self._effective_kernel(dtype), self.strides, padding, self.dilation_rate,
                depthwise=self.depthwise,
            )
        elif kernel_fn is not None:
            linear = self._convolve(x, kernel_fn(x), padding)
        else:
            linear, bias_added = self._planned_linear(x, padding, dtype)
        outputs = self.finish(self.observe_linear_output(x, linear, padding=padding),
                              bias_added=bias_added)
        if self.data_format == "channels_first":
            outputs = ops.transpose(outputs, [0, self.rank + 1, *range(1, self.rank + 1)])
        return outputs

    def _planned_linear(self, x, padding, dtype):
        """`alpha * Kd x + S x` on TensorFlow, by the layer's plan (`_plan`).

        Returns:
            `(linear, bias_added)`: the native path adds the bias too.
        """
        s_path, method = self._plan(x, padding)
        if s_path == "native":
            return self._native_conv(x, padding, dtype), self.bias is not None
        if s_path == "dense" and method in (None, "fused"):
            # One conv with alpha * Kd + S (or S alone without the offset).
            kernel = self._effective_kernel(dtype)
            if self.fused_conv_is_direct(x):
                return native_conv_ops.direct_conv2d(x, kernel, self.strides, padding), False
            return self._convolve(x, kernel, padding), False
        if s_path == "sparse":
            sparse = self._sparse_conv(x, padding)
        else:
            sparse = self._convolve(x, self.sparse_weight.dense_kernel(dtype), padding)
        offset = None if method is None else self._offset(x, padding, method)
        return self.linear_sum(offset, sparse), False

    if TENSORFLOW:
        # The name `keras_dctsparse.export.tflite` calls. Not defined on the other backends:
        # under PyTorch `forward` is the `torch.nn.Module` method Keras's layers run through.
        forward = call_with_kernel

    def kernel_gradient(self, inputs, output_gradient, context, first_col, last_col):
        # The convolution is linear in its kernel: its gradient w.r.t. a zero kernel of
        # the block's output channels is the kernel gradient of those channels.
        kernel_shape = self.sparse_weight.kernel_shape
        blocked = self.groups == 1 and not self.depthwise
        if not blocked and (first_col, last_col) != (0, kernel_shape[-1]):
            raise ValueError("Grouped and depthwise kernels have one gradient block.")
        output_gradient = output_gradient[..., first_col:last_col] if blocked else output_gradient

        def convolve(kernel):
            if TENSORFLOW:
                return self._convolve(inputs, kernel, context["padding"])
            return keras_ops.convolve(inputs, kernel, self.strides, context["padding"],
                                      self.dilation_rate, depthwise=self.depthwise)

        gradient = keras_ops.linear_vjp(
            convolve, (*kernel_shape[:-1], last_col - first_col), inputs.dtype, output_gradient
        )
        return ops.reshape(gradient, (-1, last_col - first_col))

    def kernel_gradient_blocks(self, max_elements):
        if self.groups == 1 and not self.depthwise:
            return super().kernel_gradient_blocks(max_elements)
        return [(0, self.sparse_weight.matrix_shape[1])]

    def _offset(self, x, padding, method):
        """`conv(x, Kd)`: the regenerated `Kd` in the layer's conv, or a factored variant."""
        if method == "direct":
            # The layer's own conv (grouped convs per group: TF's native grouped conv has
            # no CPU gradient).
            return self._convolve(x, self._offset_kernel(self._in_channels, x.dtype), padding)
        return conv_ops.conv_offset(
            x,
            self.kernel_size,
            self._out_channels(self._in_channels),
            self.strides,
            padding,
            self.dilation_rate,
            self.groups,
            method=method,
        )

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        in_channels = input_shape[self._channel_axis]
        out_channels = self._out_channels(in_channels) if in_channels is not None else None
        return conv_output_shape(
            input_shape,
            out_channels,
            self.kernel_size,
            strides=self.strides,
            # Causal = left-padded "valid" = "same" output length.
            padding="same" if self.padding == "causal" else self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
        )

    # -- hooks of `DCTSparseLayer` (sparsify, report, export) ----------------------------------

    export_kind = "conv"
    carried_keys = ("kernel_size", "strides", "padding", "data_format", "dilation_rate")

    @classmethod
    def positions_for(cls, config, output_shape):
        return spatial_positions(config, output_shape)

    @classmethod
    def _in_channels_for(cls, config, input_shape):
        axis = 1 if config.get("data_format") == "channels_first" else -1
        return int(input_shape[axis])

    def offset_macs(self):
        """Offset multiply-adds per output pixel: the cheaper factored offset (method.md section 2).

        With `k` kernel taps, `c = c_in / groups` (1 for depthwise) and `N = max(k * c,
        c_out)`: `2 * c * c_out + 2 * k * c_out` (cos/sin 1x1 convs, then two depthwise
        `k`-tap convs) or `2.5 * N * log2(2N) + 2 * k * c_out` (a per-pixel FFT instead);
        a 1x1 conv counts as a DCT over its channels, like a dense layer.
        """
        if self.offset != "dct":
            return 0
        kernel_shape = self.sparse_weight.kernel_shape
        taps = math.prod(kernel_shape[:-2])
        if self.depthwise:
            c_in_group, c_out = 1, kernel_shape[-2] * kernel_shape[-1]
        else:
            c_in_group, c_out = kernel_shape[-2], kernel_shape[-1]
        big_n = max(taps * c_in_group, c_out)
        matmul = 2 * c_in_group * c_out + 2 * taps * c_out
        fft = DCT_MACS_PER_LOG * big_n * math.log2(2 * big_n) + 2 * taps * c_out
        if taps == 1:  # a 1x1 conv is a DCT over the channels, as a dense layer
            fft = dct_matmul_macs(c_in_group, c_out)
        return min(matmul, fft)

    def offset_kernel(self, dtype, anchor=None):
        """`Kd` of the built layer in the Keras kernel layout (`anchor`: `conv_offset.dct_block`)."""
        self._check_built("offset_kernel")
        return self._offset_kernel(self._in_channels, dtype, anchor)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
                "offset_method": self.offset_method,
                "sparse_kernel": self.conv_sparse_kernel,
            }
        )
        return config


class _GroupedConv(_DCTSparseConvBase):
    """Regular (optionally grouped) convolution: kernel `(*kernel_size, c_in / groups, filters)`."""

    def __init__(self, filters, kernel_size, groups=1, **kwargs):
        filters = validation.check_positive_int("filters", filters)
        super().__init__(kernel_size, groups=groups, **kwargs)
        self.filters = filters
        if self.filters % self.groups:
            raise ValueError(
                "The number of filters must be divisible by `groups`; received "
                f"groups={self.groups} and filters={self.filters}."
            )

    def _kernel_shape(self, in_channels):
        return (*self.kernel_size, in_channels // self.groups, self.filters)

    carried_keys = _DCTSparseConvBase.carried_keys + ("filters", "groups")

    @classmethod
    def kernel_shape_for(cls, config, input_shape):
        in_channels = cls._in_channels_for(config, input_shape)
        return (
            *_int_tuple("kernel_size", config["kernel_size"], cls.rank),
            in_channels // config.get("groups", 1),
            int(config["filters"]),
        )

    def _out_channels(self, in_channels):
        return self.filters

    def _offset_kernel(self, in_channels, dtype, anchor=None):
        if not TENSORFLOW:
            return keras_ops.conv_offset_kernel(
                self.kernel_size, in_channels, self.filters, self.groups, dtype
            )
        return conv_ops.conv_offset_kernel(
            self.kernel_size, in_channels, self.filters, self.groups, dtype, anchor
        )

    def _convolve(self, x, kernel, padding):
        def convolve(inputs, weights):
            return tf.nn.convolution(
                inputs,
                weights,
                strides=self.strides,
                padding=padding.upper(),
                dilations=self.dilation_rate,
            )

        if self.groups == 1:
            return convolve(x, kernel)
        pieces = zip(
            tf.split(x, self.groups, axis=-1), tf.split(kernel, self.groups, axis=-1)
        )
        return tf.concat([convolve(xg, kg) for xg, kg in pieces], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "groups": self.groups})
        return config


_ARGS_DOC = """
        strides: Int or tuple, the stride of the convolution.
        padding: `"valid"` or `"same"` (case-insensitive), as in Keras.
        data_format: `"channels_last"` (default from `keras.config.image_data_format()`)
            or `"channels_first"` (run by transposing to channels_last and back).
        dilation_rate: Int or tuple; `> 1` cannot be combined with `strides > 1`.
        density: Fraction of the kernel's entries that `S` keeps and trains, in (0, 1].
            Default 0.01 unless `nnz` (the number of kept entries) is given.
        offset: `"dct"` (default) or `None` for the plain random-sparse baseline.
        offset_method: How the offset is applied: `"auto"` (`"fused"` with the dense
            `S` path: one conv with `alpha * Kd + S`; `conv_offset`'s own choice with the
            sparse path), `"fused"`, or `"direct"`, `"matmul"`, `"fft"` (offset computed
            separately by `keras_dctsparse.ops.conv_offset`). Same result to rounding.
        sparse_kernel: How `S` is applied: `"auto"` (cost model `choose_conv_plan`, at
            trace time), `"dense"` (scattered into a temporary kernel, dense conv) or
            `"sparse"` (`keras_dctsparse.ops.sparse_conv`, `nnz` multiply-adds per output
            pixel; needs `sparse_format="values"`, static spatial input sizes, and an
            offset method other than `"fused"`). Same result to rounding.
        **kwargs: The `DCTSparseLayer` arguments (`activation`, `use_bias`, `alpha`,
            `alpha_trainable`, `sparse_initializer`, `bias_initializer`, regularizers,
            constraints, `seed`, `sparse_format`) and base layer arguments (`name`,
            `dtype`, ...).
"""


@keras.saving.register_keras_serializable(package="keras_dctsparse")
class DCTSparseConv2D(_GroupedConv):
    __doc__ = """2-D convolution at the price of a sparse one (DCT plus sparse).

    `output = activation(conv2d(x, alpha * Kd + S) + bias)`, with the arguments and
    semantics of `keras.layers.Conv2D`. `Kd` is the frozen DCT offset kernel (method.md
    section 2; regenerated in-graph, never stored), `S` a sparse kernel of shape
    `(kh, kw, c_in / groups, filters)` with `round(density * size)` trainable entries
    (only those values and their int32 positions are weights), `alpha` a scalar. With
    `groups > 1`, output channel `o` applies row `o` of `C_N` (`N = max(P, filters)`,
    `P = kh * kw * c_in / groups`) to its own group's patch (the authors' construction).

    Args:
        filters: Positive integer, number of output channels.
        kernel_size: Int or tuple of 2 ints.
        groups: Positive integer dividing both the input channels and `filters`.
    """ + _ARGS_DOC + """
    Example:

    >>> layer = DCTSparseConv2D(16, 3, padding="same", density=0.1)
    >>> layer(tf.zeros((2, 8, 8, 4))).shape
    TensorShape([2, 8, 8, 16])
    """

    rank = 2
    replaces = keras.layers.Conv2D


@keras.saving.register_keras_serializable(package="keras_dctsparse")
class DCTSparseConv1D(_GroupedConv):
    __doc__ = """1-D convolution at the price of a sparse one (DCT plus sparse).

    As `DCTSparseConv2D` on inputs `(batch, steps, channels)`, with the arguments of
    `keras.layers.Conv1D`; `padding` may also be `"causal"` (left zero padding).

    Args:
        filters: Positive integer, number of output channels.
        kernel_size: Int or tuple of 1 int.
        groups: Positive integer dividing both the input channels and `filters`.
    """ + _ARGS_DOC + """
    Example:

    >>> layer = DCTSparseConv1D(8, 5, padding="causal", density=0.1)
    >>> layer(tf.zeros((2, 20, 3))).shape
    TensorShape([2, 20, 8])
    """

    rank = 1
    paddings = ("valid", "same", "causal")
    replaces = keras.layers.Conv1D


@keras.saving.register_keras_serializable(package="keras_dctsparse")
class DCTSparseDepthwiseConv2D(_DCTSparseConvBase):
    __doc__ = """Depthwise 2-D convolution at the price of a sparse one (DCT plus sparse).

    `output = activation(depthwise_conv2d(x, alpha * Kd + S) + bias)`, with the arguments
    of `keras.layers.DepthwiseConv2D`. Output channel `o = ch * depth_multiplier + m` applies
    row `o` of `C_N`, `N = max(kh * kw, c_in * depth_multiplier)`, to the window of channel
    `ch`, as the authors build grouped offsets: every output channel has its own DCT filter
    (`keras_dctsparse.ops.conv_offset.depthwise_offset_kernel`). `S` has the Keras kernel
    shape `(kh, kw, c_in, depth_multiplier)`.

    Args:
        kernel_size: Int or tuple of 2 ints.
        depth_multiplier: Positive integer, outputs per input channel.
    """ + _ARGS_DOC.replace(
        '`"direct"`, `"matmul"`, `"fft"`', '`"direct"`'
    ) + """
    Example:

    >>> layer = DCTSparseDepthwiseConv2D(3, depth_multiplier=2, density=0.5)
    >>> layer(tf.zeros((2, 8, 8, 4))).shape
    TensorShape([2, 6, 6, 8])
    """

    rank = 2
    depthwise = True

    def __init__(self, kernel_size, depth_multiplier=1, **kwargs):
        if "groups" in kwargs:
            raise ValueError(
                "Argument `groups` is not supported by DCTSparseDepthwiseConv2D (it is "
                f"depthwise: one group per channel); received groups={kwargs['groups']!r}."
            )
        depth_multiplier = validation.check_positive_int("depth_multiplier", depth_multiplier)
        if str(kwargs.get("sparse_kernel")).lower() in ("sparse", "native"):
            raise ValueError(
                f"sparse_kernel={kwargs['sparse_kernel']!r} is not available for depthwise "
                "convolutions (their dense conv costs k*k multiply-adds per output and does "
                "not pay to sparsify); use sparse_kernel='auto' or 'dense'."
            )
        super().__init__(kernel_size, **kwargs)
        self.depth_multiplier = depth_multiplier

    def _check_methods(self):
        if self.offset_method in self.factored_methods:
            raise ValueError(
                f"offset_method={self.offset_method!r} is not available for depthwise "
                "convolutions; use 'auto', 'fused' or 'direct'."
            )

    def _in_channels_of(self, kernel_shape):
        return kernel_shape[-2]

    def _kernel_shape(self, in_channels):
        return (*self.kernel_size, in_channels, self.depth_multiplier)

    replaces = keras.layers.DepthwiseConv2D
    carried_keys = _DCTSparseConvBase.carried_keys + ("depth_multiplier",)
    kernel_regularizer_key = "depthwise_regularizer"

    @classmethod
    def kernel_shape_for(cls, config, input_shape):
        return (
            *_int_tuple("kernel_size", config["kernel_size"], cls.rank),
            cls._in_channels_for(config, input_shape),
            int(config["depth_multiplier"]),
        )

    def _out_channels(self, in_channels):
        return in_channels * self.depth_multiplier

    def _offset_kernel(self, in_channels, dtype, anchor=None):
        if not TENSORFLOW:
            return keras_ops.depthwise_offset_kernel(
                self.kernel_size, in_channels, self.depth_multiplier, dtype
            )
        return conv_ops.depthwise_offset_kernel(
            self.kernel_size, in_channels, self.depth_multiplier, dtype, anchor
        )

    def _convolve(self, x, kernel, padding):
        # Handles unequal strides, which tf.nn.depthwise_conv2d alone does not.
        return conv_ops._depthwise_conv2d(
            x, kernel, self.strides, padding.upper(), self.dilation_rate
        )

    def get_config(self):
        config = super().get_config()
        config["depth_multiplier"] = self.depth_multiplier
        return config
