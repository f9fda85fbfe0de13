"""Sparse-times-dense kernels for `x @ S^T`, forward and backward, and how one is chosen.

`S` is given in Keras kernel orientation `(n, m)` by `values[k]` at
`(rows[k], cols[k])`, with the positions sorted column-major (by column, then
row). Every kernel computes `y[b, c] = sum_{k: cols[k] = c} x[b, rows[k]] * values[k]`
and has a hand-written gradient that reaches `x`, `values` (and `alpha`).

Kernels (measured in `benchmarks/dense_layer.py`):

- `"csr"`: TensorFlow's CSR sparse-matrix kernels (`SparseMatrixMatMul`). The
  column-major positions are exactly the CSR order of `S^T`, so one CSR matrix
  serves the forward (`S^T x`) and, transposed as a CSR matrix, the input
  gradient (`S dy`). Fastest for large batches at low density. No XLA kernel.
- `"gather"`: gather + multiply + segment sum, compiled with XLA as an inner
  `tf.function(jit_compile=True)` (Keras leaves model-level XLA off on CPU).
  Fastest for tiny batches at low density; XLA-compatible everywhere.
- `"materialized"`: the values are scattered into a dense `(m, n)` tensor
  `S^T` (column-major positions are its row-major order; at density 1 it is a
  reshape), plus `alpha` times the DCT block when that block is small enough
  to be constant-folded and cheaper than the fast DCT of the batch
  (`kernel_choice.use_folded_block`; it is generated in-graph from cosines,
  never stored or saved), then dense matmuls (the forward in the form
  `kernel_choice.product_form` picks by kernel size, batch and whether the CPU has
  AVX-512, with one `tf.cond` on the batch when it is unknown at trace time there). The value
  gradient is a gather of `dy^T x` at the positions (or the sampled product at
  low density). Fastest for small layers and high densities. It allocates
  `n * m` elements per step, so it is refused above
  `kernel_choice.MAX_MATERIALIZED_ELEMENTS` (2**24). XLA-compatible.
- `"auto"`: the cheapest by `kernel_choice.choose_kernel` for the shape,
  nnz, batch (`ASSUMED_BATCH` when unknown) and dtype, chosen when the call is
  traced (no `tf.cond`); `"csr"` is never chosen inside an XLA compilation.

Each kernel registers itself in `keras_dctsparse.ops.kernel_registry` for the
TensorFlow backend (name, implementation, XLA safety); `sparse_matmul` and
`offset_sparse_matmul` run the registry's kernel.

The sampled value gradient `dvalues[k] = sum_b x[b, rows[k]] * dy[b, cols[k]]`
runs under XLA; the CSR kernel computes it from the transposes `x^T`, `dy^T` it
already has (contiguous gathered rows).
"""

import tensorflow as tf

# No public TensorFlow API tells whether the current graph is being compiled by XLA
# (an inner `tf.function(jit_compile=True)`); "auto" must not pick CSR there.
from tensorflow.python.ops import control_flow_util

from keras_dctsparse.native import library as native_library
from keras_dctsparse.native import policy as native_policy
from keras_dctsparse.ops import cpu_features
from keras_dctsparse.ops import kernel_choice
from keras_dctsparse.ops import kernel_registry
from keras_dctsparse.ops import native_matmul
from keras_dctsparse.ops.conv_offset import dct_block
from keras_dctsparse.ops.sparse_conv import scatter_dense
from keras_dctsparse.ops.transforms import dct_offset
from keras_dctsparse.ops.transforms import dct_offset_transpose

__all__ = [
    "SPARSE_KERNELS",
    "XLA_KERNELS",
    "resolve_kernel",
    "offset_sparse_matmul",
    "sparse_matmul",
]

SPARSE_KERNELS = ("auto",) + kernel_choice.KERNELS


@tf.function(jit_compile=True, reduce_retracing=True)
def _sampled_dot(x, dy, rows, cols):
    """`out[k] = sum_b x[b, rows[k]] * dy[b, cols[k]]`."""
    return tf.reduce_sum(
        tf.gather(x, rows, axis=1) * tf.gather(dy, cols, axis=1), axis=0
    )


