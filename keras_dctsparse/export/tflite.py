"""TFLite export of Keras models with DCT-plus-sparse layers, builtin ops only.

`tf.signal.dct` and `tf.sparse.sparse_dense_matmul` need Flex (Select TF)
ops, which neither `tf.lite.Interpreter` nor `ai-edge-litert` can run, and a
constant `D` next to `S` is folded by the converter into one dense matrix (a
file as big as the dense model). So the layers' own `call` is never traced
here (`builtin_ops_mode` swaps it for the time of the trace).

Each layer of `export_kind="matrix"` (`DCTSparseDense`; `DCTSparseEinsumDense`
between the transposes/reshapes of its `matrix_input` / `matrix_output` hooks)
is exported as

    activation(alpha * dct_offset_builtin(x, units)
               + sparse_matmul_builtin(x, values, rows, cols, units) + bias)

(`keras_dctsparse.export.builtin_ops`) with its weights as constants: `D` stays an
implicit fast transform (`RFFT2D`, `MUL`, ... with O(N) constants) and `S`
stays `nnz` float32 values plus `nnz` int32 packed positions `row * m + col`
(split at run time by `FLOOR_DIV`/`FLOOR_MOD`; used by `GATHER`, `MUL`,
`UNSORTED_SEGMENT_SUM`).

Each DCTpS convolution (`DCTSparseConv1D/2D`, `DCTSparseDepthwiseConv2D`) is
exported as one convolution (`CONV_2D` / `DEPTHWISE_CONV_2D`) whose kernel
`alpha * Kd + S` is rebuilt by the interpreter on every invocation: `Kd` from
`RANGE`, integer `MUL`/`FLOOR_MOD` and `COS` (the same exact table as the
layer), `S` by `SCATTER_ND` of the `nnz` values at their packed int32
positions.
Both start from index ranges offset by a run-time zero (`min(batch, 0)`), so
the converter cannot fold them into a dense `P x c_out` constant. The cost is
`O(P * c_out)` work per invocation, the size of a dense kernel read, small
against the convolution itself for feature maps bigger than a few pixels.

With `form="built_once"` (or `"auto"` under a memory bound) a layer's
effective kernel `alpha * D + S` is instead built once, at the first
invocation, into a TFLite resource variable: one `IF` on a "built" flag
(variables initialized by `CALL_ONCE`) runs the same `COS`-table and
`SCATTER_ND` construction (`D` from `conv_offset.dct_block` for Dense
layers) and assigns the kernels; every call then reads them and runs plain
`FULLY_CONNECTED` / `CONV_2D` / `DEPTHWISE_CONV_2D`. The file still holds
only the nonzeros (the zero initial values the converter stores for the
variables are removed, `flatbuffer.clear_variable_initial_values`). Every
call then pays a `READ_VARIABLE` copy of each kernel (TFLite copies a
variable on every read): about 1.8x the dense model's latency for
LeNet-300-100 (`benchmarks/tflite.py`).

With `form="built_at_load"` (and `"auto"` for small float32 matrix layers
under the bound) a matrix layer is two `FULLY_CONNECTED`s: `x @ (alpha * D)`, whose
`(units, n)` weight the interpreter builds when it prepares the graph
(`allocate_tensors`) from operators it evaluates once and keeps as read-only
tensors (`builtin_ops.dct_kernel_at_load`: index arithmetic and a float
`GATHER` from a `2N + 2`-float cos table), so XNNPACK uses it as a static
weight with no per-call copy; plus `x @ S` by a `FULLY_CONNECTED` whose
weight is `S^T` in TFLite's CSR sparse encoding (`nnz` float32 values,
8/16-bit column indices; `flatbuffer.csr_sparsify_constants`), run by
TFLite's sparse kernel. `S` cannot be merged into the load-time kernel:
the runtime evaluates no scatter or addition at load time. Convolutions
have no sparse-weight kernel, so they stay `"built_once"`.

All other layers (Dense, Conv2D, Activation, Flatten, Reshape, Dropout,
BatchNormalization, pooling, ...) are called as they are, in inference mode,
and must convert to builtins themselves.

File size: about `nnz * (4 + 4)` bytes for the sparse parts (float32 values,
one packed int32 position each; 2 bytes per value with
`quantization="float16"`; layers with `n * m >= 2**31` store two int32s)
plus a fixed overhead per layer: the bias, the DCT constants (a few times
`max(n, units)` floats for Dense layers, more for non-power-of-two lengths,
which use Bluestein's algorithm over power-of-two FFTs; O(P + c_out) for
convs) and the flatbuffer's own metadata. A DCTpS layer never costs
`n * units` numbers.
"""

import contextlib
import functools
import os
import re
import tempfile

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2,
)

import keras_dctsparse.layers  # noqa: F401  (registers every DCTpS layer type)
from keras_dctsparse.layers.base import DCTSparseLayer
from keras_dctsparse.ops.conv_offset import dct_block
from keras_dctsparse.export.builtin_ops import CONSTANTS
from keras_dctsparse.export.builtin_ops import dct_kernel_at_load
from keras_dctsparse.export.builtin_ops import dct_offset_builtin
from keras_dctsparse.export.builtin_ops import load_time_int
from keras_dctsparse.export.builtin_ops import run_time_zero
from keras_dctsparse.export.builtin_ops import sparse_matmul_builtin
from keras_dctsparse.export.flatbuffer import clear_variable_initial_values
from keras_dctsparse.export.flatbuffer import csr_sparsify_constants
from keras_dctsparse.export.flatbuffer import float16_constants
from keras_dctsparse.export.flatbuffer import strip_tensor_names
from keras_dctsparse.export.flatbuffer import tflite_op_names

__all__ = [
    "DEFAULT_MAX_KERNEL_BYTES",
    "FORMS",
    "QUANTIZATIONS",
    "SPARSE_PRODUCTS",
    "TFLiteExportError",
    "builtin_ops_mode",
    "convert_tflite",
    "export_tflite",
]

QUANTIZATIONS = (None, "float16", "dynamic_int8")
FORMS = ("implicit", "built_once", "built_at_load", "auto")
# How the implicit form multiplies by S (`sparse_product` of `export_tflite`).
SPARSE_PRODUCTS = ("gather", "csr")
# Default bound of `form="auto"`: float32 bytes of one layer's dense kernel.
DEFAULT_MAX_KERNEL_BYTES = 8 * 2**20
# Float32 matrix layers under the bound with at least this many kernel entries are exported
# by `form="auto"` in the implicit form with the CSR product (fast DCT + TFLite's sparse
# FULLY_CONNECTED, tables at load), smaller ones built at load. Measured by
# `cd benchmarks && python tflite.py --layers --repeats 3000` (one layer at density 0.01,
# batch 1, one thread, best of 3000 interleaved calls; implicit-CSR / built at load /
# dense): 256x256 3.9 / 4.0 / 2.2 us, 512x512 7.3 / 13.8 / 9.6 us, 784x300 6.1 / 12.0 /
# 13.7 us, 1000x1000 14.1 / 49.1 / 57.1 us; below, built at load is faster and its file
# smaller (300x100: 3.2 / 2.3 us, 14.9 / 8.7 KB; 400x120: 3.6 / 3.1 us).
AUTO_IMPLICIT_MIN_ELEMENTS = 2**16
# `DCTSparseLayer.export_kind` values this module exports: "matrix" (a layer computing
# `matrix_output(matrix_input(x) @ W)` + bias: DCTSparseDense, DCTSparseEinsumDense) and
# "conv" (one convolution with `alpha * Kd + S`, `call_with_kernel`).
EXPORT_KINDS = ("matrix", "conv")
# Graph structure of the int8 dequantization (GATHER, RANGE, CAST, MUL) in bytes.
INT8_MIN_SAVING_BYTES = 1024


