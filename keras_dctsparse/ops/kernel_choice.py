"""Which kernel computes `alpha * D x + x @ S` for a dense layer: a pure cost rule.

Four kernels exist (see `keras_dctsparse.ops.sparse_matmul`):

- `"native"`: the compiled CPU ops of `keras_dctsparse.native` (the fast DCT
  and the sparse products over tiles of 16 batch rows, hand-vectorized). Work
  proportional to `ceil(batch / 16) * nnz` plus the DCT. Only where native ops
  may run (`keras_dctsparse.native.policy`); when they may, it replaces the
  CSR and gather kernels (the same products, faster) and competes with the
  materialized kernel, which wins at high density.

- `"csr"`: TensorFlow's CSR sparse-matrix product plus the fast DCT. Work
  proportional to `batch * nnz`, but a fixed price per step (the CSR matrix is
  rebuilt from the positions in every step) and no XLA kernel.
- `"gather"`: gather + multiply + segment sum under XLA, fused with the DCT.
  Cheapest when `batch * nnz` is small (batch 1, tiny layers); its gathers
  cost several times a dense multiply-add per element.
- `"materialized"`: scatter the values into a dense `(m, n)` tensor (a reshape
  at density 1), add `alpha` times the DCT block when that block is small
  enough for the graph optimizer to fold into a constant and adding it costs
  less than the fast DCT of the batch (`use_folded_block`), then dense
  matmuls. Work proportional to `batch * n * m` at dense-matmul speed, plus
  `n * m` per step to build the kernel. Only allowed while
  `n * m <= MAX_MATERIALIZED_ELEMENTS` (2**24: 64 MiB per float32 copy).

`choose_kernel` estimates the time of one training step (forward, input
gradient and value gradient) of each kernel with the linear model in
`estimated_step_costs` and takes the cheapest. Its constants were fitted to
`benchmarks/dense_layer.py` on a 2-core x86 CPU (TF 2.21, oneDNN); the rule is
a heuristic, and every kernel is exact, so a poor choice only costs time. Users
can force a kernel with `sparse_kernel=`.

The choice is made once, when a layer's call is traced (no per-step Python
cost). When the batch size is unknown at trace time (`model.fit` on a
`tf.data` pipeline), `ASSUMED_BATCH` is used: one static choice, no `tf.cond`.
"""

import math

__all__ = [
    "KERNELS",
    "MAX_MATERIALIZED_ELEMENTS",
    "FOLDED_BLOCK_MAX_BYTES",
    "ASSUMED_BATCH",
    "SAMPLED_GRADIENT_MAX_DENSITY",
    "SAMPLED_GRADIENT_MIN_ELEMENTS",
    "TRANSPOSED_PRODUCT_MIN_ELEMENTS",
    "BATCHED_PRODUCT_MIN_BATCH",
    "PRODUCT_FORMS",
    "block_is_folded",
    "use_folded_block",
    "materialized_allowed",
    "use_sampled_value_gradient",
    "product_form",
    "NATIVE_TILE_ROWS",
    "NATIVE_FORWARD_MAX_DENSITY",
    "estimated_step_costs",
    "native_fft_cost",
    "native_work",
    "choose_kernel",
]

KERNELS = ("csr", "gather", "materialized", "native")

# Largest n * m the materialized kernel may build: 2**24 elements (64 MiB in
# float32), a few such tensors live during a training step.
MAX_MATERIALIZED_ELEMENTS = 1 << 24

# Grappler folds constants of at most this many bytes: a DCT block this small
# generated in-graph costs nothing after the first run of a tf.function (it is
# never part of a saved graph, which keeps the generating ops).
FOLDED_BLOCK_MAX_BYTES = 10 * 1024 * 1024

# Batch size assumed when it is unknown at trace time (Keras's default).
ASSUMED_BATCH = 32

# Value gradient of the materialized kernel: the sampled product
# `sum_b x[b, rows[k]] * dy[b, cols[k]]` (2 gathers per nonzero and example)
# instead of the dense `dy^T x` (one multiply-add per entry and example) when
# the density is below this.
SAMPLED_GRADIENT_MAX_DENSITY = 1.0 / 32
# ... and only for kernels of more than this many entries: below it the dense `dy^T x`
# costs less than launching the sampled product's XLA cluster (measured, train step at
# batch 128: 300 x 100 with 887 nonzeros 0.23 ms dense against 0.33 ms sampled, Dense
# 0.21 ms; 120 x 84 0.20 against 0.22 ms; on par at 400 x 120 and 784 x 300).
SAMPLED_GRADIENT_MIN_ELEMENTS = 1 << 16