@tf.function(jit_compile=True, reduce_retracing=True)
def _sampled_dot_transposed(x_t, dy_t, rows, cols):
    """`out[k] = sum_b x_t[rows[k], b] * dy_t[cols[k], b]`: `_sampled_dot` of the transposes.

    Each gathered row is contiguous and the reduction runs along it (about 2x
    faster than `_sampled_dot` at 4096 x 4096, batch 256, 1%). The transposes
    must be made outside this cluster: XLA fuses a transpose into the gather,
    which then reads strided columns again (several times slower).
    """
    return tf.reduce_sum(tf.gather(x_t, rows) * tf.gather(dy_t, cols), axis=1)


@tf.function(jit_compile=True)
def _gather_segment_sum(x, values, gather_index, segment_index, num_segments):
    """`out[b, s] = sum_{k: segment_index[k] = s} x[b, gather_index[k]] * values[k]`."""
    contributions = tf.gather(x, gather_index, axis=1) * values
    summed = tf.math.unsorted_segment_sum(
        tf.transpose(contributions), segment_index, num_segments
    )
    return tf.transpose(summed)


def _gather_matmul(x, values, rows, cols, units):
    input_dim = x.shape[1]

    @tf.custom_gradient
    def matmul(x, values):
        y = _gather_segment_sum(x, values, rows, cols, units)

        def grad(dy):
            dx = _gather_segment_sum(dy, values, cols, rows, input_dim)
            return dx, _sampled_dot(x, dy, rows, cols)

        return y, grad

    return matmul(x, values)


def _csr_transposed(values, rows, cols, units, input_dim):
    """The CSR matrix of `S^T` (shape `(units, input_dim)`), a variant tensor."""
    # Column-major (col, row) pairs are the canonical order of S^T.
    indices = tf.cast(tf.stack([cols, rows], axis=1), tf.int64)
    return tf.raw_ops.SparseTensorToCSRSparseMatrix(
        indices=indices,
        values=values,
        dense_shape=tf.constant([units, input_dim], tf.int64),
    )


def _csr_matmul(x, values, rows, cols, units):
    input_dim = x.shape[1]

    @tf.custom_gradient
    def matmul(x, values):
        transposed = _csr_transposed(values, rows, cols, units, input_dim)
        x_t = tf.transpose(x)
        y = tf.raw_ops.SparseMatrixMatMul(a=transposed, b=x_t)

        def grad(dy):
            # Rebuilt rather than captured: SavedModel export serializes the
            # gradient function and cannot save a captured CSR (variant) tensor.
            transposed = _csr_transposed(values, rows, cols, units, input_dim)
            dy_t = tf.transpose(dy)
            # The CSR of S by an explicit CSR transpose (a counting sort), then a
            # plain product: faster than the product's own transpose_a (measured
            # 2.8 -> 1.2 ms at 4096 x 4096, 0.1%, batch 256; 5.5 -> 4.2 ms at 1%).
            dx = tf.raw_ops.SparseMatrixMatMul(
                a=tf.raw_ops.SparseMatrixTranspose(input=transposed, type=values.dtype),
                b=dy_t,
            )
            # The transposes the CSR products need also serve the value gradient.
            return tf.transpose(dx), _sampled_dot_transposed(x_t, dy_t, rows, cols)

        return tf.transpose(y), grad

    return matmul(x, values)


@tf.function(jit_compile=True)
def _offset_gather_forward(x, alpha, values, rows, cols, units):
    """`(D x, alpha * D x + x @ S)` in one XLA cluster (per-op dispatch costs more than
    the arithmetic of a small-batch layer)."""
    offset = dct_offset(x, units)
    return offset, alpha * offset + _gather_segment_sum(x, values, rows, cols, units)


@tf.function(jit_compile=True)
def _offset_gather_input_gradient(dy, alpha, values, rows, cols, input_dim):
    """`alpha * D^T dy + dy @ S^T`."""
    return alpha * dct_offset_transpose(dy, input_dim) + _gather_segment_sum(
        dy, values, cols, rows, input_dim
    )