class TFLiteExportError(ValueError):
    """A model cannot be exported to TFLite with builtin ops only."""


def sparse_entries(layer):
    """`(values, rows, cols)` of the sparse part `S` of a built DCTpS layer.

    Works for both storage formats. For `sparse_format="masked"` the entries
    are the positions of the mask (kept entries that are currently zero are
    listed too), so the export is sparse either way.

    Args:
        layer: A built `DCTSparseDense` or DCTpS convolution.

    Returns:
        float32 `(nnz,)` values and int32 `(nnz,)` rows (input index, the
        flattened patch index for convs) and cols (output index), as numpy
        arrays.
    """
    weight = layer.sparse_weight
    if weight.sparse_format == "masked":
        shape = weight.matrix_shape
        mask = np.asarray(keras.ops.convert_to_numpy(weight.mask)).reshape(shape)
        kernel = np.asarray(keras.ops.convert_to_numpy(weight.masked_kernel))
        rows, cols = np.nonzero(mask > 0)
        values = kernel.reshape(shape)[rows, cols]
    else:
        values = keras.ops.convert_to_numpy(weight.values)
        rows, cols = keras.ops.convert_to_numpy(weight.indices)
    return (
        np.asarray(values, dtype=np.float32),
        np.asarray(rows, dtype=np.int32),
        np.asarray(cols, dtype=np.int32),
    )


def export_call(
    layer,
    dct_constants="stored",
    quantization=None,
    built_once=None,
    narrow_positions=True,
    at_load=None,
    csr=None,
):
    """A replacement for `layer.call` built from TFLite-builtin ops and constants.

    Args:
        layer: A built `DCTSparseDense` or DCTpS convolution.
        dct_constants: `"stored"`, `"computed"` or `"at_load"` tables of a
            Dense layer's fast DCT (`builtin_ops.dct_offset_builtin`);
            convolutions always compute their `COS` table.
        quantization: None, `"float16"` (left to the converter; for files with
            built-once kernels `flatbuffer.float16_constants` after it) or
            `"dynamic_int8"` (the sparse values stored as int8 with one
            scale per layer, `quantize_int8`).
        built_once: None (the implicit form) or a `BuiltOnceKernels`: the
            layer's effective kernel `alpha * D + S` is then built once, at
            the first invocation, into a resource variable of that store,
            and every call runs one plain `FULLY_CONNECTED` / `CONV_2D` /
            `DEPTHWISE_CONV_2D` on it.
        narrow_positions: Store the positions as 16-bit gaps where they fit
            and it pays (`delta_encode`), else one int32 per entry.
        at_load: None, or a `SparseWeights` (form `"built_at_load"`, matrix
            layers): `alpha * D` is then a `FULLY_CONNECTED` weight the
            interpreter builds when it prepares the graph
            (`builtin_ops.dct_kernel_at_load`) and `S` a second
            `FULLY_CONNECTED` with a CSR-encoded weight registered there.
        csr: None, or a `SparseWeights` (implicit matrix layers,
            `sparse_product="csr"`): `S` is then a `FULLY_CONNECTED` with a
            CSR-encoded weight registered there instead of `GATHER` /
            `UNSORTED_SEGMENT_SUM`.

    Returns:
        A function `inputs -> outputs` computing the same as `layer.call`
        (in float32) with the weights' current values frozen in.
    """
    if layer.export_kind == "matrix":
        if at_load is not None:
            return _dense_at_load_call(layer, at_load)
        if built_once is not None:
            return _dense_built_once_call(layer, quantization, built_once, narrow_positions)
        return _dense_export_call(layer, dct_constants, quantization, narrow_positions, csr)
    if layer.export_kind == "conv":
        return _conv_export_call(layer, quantization, built_once, narrow_positions)
    raise NotImplementedError(_not_exportable_message(layer))


def _exportable(layer):
    return isinstance(layer, DCTSparseLayer) and layer.export_kind in EXPORT_KINDS


def _not_exportable_message(layer):
    names = [cls.__name__ for cls in DCTSparseLayer.layer_types() if cls.export_kind in EXPORT_KINDS]
    return (
        f"TFLite export of layer '{layer.name}' ({type(layer).__name__}, export_kind="
        f"{layer.export_kind!r}) is not implemented: the DCT-plus-sparse layers that can be "
        f"exported are those of export_kind {EXPORT_KINDS} ({', '.join(names)})."
    )


def _frozen_alpha(layer):
    if layer.offset != "dct":
        return None
    return np.float32(keras.ops.convert_to_numpy(layer.alpha))