# Cost model constants, microseconds (fitted, see module docstring). Only the
# differences between kernels matter: the Dense-like overhead of a step is common.
_US_PER_MAC = 0.5e-5  # dense matmul, per multiply-add (oneDNN sgemm, 2 cores)
# Floor of a dense matmul's cost per kernel entry at small batches (memory bound).
_US_PER_MATVEC_MAC = 0.4e-3
# The same at batch 1: a matrix-vector product streams the kernel once (64 MiB of
# float32 in 2.2 ms at 4096 x 4096, 0.13e-3 per entry; 0.4e-3 priced it 3x too
# high, so the materialized kernel lost to the gather kernel where it is faster:
# 4096 x 4096 at density 0.3, train step 2.1x Dense against gather's 3.1x).
_US_PER_VECTOR_MAC = 0.15e-3
_US_PER_DENSE_ENTRY = 0.9e-3  # scatter into / gather from / add to a dense (m, n) tensor
_US_PER_CSR_PRODUCT = 0.25e-3  # CSR product, per nonzero and example
_US_PER_CSR_BUILD = 8e-3  # building the CSR matrix, per nonzero, per step
_US_PER_CSR_ROW = 2e-3  # CSR path: transposes of x and dy, per example and n + m
_US_PER_GATHER = 2.5e-3  # gather kernel, per nonzero and example
_US_PER_FFT_POINT = 0.12e-3  # fast DCT (Makhoul, XLA), per point and example (times log2 N)
_US_FIXED = {"csr": 350.0, "gather": 200.0, "materialized": 0.0, "native": 40.0}
# Native kernel, forward + input gradient + value gradient, per nonzero: at batch 1, and
# per tile of 16 rows (`benchmarks/dense_layer.py --kinds native`, train step less the
# step's fixed overhead: 1024 x 1024 at 30%, batch 256, 1.6 ns per nonzero and tile).
_US_PER_NATIVE_NONZERO = 2.5e-3
_US_PER_NATIVE_TILE_NONZERO = 1.7e-3
# Native DCT-II + DCT-III, per point and log2(N): one row at batch 1, a tile of 16 rows
# above (4096 points at batch 256: 0.98 ms for the 16 tiles of one transform).
_US_PER_NATIVE_FFT_POINT = {"row": 0.6e-3, "tile": 1.25e-3}
# The materialized kernel's S^T written by the native DctSparseDensify (where native ops
# may run), per entry: one streaming pass (4096 x 4096 at 30%, batch 256: forward 1.10x
# Dense against 1.35x with SparseToDense, `benchmarks/dense_layer.py --kinds materialized`).
_US_PER_NATIVE_DENSE_ENTRY = 0.25e-3
# In calls that record no gradient, the native forward reads 8 bytes per nonzero (value,
# row) against the materialized kernel's dense product over 4 bytes per entry plus
# building it: measured (`benchmarks/dense_layer.py --kinds native materialized`, forward
# x Dense at 30%) 0.89x against 1.21x (256 x 256, batch 256), 0.78x against 1.11x
# (1024 x 1024, batch 256). Where S outgrows the caches, tiles of rows are taken in groups
# that read each nonzero once (up to 4 tiles, as many as fit a core's L2 cache), so that
# the native forward keeps its edge there too: 4096 x 4096 at 30% (5M nonzeros),
# batch 256, 0.90x against 1.08x materialized; batch 32, 0.98x against 1.61x
# (`python benchmarks/dense_layer.py --widths 1024 4096 --densities 0.3 0.1 --batches
# 32 256 --kinds auto native materialized --repeats 5 --mlp-densities`; with one tile
# at a time, 1.19x at batch 256).
NATIVE_FORWARD_MAX_DENSITY = 1 / 3
#: Rows of a native tile on the AVX-512 host the constants above were fitted on (float32
#: lanes of a 64-byte vector; AVX2 builds use tiles of 8 rows, and the rule is not refitted
#: for them: README, "Speed on AVX2 CPUs", measures its choices there).
NATIVE_TILE_ROWS = 16
_US_FFT_FIXED = 60.0  # launching the fast DCT's XLA clusters (forward + gradient)
_US_NATIVE_FFT_FIXED = 20.0  # launching the native DCT ops (forward + gradient)
# Below this n * m, x @ K^T with oneDNN's transpose_b costs no more than
# transposing the activations around K^T x^T (measured: 256 x 256).
TRANSPOSED_PRODUCT_MIN_ELEMENTS = 1 << 18
# On CPUs with AVX-512, from this batch up, a large K^T is applied as
# BatchMatMulV2(x, K^T, adj_y=True), which oneDNN runs there as fast as x @ K with K
# stored; K^T x^T (and MatMul's transpose_b) is 15-30% slower there. Below it (batch 1
# to 32) K^T x^T is as fast or faster. `python benchmarks/dense_layer.py --widths 1024
# 4096 --batches 128 256 --densities 1 0.3 0.1 --kinds auto`, old and new code
# alternating twice, forward of the materialized kernel: 4096 x 4096 at density 1, batch
# 256, 27.5 / 26.7 ms before and 20.1 / 19.8 ms after (Dense 19.0-19.7 ms); batch 128,
# 15.1 / 13.5 -> 11.2 / 11.4 ms (Dense 11.0-11.4); 1024 x 1024, batch 256, 2.46 / 2.04
# -> 1.68 / 1.73 ms. Without AVX-512 (an AVX2 AMD EPYC, `python
# benchmarks/matmul_forms.py`) BatchMatMulV2 with adj_y and MatMul's transpose_b are 2-5x
# slower than K^T x^T at every batch from 8 up for kernels of 2048 x 2048 and more
# (4096 x 4096, batch 256: 205 against 63 ms, and x @ K 107 ms), so K^T x^T is the form
# there at every batch.
BATCHED_PRODUCT_MIN_BATCH = 64