@tf.function(jit_compile=True)
def _offset_gather_weight_gradients(x, dy, offset, rows, cols):
    """`(d alpha, d values)`: `sum(dy * D x)` and `dy^T x` at the positions."""
    return tf.reduce_sum(dy * offset), _sampled_dot(x, dy, rows, cols)


def _offset_gather(x, alpha, values, rows, cols, units):
    """`alpha * D x + x @ S` by the gather kernel, with a gradient in two XLA calls.

    The input gradient and the weight gradients are separate calls, so that
    TensorFlow prunes the first where nothing reads it (a network's first
    layer): autodiff of one fused call computed every gradient, and re-ran the
    forward. Measured (2-core CPU, train step of the layer alone, interleaved):
    784 x 300, batch 128, 887 nonzeros: 0.51 ms instead of 0.77 ms without
    `dx`, 0.68 ms instead of 0.78 ms with it; 4096 x 4096, batch 32, 0.1%:
    1.62 / 2.18 ms instead of 2.71 / 2.76 ms.
    """
    input_dim = x.shape[1]

    @tf.custom_gradient
    def product(x, alpha, values):
        offset, y = _offset_gather_forward(x, alpha, values, rows, cols, units)

        def grad(dy):
            dx = _offset_gather_input_gradient(dy, alpha, values, rows, cols, input_dim)
            dalpha, dvalues = _offset_gather_weight_gradients(x, dy, offset, rows, cols)
            return dx, tf.reshape(dalpha, tf.shape(alpha)), dvalues

        return y, grad

    return product(x, alpha, values)


def _offset_csr(x, alpha, values, rows, cols, units):
    return alpha * dct_offset(x, units) + _csr_matmul(x, values, rows, cols, units)


def _transposed_dense(values, rows, cols, units, input_dim, positions=None):
    """`S^T` as a dense `(units, input_dim)` tensor and how to read it back at the positions.

    Column-major positions are the row-major order of `S^T`: at full density `S^T` is a
    reshape of the values. Where native ops may run (`positions` given), the native
    `DctSparseDensify` writes `S^T` in one pass (each row zeroed, then its values placed);
    else `SparseToDense` at flat indices.

    Returns:
        `(transposed, read)`: `read(d_transposed)` is the `(nnz,)` vector of a `(units, n)`
        tensor at the positions.
    """
    if values.shape[0] == units * input_dim:
        return tf.reshape(values, (units, input_dim)), lambda d: tf.reshape(d, [-1])
    if positions is not None:
        ops = native_library.load()
        transposed = ops.dct_sparse_densify(values, positions, input_dim=input_dim, units=units)
        return transposed, lambda d: ops.dct_sparse_gather_transposed(d, positions)
    flat = cols * input_dim + rows
    return scatter_dense(flat, values, (units, input_dim)), (
        lambda d: tf.gather(tf.reshape(d, [-1]), flat)
    )


def _kernel_product(x, transposed, form):
    """`x @ transposed^T` in the form `kernel_choice.product_form` picked."""

    def by_transposes():
        # oneDNN's x @ K^T (MatMul's transpose_b on the large operand) is several
        # times slower at small batches than transposing the small activations.
        return tf.transpose(tf.matmul(transposed, x, transpose_b=True))

    def batched():
        return tf.raw_ops.BatchMatMulV2(x=x, y=transposed, adj_y=True)

    if form == "transpose_b":
        return tf.matmul(x, transposed, transpose_b=True)
    if form == "transposed":
        return by_transposes()
    if form == "batched":
        return batched()
    return tf.cond(
        tf.shape(x)[0] >= kernel_choice.BATCHED_PRODUCT_MIN_BATCH, batched, by_transposes
    )