def pack_positions(rows, cols, num_cols):
    """One int32 per entry, `rows * num_cols + cols`, or None if that overflows int32.

    Args:
        rows: Integer numpy array of row indices.
        cols: Integer numpy array of column indices, each `< num_cols`.
        num_cols: Number of columns of the matrix.

    Returns:
        An int32 numpy array, or None when the flat index of the last entry of
        a `max(rows) + 1` by `num_cols` matrix does not fit in int32.

    Example:

    >>> pack_positions(np.array([0, 2]), np.array([1, 0]), 3).tolist()
    [1, 6]
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if rows.size and (int(rows.max()) + 1) * num_cols > np.iinfo(np.int32).max:
        return None
    return (rows * num_cols + cols).astype(np.int32)


def delta_encode(packed):
    """Packed positions as 16-bit gaps: `(order, start, gaps)`, or None if a gap is too big.

    Sorting the flat positions `row * num_cols + col` makes them increasing;
    the gaps between neighbours are below `num_cols * rows / nnz` on average
    (100 at density 1%), so they fit in 16 bits unless the matrix is far
    sparser than 1 in 65536. They are stored as int16 biased by `-32768`
    (TFLite has no uint16 arithmetic).

    Args:
        packed: int32 numpy array of distinct flat positions.

    Returns:
        `(order, start, gaps)`: the sorting permutation (apply it to the
        values too), the first sorted position (a Python int), and int16
        `gaps` with `gaps[0] = -32768` and
        `sorted[i] = start + sum(gaps[1..i] + 32768)`; or None when `packed`
        is empty or some gap is 65536 or more.

    Example:

    >>> order, start, gaps = delta_encode(np.array([7000, 5, 300], np.int32))
    >>> order.tolist(), start, (gaps.astype(int) + 32768).tolist()
    ([1, 2, 0], 5, [0, 295, 6700])
    >>> delta_encode(np.array([70000, 5], np.int32)) is None  # a gap of 69995
    True
    """
    packed = np.asarray(packed, dtype=np.int64)
    if packed.size == 0:
        return None
    order = np.argsort(packed, kind="stable")
    ordered = packed[order]
    gaps = np.diff(ordered, prepend=ordered[0])
    if int(gaps.max()) > 65535:
        return None
    return order, int(ordered[0]), (gaps - 32768).astype(np.int16)


# Positions are stored as 16-bit gaps (`delta_encode`) only where that saves
# more than the decoding operators cost (RANGE, GATHER, CAST, ADD, CUMSUM).
POSITION_GAPS_MIN_SAVING_BYTES = 512


def _entries_fn(values, rows, cols, num_cols, quantization, narrow_positions=True):
    """A function `zero -> (float32 values, flat int32 positions, pairs)` for the export graph.

    The file stores one int32 per entry (`pack_positions`), or, with
    `narrow_positions` and when it saves more than
    `POSITION_GAPS_MIN_SAVING_BYTES`, one int16 gap (`delta_encode`) that the
    interpreter sums back (`GATHER` with a run-time index range, so the
    converter cannot fold them into int32 constants, `CAST`, `CUMSUM`). The
    run-time `zero` keeps the converter from folding the positions into
    stored arrays. Matrices too big for an int32 flat index store both
    int32 arrays: the function then returns `flat = None` and
    `pairs = (rows, cols)`.
    """
    packed = pack_positions(rows, cols, num_cols)
    if packed is None:
        values_fn = _values_fn(values, quantization)
        return lambda zero: (
            values_fn(zero), None, (tf.constant(rows) + zero, tf.constant(cols) + zero)
        )
    encoded = None
    # Not with float16: ai-edge-litert's default (XNNPACK) delegate then gives
    # wrong results from the second invocation on at batch 64 and more
    # (tests/export/test_tflite.py::test_repeated_invocations_at_a_large_batch).
    narrow_positions = narrow_positions and quantization != "float16"
    if narrow_positions and 2 * packed.size > POSITION_GAPS_MIN_SAVING_BYTES:
        encoded = delta_encode(packed)
    if encoded is None:
        values_fn = _values_fn(values, quantization)
        return lambda zero: (values_fn(zero), tf.constant(packed) + zero, None)
    order, first, gaps = encoded
    values_fn = _values_fn(np.asarray(values)[order], quantization)

    def entries(zero):
        picked = tf.gather(tf.constant(gaps), tf.range(zero, zero + gaps.shape[0]))
        flat = tf.cumsum(tf.cast(picked, tf.int32) + 32768) + (first + zero)
        return values_fn(zero), flat, None

    return entries


def _positions_fn(entries, num_cols):
    """A function `zero -> (values, rows, cols)`: `entries` with rows and cols split.

    The flat positions are split with `FLOOR_DIV`/`FLOOR_MOD` at run time.
    """

    def positions(zero):
        values, flat, pairs = entries(zero)
        if flat is None:
            return (values,) + pairs
        return values, tf.math.floordiv(flat, num_cols), tf.math.floormod(flat, num_cols)

    return positions


def quantize_int8(values):
    """Symmetric per-layer int8 quantization: `values ~= q * scale`.

    Args:
        values: float numpy array.

    Returns:
        `(q, scale)`: int8 numpy array with entries in [-127, 127] and a
        float32 scale `max|values| / 127` (1 for all-zero values).

    Example:

    >>> q, scale = quantize_int8(np.array([0.5, -1.0], np.float32))
    >>> q.tolist(), float(scale)
    ([64, -127], 0.007874015718698502)
    """
    values = np.asarray(values, dtype=np.float32)
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    scale = np.float32(peak / 127.0 if peak > 0 else 1.0)
    q = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
    return q, scale


def _values_fn(values, quantization):
    """A function `zero -> float32 values` for the export graph.

    With `quantization="dynamic_int8"` the file stores the values as int8
    plus one float32 scale; the interpreter gathers them with a run-time
    index range (so the converter cannot fold them back to float32),
    casts and scales them. Those four operators cost about 1 KB of graph
    structure, so a layer whose int8 values would save no more than
    `INT8_MIN_SAVING_BYTES` (3 bytes per value) keeps float32 values. Otherwise they are a float32 constant (stored
    as float16 with `"float16"`, by the converter).
    """
    if quantization != "dynamic_int8" or 3 * values.size <= INT8_MIN_SAVING_BYTES:
        return lambda zero: tf.constant(values)
    q, scale = quantize_int8(values)

    def dequantized(zero):
        picked = tf.gather(tf.constant(q), tf.range(zero, zero + q.shape[0]))
        return tf.cast(picked, tf.float32) * scale

    return dequantized


def _dense_call_with(layer, product, bias_into_product=False):
    """`layer`'s export call around `product(x) -> (rows, m)` float32 (`export_kind="matrix"`).

    Brings the input to the `(rows, n)` matrix form and the product back to the
    output layout (the layer's `matrix_input` / `matrix_output` hooks), adds the
    frozen bias and applies the activation. With `bias_into_product`, `product`
    is called as `product(rows, bias)` and adds the bias itself (so that the
    converter fuses it into a `FULLY_CONNECTED`) where that is the same thing:
    when `matrix_input` returned its input unchanged and the bias has shape
    `(m,)`; otherwise it is called with `bias=None`.
    """
    bias = None
    if layer.bias is not None:
        bias = np.asarray(keras.ops.convert_to_numpy(layer.bias), dtype=np.float32)
    activation = layer.activation
    output_dtype = layer.compute_dtype

    def call(inputs):
        x = tf.cast(inputs, tf.float32)
        rows = layer.matrix_input(x)
        fused = (
            bias_into_product
            and bias is not None
            and rows is x
            and bias.shape == (layer.sparse_weight.matrix_shape[1],)
        )
        if bias_into_product:
            product_rows = product(rows, tf.constant(bias) if fused else None)
        else:
            product_rows = product(rows)
        outputs = layer.matrix_output(product_rows, x)
        if bias is not None and not fused:
            outputs = outputs + tf.constant(bias)
        if activation is not None:
            outputs = activation(outputs)
        return tf.cast(outputs, output_dtype)

    return call


def _dense_export_call(
    layer, dct_constants, quantization=None, narrow_positions=True, csr=None
):
    input_dim, units = layer.sparse_weight.matrix_shape
    values, rows, cols = sparse_entries(layer)
    alpha = _frozen_alpha(layer)
    if csr is not None:
        placeholder = csr.add(values, rows, cols, (input_dim, units))

        def csr_product(x, bias):
            outputs = tf.matmul(x, tf.constant(placeholder), transpose_b=True)
            if bias is not None:
                outputs = outputs + bias
            if alpha is not None:
                ints = csr.int if dct_constants == "at_load" else None
                offset = dct_offset_builtin(x, units, dct_constants, ints)
                outputs = outputs + tf.constant(alpha) * offset
            return outputs

        return _dense_call_with(layer, csr_product, bias_into_product=True)
    positions = _positions_fn(
        _entries_fn(values, rows, cols, units, quantization, narrow_positions), units
    )

    def product(x):
        zero = run_time_zero(x)
        value, row_index, col_index = positions(zero)
        outputs = sparse_matmul_builtin(x, value, row_index, col_index, units)
        if alpha is not None:
            offset = dct_offset_builtin(x, units, dct_constants)
            outputs = outputs + tf.constant(alpha) * offset
        return outputs

    return _dense_call_with(layer, product)


def _scatter_fn(entries, shape):
    """A function `zero -> float32 (rows_count, cols_count)` matrix holding `S`.

    `SCATTER_ND` of the frozen values at their positions (`_entries_fn`),
    with the run-time `zero` in the indices and the shape so that the
    converter cannot fold the dense matrix into a constant.
    """
    rows_count, cols_count = shape

    def scatter(zero):
        values, flat, pairs = entries(zero)
        if flat is not None:
            sparse = tf.scatter_nd(flat[:, tf.newaxis], values, [rows_count * cols_count + zero])
            return tf.reshape(sparse, [rows_count, cols_count])
        indices = tf.stack(pairs, axis=1)
        return tf.scatter_nd(indices, values, tf.stack([rows_count + zero, cols_count]))

    return scatter


def _conv_export_call(layer, quantization=None, built_once=None, narrow_positions=True):
    """Export call of a DCTpS conv: one conv with a kernel built at run time.

    The kernel `alpha * Kd + S` is built from builtin ops: `Kd` from
    `RANGE`, integer `MUL`/`FLOOR_MOD` and `COS` (the layer's own table,
    `conv_offset.dct_block`), `S` by `SCATTER_ND` of the `nnz` frozen values
    at their packed int32 positions. Only those O(nnz + P + c_out) numbers
    are in the file; the convolution itself is the layer's (`CONV_2D`,
    `DEPTHWISE_CONV_2D`, ...), whatever its `offset_method`. The kernel is
    rebuilt on every invocation (implicit form), or once into a variable of
    `built_once` (a `BuiltOnceKernels`).
    """
    weight = layer.sparse_weight
    kernel_shape = tuple(weight.kernel_shape)
    values, rows, cols = sparse_entries(layer)
    rows_count, cols_count = weight.matrix_shape
    entries_quantization = quantization if built_once is None else _built_once_entries(quantization)
    entries = _entries_fn(values, rows, cols, cols_count, entries_quantization, narrow_positions)
    scatter = _scatter_fn(entries, weight.matrix_shape)
    alpha = _frozen_alpha(layer)

    def build(zero):
        kernel = tf.reshape(scatter(zero), kernel_shape)
        if alpha is not None:
            offset = layer.offset_kernel(tf.float32, anchor=zero)
            kernel = kernel + tf.constant(alpha) * offset
        return kernel

    if built_once is not None:
        build = _stored_in_tflite_layout(layer, kernel_shape, build, built_once)

    def kernel_fn(x):
        return tf.cast(build(run_time_zero(x)), x.dtype)

    return functools.partial(layer.call_with_kernel, kernel_fn=kernel_fn)


def _stored_in_tflite_layout(layer, kernel_shape, build, built_once):
    """Registers a conv kernel with `built_once`, stored in TFLite's filter layout.

    TFLite's `CONV_2D` takes its filter as `(out, kh, kw, in)`, TensorFlow's
    `(kh, kw, in, out)`: a variable in TensorFlow's layout costs a
    `TRANSPOSE` of the kernel on every call. The variable holds the kernel
    transposed instead, and the read transposes it back, which the converter
    cancels against its own transpose. (Depthwise filters only need a
    reshape; they are stored as they are. So are Conv1D kernels: the
    converter does not cancel the transposes across the `EXPAND_DIMS` of
    TensorFlow's `conv1d`, so one `TRANSPOSE` per call remains there.)

    Returns:
        A function `zero -> kernel` in TensorFlow's layout.
    """
    if layer.depthwise or len(kernel_shape) != 4:
        return built_once.add(layer.name, kernel_shape, build)
    rank = len(kernel_shape)
    to_tflite = (rank - 1,) + tuple(range(rank - 1))
    back = tuple(range(1, rank)) + (0,)
    stored = built_once.add(
        layer.name,
        tuple(kernel_shape[axis] for axis in to_tflite),
        lambda zero: tf.transpose(build(zero), to_tflite),
    )
    return lambda zero: tf.transpose(stored(zero), back)


def _built_once_entries(quantization):
    """The `quantization` argument of `_entries_fn` for a built-once kernel.

    float16 files with built-once kernels are converted in float32 and their
    constants stored as float16 afterwards (`flatbuffer.float16_constants`),
    so the entries are traced as in a float32 file: 16-bit position gaps
    allowed (they are decoded once, in the build branch).
    """
    return None if quantization == "float16" else quantization


def _dense_built_once_call(layer, quantization, built_once, narrow_positions=True):
    """Export call of a `DCTSparseDense` whose kernel is built once (`FULLY_CONNECTED`).

    The `(units, n)` kernel `alpha * D^T + S^T` (the layout of TFLite's
    `FULLY_CONNECTED` weights) is built at the first invocation from
    `conv_offset.dct_block` (a `COS` table of index ranges) and a
    `SCATTER_ND` of the frozen values, and stored in a variable of
    `built_once`; later calls read it.
    """
    input_dim, units = layer.sparse_weight.matrix_shape
    values, rows, cols = sparse_entries(layer)
    # Transposed: the FULLY_CONNECTED weights are (units, input_dim).
    entries = _entries_fn(
        values, cols, rows, input_dim, _built_once_entries(quantization), narrow_positions
    )
    scatter = _scatter_fn(entries, (units, input_dim))
    alpha = _frozen_alpha(layer)

    def build(zero):
        kernel = scatter(zero)
        if alpha is not None:
            offset = dct_block(units, input_dim, tf.float32, anchor=zero)
            kernel = kernel + tf.constant(alpha) * offset
        return kernel

    kernel_fn = built_once.add(layer.name, (units, input_dim), build)
    def product(x):
        return tf.matmul(x, kernel_fn(run_time_zero(x)), transpose_b=True)

    return _dense_call_with(layer, product)


def csr_of_transpose(values, rows, cols, num_rows, num_cols):
    """CSR arrays of `S^T` for `S` given by `(values, rows, cols)` of shape `(num_rows, num_cols)`.

    Args:
        values: `(nnz,)` numpy values.
        rows: `(nnz,)` row indices of `S` (`< num_rows`).
        cols: `(nnz,)` column indices of `S` (`< num_cols`).
        num_rows: Rows of `S` (columns of `S^T`).
        num_cols: Columns of `S` (rows of `S^T`).

    Returns:
        `(values, segments, indices)` of the `(num_cols, num_rows)` matrix
        `S^T`: float32 values in row-major order, int64 `segments` of length
        `num_cols + 1` and int64 column `indices`.

    Example:

    >>> v, seg, ind = csr_of_transpose(np.array([1.0, 2.0]), np.array([0, 2]),
    ...                                np.array([1, 0]), 3, 2)
    >>> v.tolist(), seg.tolist(), ind.tolist()  # S^T = [[0, 0, 2], [1, 0, 0]]
    ([2.0, 1.0], [0, 1, 2], [2, 0])
    """
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    order = np.lexsort((rows, cols))
    counts = np.bincount(cols, minlength=num_cols)
    segments = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return np.asarray(values, np.float32)[order], segments, rows[order]


class SparseWeights:
    """The CSR-encoded `FULLY_CONNECTED` weights of layers exported `"built_at_load"`.

    Each layer traces its `S^T` as a dense `(units, n)` placeholder constant of
    distinct random numbers (so the converter keeps it as one plain
    `FULLY_CONNECTED` weight, found again by its bytes); after conversion,
    `flatbuffer.csr_sparsify_constants` replaces it by the `nnz` values with
    TFLite's CSR sparsity metadata, which the interpreter's sparse
    `FULLY_CONNECTED` kernel runs. The placeholder is conversion-time memory
    only (the layers of this form are bounded by `max_kernel_bytes`).
    """

    def __init__(self):
        self.replacements = []
        self.anchor = None
        self._ints = {}

    def start_trace(self, anchor):
        """Sets the tensor whose batch size anchors the load-time integers (a model input)."""
        self.anchor = anchor
        self._ints = {}

    def int(self, value):
        """`builtin_ops.load_time_int(anchor, value)`, one per value and trace."""
        if value not in self._ints:
            self._ints[value] = load_time_int(self.anchor, value)
        return self._ints[value]

    def add(self, values, rows, cols, shape):
        """Registers `S` (`(n, units)`, given by its entries) and returns the `S^T` placeholder.

        Args:
            values: `(nnz,)` float32 numpy values.
            rows: `(nnz,)` input indices.
            cols: `(nnz,)` output indices.
            shape: `(n, units)`.

        Returns:
            A float32 `(units, n)` numpy placeholder to trace as the weight.
        """
        input_dim, units = shape
        rng = np.random.default_rng(len(self.replacements))
        placeholder = (1.0 + rng.random((units, input_dim))).astype(np.float32)
        csr = csr_of_transpose(values, rows, cols, input_dim, units)
        self.replacements.append((placeholder,) + csr)
        return placeholder


def _dense_at_load_call(layer, at_load):
    """Export call of a matrix layer in the `"built_at_load"` form: two `FULLY_CONNECTED`s.

    `x @ (alpha * D)` with the `(units, n)` weight `alpha * D^T` built by the
    interpreter when it prepares the graph (`builtin_ops.dct_kernel_at_load`;
    XNNPACK then treats it as a static weight), plus `x @ S` by a
    `FULLY_CONNECTED` whose weight is `S^T` in TFLite's CSR encoding
    (registered with `at_load`, a `SparseWeights`).
    """
    input_dim, units = layer.sparse_weight.matrix_shape
    values, rows, cols = sparse_entries(layer)
    alpha = _frozen_alpha(layer)
    # Layers keep at least one entry (nnz >= 1).
    placeholder = at_load.add(values, rows, cols, (input_dim, units))

    def product(x, bias):
        # The sparse FULLY_CONNECTED first, then the (delegated) dense one with
        # the bias and the sum: one delegate partition per layer.
        parts = [tf.matmul(x, tf.constant(placeholder), transpose_b=True)]
        if alpha is not None:
            kernel = dct_kernel_at_load(at_load.anchor, units, input_dim, alpha, at_load.int)
            parts.append(tf.matmul(x, kernel, transpose_b=True))
        if bias is not None:
            parts[-1] = parts[-1] + bias
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    return _dense_call_with(layer, product, bias_into_product=True)


class BuiltOnceKernels(tf.Module):
    """The resource variables of the layers exported with `form="built_once"`.

    Each layer registers a kernel variable (declared with its full shape and
    a zero initial value, which `clear_variable_initial_values` removes from
    the file after conversion) and the function that builds it. The exported
    graph starts with one `IF` on a boolean "built" variable whose other
    branch builds every kernel (`COS` tables, `SCATTER_ND`, ...), assigns
    them and sets the flag: that happens at the first invocation only (the
    converter initializes the variables in a `CALL_ONCE` subgraph). Each
    layer then reads its kernel (`READ_VARIABLE`, a copy of the kernel) and
    runs a plain `FULLY_CONNECTED` / `CONV_2D` / `DEPTHWISE_CONV_2D`.
    """

    def __init__(self):
        super().__init__(name="dctps_built_once")
        # The CSR weights of the layers exported "built_at_load" (not variables).
        self.sparse_weights = SparseWeights()
        self.flag = None
        self.kernels = []
        self._builds = []
        self._ready = None

    @property
    def variables_to_keep(self):
        """The variables the export must not freeze into constants."""
        return ([self.flag] if self.kernels else []) + list(self.kernels)

    @property
    def kernel_names(self):
        """Names of the kernel variables (their `VAR_HANDLE` shared names)."""
        return [kernel.name.split(":")[0] for kernel in self.kernels]

    def add(self, layer_name, shape, build):
        """Registers a kernel of `shape` computed by `build(zero)`.

        Args:
            layer_name: Name of the layer (used in the variable's name).
            shape: Static shape of the kernel.
            build: Function `zero -> float32 kernel` (see `run_time_zero`).

        Returns:
            A function `zero -> float32 kernel` for the layer's export call:
            it reads the kernel built by `build_all`.
        """
        if self.flag is None:
            self.flag = tf.Variable(False, trainable=False, name="dctps_kernels_built")
        index = len(self.kernels)
        name = re.sub(r"[^A-Za-z0-9_]", "_", layer_name)
        kernel = tf.Variable(
            tf.zeros(shape, tf.float32), trainable=False, name=f"dctps_kernel_{index}_{name}"
        )
        self.kernels.append(kernel)
        self._builds.append(build)

        def read(zero):
            if self._ready is None:
                raise TFLiteExportError(
                    f"The built-once kernel of layer '{layer_name}' is read before "
                    "`BuiltOnceKernels.build_all` was traced."
                )
            with tf.control_dependencies([self._ready]):
                return kernel.read_value()

        return read

    def build_all(self, zero):
        """Traces `IF(built, nothing, build and assign every kernel)`.

        Args:
            zero: The run-time zero (`run_time_zero` of a model input).
        """
        if not self.kernels:
            return

        def build():
            assigned = [
                kernel.assign(build(zero)) for kernel, build in zip(self.kernels, self._builds)
            ]
            with tf.control_dependencies(assigned):
                done = self.flag.assign(True)
            with tf.control_dependencies([done]):
                return tf.identity(zero)

        self._ready = tf.cond(self.flag, lambda: tf.identity(zero), build)


def dense_kernel_bytes(layer):
    """Bytes of a DCTpS layer's dense float32 kernel `alpha * D + S`.

    Args:
        layer: A built `DCTSparseDense` or DCTpS convolution.

    Returns:
        `4 * n * m` for a `(n, m)` layer (`4 * P * c_out` for a conv kernel).
    """
    rows, cols = layer.sparse_weight.matrix_shape
    return 4 * int(rows) * int(cols)


def layer_form(layer, form="auto", max_kernel_bytes=DEFAULT_MAX_KERNEL_BYTES, quantization=None):
    """The export form of one DCTpS layer: `"built_at_load"`, `"built_once"` or `"implicit"`.

    Args:
        layer: A built `DCTSparseDense` or DCTpS convolution.
        form: `"implicit"`, `"built_once"`, `"built_at_load"` (matrix layers;
            convolutions are then `"built_once"`: their kernel needs a scatter
            of `S`, which the runtime does not evaluate at load time), or
            `"auto"`: implicit for layers whose dense kernel takes more than
            `max_kernel_bytes` (`dense_kernel_bytes`); under the bound,
            float32 matrix layers of at least `AUTO_IMPLICIT_MIN_ELEMENTS`
            kernel entries implicit (with the CSR product,
            `layer_sparse_product`), smaller ones `"built_at_load"`, and
            `"built_once"` for convolutions and quantized files.
        max_kernel_bytes: The memory bound of `"auto"`.
        quantization: The export's quantization (`"built_at_load"` is
            float32 only).

    Returns:
        `"built_at_load"`, `"built_once"` or `"implicit"`.

    Example:

    >>> layer = DCTSparseDense(10, density=0.5)
    >>> layer.build((None, 20))
    >>> [layer_form(layer, "auto", b) for b in (800, 799)]
    ['built_at_load', 'implicit']
    >>> big = DCTSparseDense(300, density=0.01)
    >>> big.build((None, 784))
    >>> layer_form(big, "auto"), layer_form(big, "auto", quantization="float16")
    ('implicit', 'built_once')
    """
    if form == "auto":
        if dense_kernel_bytes(layer) > max_kernel_bytes:
            return "implicit"
        if quantization is not None or layer.export_kind != "matrix":
            return "built_once"
        rows, cols = layer.sparse_weight.matrix_shape
        if int(rows) * int(cols) >= AUTO_IMPLICIT_MIN_ELEMENTS:
            return "implicit"
        return "built_at_load"
    if form == "built_at_load" and layer.export_kind != "matrix":
        return "built_once"
    return form


def layer_sparse_product(
    layer, form="auto", max_kernel_bytes=DEFAULT_MAX_KERNEL_BYTES, quantization=None,
    sparse_product="gather",
):
    """How an implicit-form layer multiplies by `S`: `"csr"` or `"gather"`.

    `sparse_product` as given, except that `form="auto"` uses `"csr"` for the
    float32 matrix layers it exports implicitly under `max_kernel_bytes` (the
    CSR product traces a dense `n x m` placeholder at export time, which the
    bound allows; in the file and at run time it is `nnz`-sized).

    Args:
        layer: A built DCTpS layer.
        form, max_kernel_bytes, quantization: As for `layer_form`.
        sparse_product: The export's `sparse_product`.

    Returns:
        `"csr"` or `"gather"`.

    Example:

    >>> big = DCTSparseDense(300, density=0.01)
    >>> big.build((None, 784))
    >>> layer_sparse_product(big, "auto"), layer_sparse_product(big, "auto", 1000)
    ('csr', 'gather')
    """
    if (
        form == "auto"
        and quantization is None
        and layer.export_kind == "matrix"
        and dense_kernel_bytes(layer) <= max_kernel_bytes
    ):
        return "csr"
    return sparse_product


def _check_form(form, max_kernel_bytes):
    if form not in FORMS:
        raise ValueError(f"Argument `form` must be one of {FORMS}; received form={form!r}.")
    if isinstance(max_kernel_bytes, bool) or not isinstance(
        max_kernel_bytes, (int, np.integer)
    ) or max_kernel_bytes < 0:
        raise ValueError(
            "Argument `max_kernel_bytes` must be a non-negative integer; "
            f"received max_kernel_bytes={max_kernel_bytes!r}."
        )


def _freeze_except(concrete, variables):
    """`convert_variables_to_constants_v2` that leaves `variables` as captured variables.

    Uses TensorFlow's own freezing machinery (private API: the public
    function freezes every variable) with a deny list, and captures the
    kept variables' handles again (the private helper would turn them into
    function inputs), so that the converter sees them as variables of the
    trackable object that holds them.
    """
    from tensorflow.python.eager import context
    from tensorflow.python.eager import wrap_function
    from tensorflow.python.framework import convert_to_constants as ctc

    by_handle = {id(variable.handle): variable for variable in variables}
    keep = {}
    for external, internal in concrete.graph.captures:
        if id(external) in by_handle:
            keep[internal.name.split(":")[0]] = by_handle[id(external)].handle
    data = ctc._FunctionConverterDataInEager(
        func=concrete,
        lower_control_flow=False,
        aggressive_inlining=False,
        variable_names_denylist=set(keep),
    )
    graph_def, _ = ctc._replace_variables_by_constants(converter_data=data)
    captured = {id(tensor) for tensor in concrete.graph.internal_captures}
    inputs = [tensor.name for tensor in concrete.inputs if id(tensor) not in captured]
    outputs = [tensor.name for tensor in concrete.outputs]
    # As in TensorFlow's own helper: use the rewritten functions of `graph_def`.
    for function in graph_def.library.function:
        if context.context().has_function(function.signature.name):
            context.context().remove_function(function.signature.name)
    frozen = wrap_function.function_from_graph_def(graph_def, inputs, outputs, captures=keep)
    originals = [tensor for tensor in concrete.inputs if id(tensor) not in captured]
    for tensor, original in zip(frozen.inputs, originals):
        tensor.set_shape(original.shape)
    return frozen


def _all_layers(model):
    """Every layer nested in `model` (not `model` itself), depth first."""
    found = []
    seen = set()

    def visit(layer):
        for child in getattr(layer, "layers", None) or ():
            if id(child) not in seen:
                seen.add(id(child))
                found.append(child)
                visit(child)

    visit(model)
    return found


def _check_backend():
    """Raises if Keras does not run on TensorFlow: the export traces the layers' TF kernels."""
    if keras.backend.backend() != "tensorflow":
        raise TFLiteExportError(
            "TFLite export needs the TensorFlow backend; KERAS_BACKEND is "
            f"{keras.backend.backend()!r}. Save the model (`model.save('m.keras')`), load it "
            "in a process started with KERAS_BACKEND=tensorflow and export it there."
        )