def _dtype_size(dtype):
    return 8 if str(dtype).endswith("float64") else 4


def block_is_folded(input_dim, units, dtype="float32"):
    """Whether the `(units, input_dim)` DCT block is small enough to be constant-folded.

    Args:
        input_dim: Number of inputs `n`.
        units: Number of outputs `m`.
        dtype: Float dtype of the block.

    Returns:
        True when `n * m * itemsize <= FOLDED_BLOCK_MAX_BYTES`.

    Example:

    >>> block_is_folded(784, 300), block_is_folded(4096, 4096)
    (True, False)
    """
    return int(input_dim) * int(units) * _dtype_size(dtype) <= FOLDED_BLOCK_MAX_BYTES


def _fft_cost(input_dim, units, batch):
    length = max(int(input_dim), int(units))
    return _US_FFT_FIXED + (
        2 * max(1, int(batch)) * length * max(1.0, math.log2(length)) * _US_PER_FFT_POINT
    )


def native_fft_cost(input_dim, units, batch):
    """Estimated microseconds of the native DCT-II and DCT-III of a batch (forward + gradient).

    Example:

    >>> round(native_fft_cost(1024, 1024, 256))
    430
    """
    length = max(int(input_dim), int(units))
    log = max(1.0, math.log2(length))
    if int(batch) <= 1:
        return _US_NATIVE_FFT_FIXED + 2 * length * log * _US_PER_NATIVE_FFT_POINT["row"]
    tiles = math.ceil(int(batch) / NATIVE_TILE_ROWS)
    return _US_NATIVE_FFT_FIXED + tiles * 2 * length * log * _US_PER_NATIVE_FFT_POINT["tile"]


def use_folded_block(input_dim, units, batch=None, dtype="float32", native=False):
    """Whether the materialized kernel adds the DCT block to `S` (else it runs the fast DCT).

    The block must be small enough to be constant-folded (`block_is_folded`),
    and adding it (`n * m` per step) must cost less than the fast DCT of the
    batch (forward and gradient).

    Args:
        input_dim: Number of inputs `n`.
        units: Number of outputs `m`.
        batch: Rows of the input, or None (`ASSUMED_BATCH`).
        dtype: Float dtype of the block.
        native: Whether the fast DCT is the native one (`native_fft_cost`), else
            `tf.signal`'s.

    Returns:
        bool.

    Example:

    >>> use_folded_block(256, 256, 32), use_folded_block(1024, 1024, 32)
    (True, False)
    >>> use_folded_block(256, 256, 32, native=True), use_folded_block(256, 256, 256, native=True)
    (False, True)
    """
    if not block_is_folded(input_dim, units, dtype):
        return False
    batch = ASSUMED_BATCH if batch is None else batch
    block = int(input_dim) * int(units) * _US_PER_DENSE_ENTRY
    fft = native_fft_cost if native else _fft_cost
    return block < fft(input_dim, units, batch)