def _materialized_matmul(x, values, rows, cols, units, alpha=None, positions=None):
    """`x @ (S + alpha * D^T)` with `S` (and a folded DCT block) made dense; see module docstring.

    With `alpha` given, the DCT block is part of the dense kernel when
    `kernel_choice.use_folded_block`, else `alpha * D x` is added by the fast
    transform. With `positions` (the `(2, nnz)` tensor), `S^T` is written by the native
    `DctSparseDensify` where native ops may run.
    """
    input_dim = x.shape[1]
    native = positions is not None and native_allowed(x.dtype)
    if native:
        values = tf.convert_to_tensor(values, x.dtype)
        positions = tf.convert_to_tensor(positions, tf.int32)
    else:
        values, rows, cols = _stock_arguments(x, values, rows, cols, positions)
        positions = None
    _check_materialized(input_dim, units)
    nnz = values.shape[0]
    sampled = kernel_choice.use_sampled_value_gradient(input_dim, units, nnz)
    with_block = alpha is not None and kernel_choice.use_folded_block(
        input_dim, units, x.shape[0], x.dtype.name, native=native_allowed(x.dtype)
    )
    form = kernel_choice.product_form(input_dim, units, x.shape[0],
                                      avx512=cpu_features.has_avx512())

    @tf.custom_gradient
    def product(x, values, *scale):
        transposed, read = _transposed_dense(values, rows, cols, units, input_dim, positions)
        if with_block:
            block = dct_block(units, input_dim, x.dtype)
            transposed = transposed + scale[0] * block
        y = _kernel_product(x, transposed, form)

        def grad(dy):
            dx = tf.matmul(dy, transposed)
            if sampled:
                dvalues = (native_library.load().dct_sparse_matmul_value_grad(x, dy, positions)
                           if native else _sampled_dot(x, dy, rows, cols))
            else:
                d_transposed = tf.matmul(dy, x, transpose_a=True)
                dvalues = read(d_transposed)
            if not with_block:
                return dx, dvalues
            if sampled:
                dalpha = tf.reduce_sum(dy * tf.matmul(x, block, transpose_b=True))
            else:
                dalpha = tf.reduce_sum(d_transposed * block)
            return dx, dvalues, dalpha

        return y, grad

    if with_block:
        return product(x, values, alpha)
    y = product(x, values)
    if alpha is not None:
        y = y + alpha * _fast_offset(x, units)
    return y


def _fast_offset(x, units):
    """`D x` by the native DCT where native ops may run, else by `tf.signal` (Makhoul).

    The native transform vectorizes over rows (16 per tile) and skips the XLA launches:
    `D x` alone took 0.52-0.95x the time of `transforms.dct_offset` for 256-4096 points at
    batches 1-256 (4096 points at batch 256: 2.8 against 5.4 ms; `python
    benchmarks/native_parts.py`, 2 cores).
    """
    if native_allowed(x.dtype):
        return native_matmul.native_dct_offset(x, units)
    return dct_offset(x, units)


def _check_materialized(input_dim, units):
    kernel_registry.get_kernel("materialized", "tensorflow").check_shape(
        input_dim, units, argument="sparse_kernel"
    )


def _offset_materialized(x, alpha, values, rows, cols, units, positions=None):
    return _materialized_matmul(x, values, rows, cols, units, alpha=alpha, positions=positions)


def _prepare(x, values, rows, cols):
    """The kernels' argument types: values in the dtype of `x`, int32 positions."""
    return (
        tf.convert_to_tensor(values, x.dtype),
        tf.convert_to_tensor(rows, tf.int32),
        tf.convert_to_tensor(cols, tf.int32),
    )


def _choose(x, input_dim, units, nnz):
    """The kernel `"auto"` runs for `x` (`resolve_kernel`), for a forward-only call where
    no gradient tape is active (Keras's predict and evaluate steps)."""
    return resolve_kernel("auto", input_dim, units, nnz, x.shape[0], x.dtype.name,
                          forward_only=not native_matmul.any_tape_active())


def _dense_matmul(x, matrix, units, alpha):
    outputs = tf.matmul(x, matrix)
    if alpha is not None:
        outputs += alpha * _fast_offset(x, units)
    return outputs