def _check_layers(layers):
    _check_backend()
    for layer in layers:
        if isinstance(layer, DCTSparseLayer) and not _exportable(layer):
            raise NotImplementedError(_not_exportable_message(layer))
        if isinstance(layer, DCTSparseLayer) and layer.sparse_weight is None:
            raise TFLiteExportError(
                f"Layer '{layer.name}' is not built; build the model before export."
            )


@contextlib.contextmanager
def _export_calls(
    layers,
    dct_constants="stored",
    quantization=None,
    form="implicit",
    max_kernel_bytes=DEFAULT_MAX_KERNEL_BYTES,
    narrow_positions=True,
    sparse_product="gather",
):
    """Temporarily replaces `call` of every exportable DCTpS layer in `layers`.

    Yields:
        The `BuiltOnceKernels` holding the variables of the layers exported
        in the built-once form (empty if none).
    """
    missing = object()
    saved = []
    store = BuiltOnceKernels()
    try:
        for layer in layers:
            if _exportable(layer):
                saved.append((layer, layer.__dict__.get("call", missing)))
                built_once = None
                at_load = None
                chosen = layer_form(layer, form, max_kernel_bytes, quantization)
                if chosen == "built_once":
                    built_once = store
                elif chosen == "built_at_load":
                    at_load = store.sparse_weights
                csr = None
                product = layer_sparse_product(
                    layer, form, max_kernel_bytes, quantization, sparse_product
                )
                if chosen == "implicit" and product == "csr":
                    csr = store.sparse_weights
                constants = dct_constants
                if form == "auto" and csr is not None and dct_constants == "stored":
                    constants = "at_load"  # the same speed, a smaller file
                replacement = export_call(
                    layer, constants, quantization, built_once, narrow_positions, at_load, csr,
                )
                layer.__dict__["call"] = replacement
        yield store
    finally:
        for layer, previous in reversed(saved):
            if previous is missing:
                layer.__dict__.pop("call", None)
            else:
                layer.__dict__["call"] = previous