def materialized_allowed(input_dim, units):
    """Whether a `(input_dim, units)` layer may be materialized (`n * m` bound).

    Example:

    >>> materialized_allowed(4096, 4096), materialized_allowed(100_000, 100_000)
    (True, False)
    """
    return int(input_dim) * int(units) <= MAX_MATERIALIZED_ELEMENTS


PRODUCT_FORMS = ("transpose_b", "transposed", "batched", "by_batch")


def product_form(input_dim, units, batch=None, avx512=False):
    """How the materialized kernel applies its dense `K^T` (shape `(units, input_dim)`).

    - `"transpose_b"`: `tf.matmul(x, K^T, transpose_b=True)`, for kernels below
      `TRANSPOSED_PRODUCT_MIN_ELEMENTS` entries;
    - `"transposed"`: `(K^T x^T)^T`, for larger kernels: at every batch without
      AVX-512, at batches below `BATCHED_PRODUCT_MIN_BATCH` with it;
    - `"batched"`: `BatchMatMulV2(x, K^T, adj_y=True)`, for larger kernels from that
      batch up, with AVX-512;
    - `"by_batch"`: with AVX-512, when the batch is unknown at trace time (as under
      `model.fit`): one `tf.cond` on the run-time batch picks `"transposed"` or
      `"batched"` (a few microseconds, against at least 0.2 ms for the product).

    Args:
        input_dim: Number of inputs `n`.
        units: Number of outputs `m`.
        batch: Rows of the input, or None when unknown at trace time.
        avx512: Whether the CPU has AVX-512 (`cpu_features.has_avx512()`), where
            oneDNN's batched product with `adj_y` is the fastest form at large batches.

    Returns:
        One of `PRODUCT_FORMS`.

    Example:

    >>> product_form(256, 256, 256), product_form(1024, 1024, 32)
    ('transpose_b', 'transposed')
    >>> product_form(1024, 1024, 64), product_form(1024, 1024)
    ('transposed', 'transposed')
    >>> product_form(1024, 1024, 64, avx512=True), product_form(1024, 1024, avx512=True)
    ('batched', 'by_batch')
    """
    if int(input_dim) * int(units) < TRANSPOSED_PRODUCT_MIN_ELEMENTS:
        return "transpose_b"
    if not avx512:
        return "transposed"
    if batch is None:
        return "by_batch"
    return "batched" if int(batch) >= BATCHED_PRODUCT_MIN_BATCH else "transposed"


def use_sampled_value_gradient(input_dim, units, nnz):
    """Whether the materialized kernel's value gradient is the sampled product.

    True for kernels of more than `SAMPLED_GRADIENT_MIN_ELEMENTS` entries with a
    density below `SAMPLED_GRADIENT_MAX_DENSITY`; else the value gradient is read
    from the dense `dy^T x`.

    Example:

    >>> use_sampled_value_gradient(1000, 1000, 1000), use_sampled_value_gradient(300, 100, 887)
    (True, False)
    """
    size = int(input_dim) * int(units)
    return size > SAMPLED_GRADIENT_MIN_ELEMENTS and nnz < SAMPLED_GRADIENT_MAX_DENSITY * size