kernel_registry.register_kernel(kernel_registry.SparseKernel(
    "csr", ("tensorflow",), xla_safe=False, matmul=_csr_matmul, offset_matmul=_offset_csr,
    description="TensorFlow CSR sparse-matrix products plus tf.signal's DCT",
))
kernel_registry.register_kernel(kernel_registry.SparseKernel(
    "gather", ("tensorflow",), xla_safe=True, matmul=_gather_matmul,
    offset_matmul=_offset_gather,
    description="gather + segment sum, fused with the DCT in one XLA cluster (forward, "
    "input gradient, weight gradients)",
))
def native_allowed(dtype=tf.float32):
    """Whether a kernel created now may be native (`keras_dctsparse.native.policy`).

    True when the policy allows native ops in the current graph (or eagerly), the
    dtype is float32 or float64 and the library is built (it is built here on
    first use; if it cannot be, a warning says why and the answer is False).
    """
    return (
        tf.as_dtype(dtype) in (tf.float32, tf.float64)
        and native_policy.allowed_here()
        and native_library.available()
    )


def _stock_kernel(x, units, nnz):
    """The stock TensorFlow kernel `"auto"` would run for `x` without the native one."""
    name = resolve_kernel("auto", x.shape[1], units, nnz, x.shape[0], x.dtype.name, native=False)
    return kernel_registry.get_kernel(name, "tensorflow")


def _native_arguments(x, values, rows, cols, positions):
    """`(values, positions)` for the native ops: values in the dtype of `x`, `(2, nnz)` int32."""
    if positions is None:
        positions = tf.stack([tf.cast(rows, tf.int32), tf.cast(cols, tf.int32)])
    return tf.convert_to_tensor(values, x.dtype), tf.convert_to_tensor(positions, tf.int32)


def _stock_arguments(x, values, rows, cols, positions):
    if rows is None or cols is None:
        rows, cols = tf.unstack(tf.convert_to_tensor(positions), num=2)
    return _prepare(x, values, rows, cols)


def _native_or_stock_matmul(x, values, rows, cols, units, positions=None):
    if native_allowed(x.dtype):
        return native_matmul.native_matmul(
            x, *_native_arguments(x, values, rows, cols, positions), units
        )
    values, rows, cols = _stock_arguments(x, values, rows, cols, positions)
    return _stock_kernel(x, units, values.shape[0]).matmul(x, values, rows, cols, units)


def _native_or_stock_offset(x, alpha, values, rows, cols, units, positions=None):
    if native_allowed(x.dtype):
        return native_matmul.native_offset_matmul(
            x, alpha, *_native_arguments(x, values, rows, cols, positions), units
        )
    values, rows, cols = _stock_arguments(x, values, rows, cols, positions)
    kernel = _stock_kernel(x, units, values.shape[0])
    return kernel.offset_matmul(x, alpha, values, rows, cols, units)


kernel_registry.register_kernel(kernel_registry.SparseKernel(
    "materialized", ("tensorflow",), xla_safe=True, matmul=_materialized_matmul,
    offset_matmul=_offset_materialized, shape_allowed=kernel_choice.materialized_allowed,
    takes_positions=True,
    shape_limit="n * m <= kernel_choice.MAX_MATERIALIZED_ELEMENTS",
    description="S (and a folded DCT block) scattered into a dense kernel, dense matmuls",
))
# XLA-safe: inside an XLA compilation native ops may not run, and the stock kernel that
# "auto" would choose there (never CSR) runs instead.
kernel_registry.register_kernel(kernel_registry.SparseKernel(
    "native", ("tensorflow",), xla_safe=True, matmul=_native_or_stock_matmul,
    offset_matmul=_native_or_stock_offset, takes_positions=True,
    description="the compiled CPU ops of keras_dctsparse.native (fast DCT and sparse "
    "products over tiles of batch rows); where native ops may not run (a graph traced for "
    "export, XLA), the stock kernel 'auto' would pick",
))
# "auto" never picks CSR inside an XLA compilation (`resolve_kernel`).
kernel_registry.register_backend(
    ("tensorflow",), _prepare, _choose, _dense_matmul, auto_xla_safe=True
)