@contextlib.contextmanager
def builtin_ops_mode(model, dct_constants="stored"):
    """Within this context, `model`'s DCTpS layers trace as TFLite builtin ops.

    Inside it every `DCTSparseDense` and DCTpS convolution of `model` (nested
    models included) computes the same function from builtin-convertible ops
    with its weights' current values frozen in (see `export_tflite`), so
    Keras's own `model.export(path, format="litert")` writes a file with no
    Flex ops and no dense `n x m` matrix. Outside it (and after an error)
    the layers are back to their normal `call`. Do not train inside it: the
    frozen weights do not see updates.

    Args:
        model: A built Keras model.
        dct_constants: As in `export_tflite`.

    Yields:
        `model`.

    Raises:
        TFLiteExportError: if a DCTpS layer is not built.
        NotImplementedError: for an unsupported DCTpS layer type.

    Example:

    >>> import os, tempfile
    >>> model = keras.Sequential([keras.Input((64,)), DCTSparseDense(10, density=0.1)])
    >>> path = os.path.join(tempfile.mkdtemp(), "model.tflite")
    >>> with builtin_ops_mode(model):
    ...     model.export(path, format="litert", verbose=False)
    >>> os.path.getsize(path) > 0
    True
    """
    layers = _all_layers(model)
    _check_layers(layers)
    with _export_calls(layers, _check_dct_constants(dct_constants)):
        yield model