def estimated_step_costs(input_dim, units, nnz, batch, dtype="float32", native=False):
    """Estimated microseconds of one training step (forward + all gradients) per kernel.

    Args:
        input_dim: Number of inputs `n`.
        units: Number of outputs `m`.
        nnz: Number of nonzeros of `S`.
        batch: Number of rows of the input (Python int >= 1).
        dtype: `"float32"` or `"float64"` (float64 roughly doubles the work).
        native: Whether the native kernel may run (else it is absent).

    Returns:
        dict `kernel -> microseconds` for the kernels of `KERNELS` that are
        allowed (`"materialized"` is absent when `n * m` exceeds
        `MAX_MATERIALIZED_ELEMENTS`, `"native"` unless `native`).

    Example:

    >>> costs = estimated_step_costs(256, 256, 655, batch=1)
    >>> sorted(costs)
    ['csr', 'gather', 'materialized']
    """
    n, m, nnz, batch = int(input_dim), int(units), int(nnz), max(1, int(batch))
    size = n * m
    length = max(n, m)
    scale = 2.0 if _dtype_size(dtype) == 8 else 1.0
    fft = 2 * batch * length * max(1.0, math.log2(length)) * _US_PER_FFT_POINT
    costs = {
        "csr": _US_FIXED["csr"]
        + scale * (
            nnz * (2 * _US_PER_CSR_BUILD + 3 * batch * _US_PER_CSR_PRODUCT)
            + 2 * batch * (n + m) * _US_PER_CSR_ROW
            + fft
        ),
        "gather": _US_FIXED["gather"] + scale * (3 * batch * nnz * _US_PER_GATHER + fft),
    }
    if materialized_allowed(n, m):
        floor = _US_PER_VECTOR_MAC if batch == 1 else _US_PER_MATVEC_MAC
        mac = max(_US_PER_MAC * batch, floor) * size
        if use_sampled_value_gradient(n, m, nnz):
            value_gradient = 2 * batch * nnz * _US_PER_GATHER
        else:
            value_gradient = mac + nnz * _US_PER_DENSE_ENTRY
        # zeros + scatter; at full density the values are S^T already (a reshape).
        entry = _US_PER_NATIVE_DENSE_ENTRY if native else _US_PER_DENSE_ENTRY
        build = 0.0 if nnz >= size else (size + nnz) * entry
        offset = min(
            size * _US_PER_DENSE_ENTRY if block_is_folded(n, m, dtype) else math.inf,
            native_fft_cost(n, m, batch) if native else _fft_cost(n, m, batch),
        )
        costs["materialized"] = _US_FIXED["materialized"] + scale * (
            build + 2 * mac + value_gradient + offset
        )
    if native:
        costs["native"] = _US_FIXED["native"] + scale * native_work(n, m, nnz, batch)
    return costs


def native_work(input_dim, units, nnz, batch):
    """Estimated microseconds of the native kernel's products and DCTs in one training step.

    Example:

    >>> round(native_work(1024, 1024, 314573, 256))
    8966
    """
    length = max(int(input_dim), int(units))
    log = max(1.0, math.log2(length))
    if int(batch) <= 1:
        return nnz * _US_PER_NATIVE_NONZERO + 2 * length * log * _US_PER_NATIVE_FFT_POINT["row"]
    tiles = math.ceil(int(batch) / NATIVE_TILE_ROWS)
    return tiles * (
        nnz * _US_PER_NATIVE_TILE_NONZERO + 2 * length * log * _US_PER_NATIVE_FFT_POINT["tile"]
    )


def choose_kernel(input_dim, units, nnz, batch=None, dtype="float32", xla=False, native=False,
                  forward_only=False):
    """The cheapest kernel for a dense DCTpS layer, by `estimated_step_costs`.

    Args:
        input_dim: Number of inputs `n`.
        units: Number of outputs `m`.
        nnz: Number of nonzeros of `S`.
        batch: Rows of the input, or None when unknown at trace time
            (`ASSUMED_BATCH` is used then).
        dtype: Float dtype the kernel runs in.
        xla: True when the call is being compiled by XLA: `"csr"` and `"native"`
            (which have no XLA kernel) are then never chosen.
        native: Whether the native kernel may run here. When it may, it is
            chosen against the materialized kernel only (it computes what the
            CSR and gather kernels compute, faster).
        forward_only: Whether the call records no gradient (Keras's predict and
            evaluate steps): with `native`, the native kernel is then chosen up to
            `NATIVE_FORWARD_MAX_DENSITY`, where its forward is the cheaper one even
            when the training step of the materialized kernel is.

    Returns:
        One of `KERNELS`.

    Example:

    >>> choose_kernel(4096, 4096, 167772, batch=256)
    'csr'
    >>> choose_kernel(256, 256, 65536, batch=32)
    'materialized'
    >>> [choose_kernel(1024, 1024, 314573, 256, native=True, forward_only=f) for f in (0, 1)]
    ['materialized', 'native']
    """
    costs = estimated_step_costs(
        input_dim, units, nnz, ASSUMED_BATCH if batch is None else batch, dtype, native=native
    )
    if xla:
        costs.pop("csr")
        costs.pop("native", None)
    elif "native" in costs:
        costs.pop("csr")
        costs.pop("gather")
        if forward_only and nnz <= NATIVE_FORWARD_MAX_DENSITY * int(input_dim) * int(units):
            return "native"
    return min(costs, key=costs.get)