#: Kernels with an XLA implementation (a layer using only these can be compiled whole).
XLA_KERNELS = ("auto",) + tuple(
    name for name in kernel_registry.kernel_names("tensorflow")
    if kernel_registry.is_xla_safe(name, "tensorflow")
)


def resolve_kernel(kernel, input_dim, units, nnz, batch=None, dtype="float32", native=None,
                   forward_only=False):
    """The concrete kernel a call runs: `kernel` itself, or the choice for `"auto"`.

    Args:
        kernel: One of `SPARSE_KERNELS`.
        input_dim: Number of inputs `n`.
        units: Number of outputs `m`.
        nnz: Number of nonzeros.
        batch: Static number of rows of the input, or None.
        dtype: Float dtype of the computation.
        native: Whether `"auto"` may choose the native kernel; None: whether it may
            run here (`native_allowed`).
        forward_only: Whether the call records no gradient
            (`kernel_choice.choose_kernel`).

    Returns:
        One of `kernel_choice.KERNELS`. Inside an XLA compilation, `"auto"`
        never returns `"csr"` or `"native"`.

    Raises:
        ValueError: for an unknown `kernel`.

    Example:

    >>> resolve_kernel("auto", 256, 256, 65536, batch=32)
    'materialized'
    """
    if kernel != "auto":
        return kernel_registry.get_kernel(kernel, "tensorflow").name
    xla = control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
    if native is None:
        native = native_allowed(dtype)
    return kernel_choice.choose_kernel(
        input_dim, units, nnz, batch=batch, dtype=dtype, xla=xla, native=native and not xla,
        forward_only=forward_only,
    )


def offset_sparse_matmul(x, alpha, values, rows, cols, units, kernel="auto"):
    """Computes `alpha * D x + x @ S`: the DCT offset plus the sparse part.

    Same arguments as `sparse_matmul`, plus `alpha`, a scalar tensor of the
    dtype of `x`. With the gather kernel the transform and the sparse product
    run as one XLA cluster; with the CSR kernel the transform is
    `tf.signal.dct` next to the CSR product; the materialized kernel adds the
    DCT block to the dense kernel when the block can be constant-folded.

    Returns:
        Tensor of shape `(batch, units)`.

    Example:

    >>> y = offset_sparse_matmul(tf.ones((1, 4)), tf.constant(1.0),
    ...                          tf.constant([0.0]), [0], [0], 4)
    >>> [round(v, 4) + 0.0 for v in y.numpy()[0].tolist()]
    [2.0, 0.0, 0.0, 0.0]
    """
    return kernel_registry.matmul(
        x, values, rows, cols, units, kernel=kernel, alpha=alpha, backend="tensorflow"
    )


def sparse_matmul(x, values, rows, cols, units, kernel="auto"):
    """Computes `x @ S` for a sparse `(n, units)` kernel `S` given by its nonzeros.

    Args:
        x: float32 or float64 tensor of shape `(batch, n)`, static `n`.
        values: Tensor of shape `(nnz,)`, same dtype as `x`.
        rows: int32 tensor `(nnz,)`, input index of each nonzero.
        cols: int32 tensor `(nnz,)`, output index of each nonzero. The pairs
            must be sorted by `cols`, then `rows`, without duplicates.
        units: Number of outputs `m` (Python int).
        kernel: One of `SPARSE_KERNELS`.

    Returns:
        Tensor of shape `(batch, units)`.

    Raises:
        ValueError: for an unknown `kernel`, or `"materialized"` above
            `kernel_choice.MAX_MATERIALIZED_ELEMENTS`.

    Example:

    >>> x = tf.ones((2, 3))
    >>> y = sparse_matmul(x, tf.constant([2.0]), tf.constant([1]), tf.constant([0]), 2)
    >>> y.numpy().tolist()
    [[2.0, 0.0], [2.0, 0.0]]
    """
    return kernel_registry.matmul(
        x, values, rows, cols, units, kernel=kernel, backend="tensorflow"
    )