def _input_specs(model):
    try:
        inputs = model.inputs
    except (AttributeError, ValueError) as error:
        raise TFLiteExportError(
            f"Model '{model.name}' has no defined inputs; build it with a "
            "`keras.Input` (or call it once) before export."
        ) from error
    if not inputs:
        raise TFLiteExportError(
            f"Model '{model.name}' has no defined inputs; build it with a "
            "`keras.Input` (or call it once) before export."
        )
    specs = []
    for index, tensor in enumerate(inputs):
        shape = [None] + [
            None if d is None else int(d) for d in tuple(tensor.shape)[1:]
        ]
        name = getattr(tensor, "name", None) or f"input_{index}"
        name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name.split(":")[0])
        specs.append(tf.TensorSpec(shape, tf.as_dtype(tensor.dtype), name=name))
    return specs


def _in_scope(layer, op_name):
    """Whether a graph op name lies in `layer`'s name scope (`.../name[_k]/...`)."""
    pattern = r"(^|/)" + re.escape(layer.name) + r"(_\d+)?/"
    return re.search(pattern, op_name) is not None


def _converts_alone(layer):
    """Whether `layer` alone converts with builtins only (None: cannot tell)."""
    try:
        shape = tuple(layer.input.shape)
        dtype = tf.as_dtype(layer.input.dtype)
    except Exception:  # not a single-input layer of a functional graph
        return None
    spec = tf.TensorSpec([None] + list(shape[1:]), dtype)
    try:
        function = tf.function(
            lambda x: layer(x, training=False), input_signature=[spec], autograph=False
        )
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [function.get_concrete_function()], layer
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.convert()
    except Exception:
        return False
    return True


def _failing_layers(graph, op_types, layers):
    """Names of the layers that hold ops of `op_types` and do not convert alone.

    The converter's message gives the unsupported op types but not reliably
    the layers; the ops of those types in the traced graph give candidate
    layers (by name scope), and converting each candidate alone confirms it.
    """
    leaves = [
        layer
        for layer in layers
        if not getattr(layer, "layers", None) and not _exportable(layer)
    ]
    op_names = [op.name for op in graph.get_operations() if op.type in op_types]
    candidates = [
        layer for layer in leaves if any(_in_scope(layer, name) for name in op_names)
    ]
    confirmed = [layer.name for layer in candidates if _converts_alone(layer) is False]
    return confirmed or [layer.name for layer in candidates]


def _flex_ops_in(message):
    return sorted(set(re.findall(r"\btf\.([A-Z][A-Za-z0-9]*)", message)))


def _configure_quantization(converter, quantization):
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _check_dct_constants(dct_constants):
    if dct_constants not in CONSTANTS:
        raise ValueError(
            f"Argument `dct_constants` must be one of {CONSTANTS}; "
            f"received dct_constants={dct_constants!r}."
        )
    return dct_constants


def convert_tflite(
    model,
    quantization=None,
    dct_constants="stored",
    form="implicit",
    max_kernel_bytes=DEFAULT_MAX_KERNEL_BYTES,
    narrow_positions=True,
    sparse_product="gather",
):
    """Converts a Keras model with DCT-plus-sparse layers to TFLite, builtin ops only.

    See `export_tflite`; this returns the serialized model instead of writing it.

    Returns:
        The `.tflite` flatbuffer as `bytes`.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"Argument `quantization` must be one of {QUANTIZATIONS}; "
            f"got {quantization!r}."
        )
    _check_dct_constants(dct_constants)
    _check_form(form, max_kernel_bytes)
    if sparse_product not in SPARSE_PRODUCTS:
        raise ValueError(
            f"Argument `sparse_product` must be one of {SPARSE_PRODUCTS}; "
            f"received sparse_product={sparse_product!r}."
        )
    if quantization is not None and sparse_product == "csr":
        raise ValueError(
            f"Argument `sparse_product='csr'` is float32 only; received "
            f"quantization={quantization!r}."
        )
    if quantization is not None and form == "built_at_load":
        raise ValueError(
            f"Argument `form='built_at_load'` is float32 only; received "
            f"quantization={quantization!r}. Use form='built_once' or 'auto' (which builds "
            "quantized models' kernels once, at the first call)."
        )
    layers = _all_layers(model)
    _check_layers(layers)
    specs = _input_specs(model)

    with _export_calls(
        layers, dct_constants, quantization, form, max_kernel_bytes, narrow_positions,
        sparse_product,
    ) as store:

        def forward(*inputs):
            store.sparse_weights.start_trace(inputs[0])
            store.build_all(run_time_zero(inputs[0]))
            return model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)

        function = tf.function(forward, input_signature=specs, autograph=False)
        try:
            concrete = function.get_concrete_function()
        except Exception as error:
            raise TFLiteExportError(
                f"Tracing model '{model.name}' for TFLite export failed: {error}"
            ) from error
    if store.kernels:
        # The built-once kernels stay resource variables; the converter
        # initializes them in a CALL_ONCE subgraph (tracked by `store`).
        frozen = _freeze_except(concrete, store.variables_to_keep)
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], store)
    else:
        # Freeze the variables explicitly: left to itself, the converter may keep
        # them as resource variables (VAR_HANDLE / READ_VARIABLE with no values
        # in the file), as it does for a model of plain Dense layers.
        frozen = convert_variables_to_constants_v2(concrete)
        # An empty trackable object, not `model`: given the model, the converter
        # walks its attributes and materializes dense views (a 16384 x 4096 layer
        # then needs 6 GB); given none, it takes its deprecated conversion path.
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # float16 with built-once kernels: converted in float32, then the constants
    # (not the scalars: the COS angle scales) stored as float16 by a rewrite.
    float16_rewrite = quantization == "float16" and bool(store.kernels)
    _configure_quantization(converter, None if float16_rewrite else quantization)
    try:
        tflite_bytes = converter.convert()
    except Exception as error:
        message = str(error)
        ops = _flex_ops_in(message)
        culprits = _failing_layers(concrete.graph, set(ops), layers)
        where = (
            f"layer(s) {', '.join(repr(n) for n in culprits)}"
            if culprits
            else "an unidentified layer"
        )
        raise TFLiteExportError(
            f"Model '{model.name}' cannot be converted to TFLite with builtin ops "
            f"only: {where} uses TensorFlow ops without a TFLite builtin"
            + (f" ({', '.join(ops)})" if ops else "")
            + f". Converter message (first 2000 characters):\n{message[:2000]}"
        ) from error
    custom = [n for n in tflite_op_names(tflite_bytes) if n.startswith("CUSTOM")]
    if custom:
        raise TFLiteExportError(
            f"Model '{model.name}' converted with non-builtin ops "
            f"{sorted(set(custom))}, which the TFLite runtime cannot run."
        )
    if store.kernels:
        tflite_bytes, cleared = clear_variable_initial_values(
            tflite_bytes, store.kernel_names
        )
        if cleared != sorted(store.kernel_names):
            raise TFLiteExportError(
                f"Model '{model.name}': the converter stored the initial values of "
                f"the built-once kernels {sorted(set(store.kernel_names) - set(cleared))} "
                "in a form that cannot be removed; export with form='implicit'."
            )
    if float16_rewrite:
        tflite_bytes, _ = float16_constants(tflite_bytes)
    if store.sparse_weights.replacements:
        try:
            tflite_bytes = csr_sparsify_constants(
                tflite_bytes, store.sparse_weights.replacements
            )
        except ValueError as error:
            raise TFLiteExportError(
                f"Model '{model.name}': the sparse FULLY_CONNECTED weights of the "
                f"built-at-load layers could not be encoded ({error}); export with "
                "form='built_once'."
            ) from error
    # Names of internal tensors: a few KB, ~40 bytes per operator.
    return strip_tensor_names(tflite_bytes)


def export_tflite(
    model,
    path,
    quantization=None,
    dct_constants="stored",
    form="implicit",
    max_kernel_bytes=DEFAULT_MAX_KERNEL_BYTES,
    narrow_positions=True,
    sparse_product="gather",
):
    """Writes a Keras model with DCT-plus-sparse layers as a builtin-only `.tflite`.

    Every `DCTSparseDense` is exported as its fast DCT (`RFFT2D` and
    elementwise ops, O(max(n, units)) constants, never the `n x units` matrix
    `D`) plus its sparse part as `nnz` values and `nnz` packed int32
    positions (`GATHER`, `MUL`, `UNSORTED_SEGMENT_SUM`), from the weights'
    current values. Every
    DCTpS convolution is one `CONV_2D`/`DEPTHWISE_CONV_2D` with its kernel
    `alpha * Kd + S` rebuilt at run time from a `COS` table and a
    `SCATTER_ND` of the `nnz` values (module docstring). Both
    `sparse_format="values"` and `"masked"` layers export sparse. Other layers
    are traced as they are, in inference mode (`training=False`), and must
    convert to TFLite builtins. The batch dimension of every input is dynamic
    (use `Interpreter.resize_tensor_input`).

    The file size is about

        size ~= sum over DCTpS layers of nnz * (b + p) + overhead

    with `b = 4` bytes per value (2 with `quantization="float16"`, 1 with
    `"dynamic_int8"`), `p = 2` bytes for the 16-bit gap between sorted
    positions (`narrow_positions`; layers with more than 256 entries and
    no gap of 65536 or more), else 4 bytes for the packed int32 position
    `row * m + col` of each entry (8 for a layer with `n * m >= 2**31`),
    and `overhead` the size of the same
    model with one entry per layer (biases, DCT constants, other layers,
    flatbuffer metadata).

    The file is written atomically: the model is converted first, then written
    to a temporary file in the same directory and moved over `path`, so a
    failed export leaves an existing file untouched.

    Args:
        model: A built Keras model (Sequential or Functional, nested models
            allowed) with defined inputs.
        path: Destination file path.
        quantization: `None` (float32), `"float16"` (float constants stored in
            float16, `DEQUANTIZE`d at load) or `"dynamic_int8"`: the sparse
            values of every DCTpS layer are stored as int8 with one float32
            scale per layer (`quantize_int8`, dequantized by the interpreter;
            layers with at most 341 nonzeros keep float32, where the int8
            operators would cost more than they save),
            and the converter's dynamic-range quantization handles the other
            layers (int8 weights for ops with hybrid kernels, such as the
            `FULLY_CONNECTED` of `keras.layers.Dense`). Biases, `alpha` and
            the DCT tables stay float32. `benchmarks/tflite_accuracy.py`
            measures the test-accuracy change of each option.
        dct_constants: `"stored"` (default): the O(N) tables of each
            `DCTSparseDense`'s fast DCT (chirps, chirp-filter spectrum,
            twiddles; a few times `max(n, units)` float32 numbers) are in the
            file. `"computed"`: the interpreter rebuilds them on every
            invocation (`COS`, `SIN`, extra `RFFT2D`s), so the file holds
            only the nonzeros, positions, biases and graph; slower (see
            `benchmarks/tflite.py`). `"at_load"`: as `"stored"`, but the
            matrices of the mixed-radix DFT (lengths `N = N1 * N2` with
            `N % 4 == 0`, such as 784) are built by the interpreter once,
            when it allocates tensors, from a stored half period of
            `N / 2 + 1` cosines (`builtin_ops.mixed_radix_tables_at_load`):
            a smaller file at the same speed (`form="auto"` uses it for the
            layers it exports implicitly with the CSR product). Convolutions
            always compute theirs.
        form: How each DCTpS layer's `alpha * D + S` is run.
            `"implicit"` (default): as described above, `D` as a fast
            transform on every call (Dense) or the conv kernel rebuilt on
            every call; the interpreter never holds more than O(nnz + N)
            numbers per Dense layer. `"built_once"`: the interpreter builds
            each layer's dense float32 kernel once, at the first
            invocation, into a resource variable (`CALL_ONCE`, `IF`,
            `ASSIGN_VARIABLE`; `BuiltOnceKernels`), and every call runs a
            plain `FULLY_CONNECTED` / `CONV_2D` / `DEPTHWISE_CONV_2D` on it
            (plus a `READ_VARIABLE` copy of it). The file stays nnz-sized
            (the kernels are computed from index ranges and the nonzeros),
            but at run time each layer holds its dense kernel twice (the
            variable and the copy read for the call): `2 * 4 * n * m`
            bytes. The kernels are float32; `quantization="dynamic_int8"`
            stores the nonzeros as int8 as in the implicit form;
            `"float16"` stores every float constant but scalars as float16
            (the file is converted in float32 and rewritten,
            `flatbuffer.float16_constants`: the converter's own float16
            option would also store the angle scales of the `COS` tables in
            float16, a 3e-3 error).
            `"built_at_load"` (float32 only): each `DCTSparseDense` /
            `DCTSparseEinsumDense` is `x @ (alpha * D)` with a dense weight
            the interpreter builds once when it allocates its tensors (from
            a `2N + 2`-float cos table and index arithmetic: no per-call
            copy, XNNPACK treats it as static) plus `x @ S` by a
            `FULLY_CONNECTED` with a CSR-encoded sparse weight (`nnz`
            float32 values, 1- or 2-byte column indices); the interpreter
            holds the kernel and the int32 index tensors it was built from,
            about `5 * 4 * n * m` bytes per layer. Convolutions are
            `"built_once"` in this form. Runtimes that do not evaluate
            operators at preparation (older TFLite) get the same results,
            rebuilding the kernel on every call. `"auto"`: for the layers
            whose dense kernel takes at most `max_kernel_bytes`
            (`4 * n * m`, `dense_kernel_bytes`), float32 matrix layers of
            at least `AUTO_IMPLICIT_MIN_ELEMENTS` (65536) entries implicit
            with `sparse_product="csr"` (the fastest: 784 x 300 at 1% in
            6.1 us against 12.0 us built at load and 13.7 us dense),
            smaller float32 matrix layers `"built_at_load"` (faster there,
            and a smaller file), `"built_once"` otherwise (quantized files,
            convolutions); implicit with `sparse_product` above the bound.
        max_kernel_bytes: The per-layer memory bound of `form="auto"`, in
            bytes of the float32 dense kernel (default 8 MiB: a 2048 x 1024
            layer). Set it from the device's memory: at run time the
            built-at-load matrix layers need about 5 times the sum of their
            kernels, the built-once layers (convolutions, quantized files)
            about twice.
        narrow_positions: `True` (default): a layer's positions are stored as
            2-byte gaps between sorted flat positions (`delta_encode`) when
            every gap is below 65536 (any layer denser than about 1 in
            65536) and that saves more than `POSITION_GAPS_MIN_SAVING_BYTES`;
            the interpreter sums them back (`CUMSUM`; for the implicit form
            on every call, O(nnz)). Not with `quantization="float16"`
            (ai-edge-litert's default delegate then computes wrong results
            from the second call on at batch >= 64). `False`: one int32 per
            entry.
        sparse_product: How the implicit form multiplies by `S` (Dense /
            EinsumDense layers). `"gather"` (default): `GATHER`, `MUL`,
            `UNSORTED_SEGMENT_SUM` on the stored positions; never anything
            of size `n * m`, at export or at run time. `"csr"`: one
            `FULLY_CONNECTED` whose weight is `S^T` in TFLite's CSR sparse
            encoding (`nnz` float32 values, 1- or 2-byte column indices;
            TFLite's sparse kernel): several times faster per call (LeNet-300-100
            at 1%: about half the dense model's latency, `benchmarks/tflite.py`),
            but the conversion traces a dense `n x m` placeholder (`4 * n * m`
            bytes of memory at export time only). float32 only.

    Returns:
        The written model as `bytes`.

    Raises:
        ValueError: for an unknown `quantization`, `dct_constants`, `form`
            or `sparse_product`, a negative `max_kernel_bytes`, or
            `form="built_at_load"` or `sparse_product="csr"` with a
            quantization.
        TFLiteExportError (a `ValueError`): if the model is not built, or a
            layer needs non-builtin (Flex) ops; the message names the
            layer(s) and the ops where the converter reports them.
        NotImplementedError: for a `DCTSparseLayer` subclass whose
            `export_kind` is not `"matrix"` or `"conv"`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((784,)),
    ...     DCTSparseDense(300, density=0.01, activation="relu"),
    ...     DCTSparseDense(10, density=0.01, activation="softmax"),
    ... ])
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "lenet.tflite")
    >>> data = export_tflite(model, path)
    >>> data[4:8], os.path.getsize(path) == len(data)  # a TFLite flatbuffer, written to path
    (b'TFL3', True)
    """
    tflite_bytes = convert_tflite(
        model,
        quantization=quantization,
        dct_constants=dct_constants,
        form=form,
        max_kernel_bytes=max_kernel_bytes,
        narrow_positions=narrow_positions,
        sparse_product=sparse_product,
    )
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(handle, "wb") as file:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private (0600)
            file.write(tflite_bytes)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    return tflite_bytes
