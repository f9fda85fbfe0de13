import numpy as np
import pytest
import tensorflow as tf

from keras_dctsparse.native import library as native_library
from keras_dctsparse.ops import cpu_features
from keras_dctsparse.ops import kernel_choice
from keras_dctsparse.ops import kernel_registry as registry
from keras_dctsparse.ops import sparse_matmul as sm
from numpy_reference import dct_block
from numpy_reference import random_sparse_problem


def run(kernel, rows, cols, values, x, dy, m, dynamic_batch):
    n = x.shape[1]
    signature = [
        tf.TensorSpec([None if dynamic_batch else x.shape[0], n], tf.float32),
        tf.TensorSpec([len(values)], tf.float32),
    ]

    @tf.function(input_signature=signature)
    def forward_backward(x, values):
        with tf.GradientTape() as tape:
            tape.watch([x, values])
            y = sm.sparse_matmul(x, values, rows, cols, m, kernel=kernel)
            loss = tf.reduce_sum(y * dy)
        dx, dvalues = tape.gradient(loss, [x, values])
        return y, dx, dvalues

    return [
        t.numpy()
        for t in forward_backward(
            tf.constant(x, tf.float32), tf.constant(values, tf.float32)
        )
    ]


@pytest.mark.parametrize("kernel", sm.SPARSE_KERNELS)
@pytest.mark.parametrize("batch", [1, 5, 40])
@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_kernels_match_numpy_forward_and_backward(kernel, batch, dynamic_batch):
    n, m = 70, 45
    rows, cols, values, dense, x, dy = random_sparse_problem(n, m, 300, batch)
    y, dx, dvalues = run(kernel, rows, cols, values, x, dy, m, dynamic_batch)
    np.testing.assert_allclose(y, x @ dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dy @ dense.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dvalues, (x.T @ dy)[rows, cols], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["csr", "gather"])
def test_kernels_handle_empty_columns_and_rows(kernel):
    # Only one nonzero: most rows and columns of S are empty.
    rows = np.array([3], np.int32)
    cols = np.array([1], np.int32)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    dy = np.arange(8, dtype=np.float32).reshape(2, 4)
    x_t, values = tf.constant(x), tf.constant([2.0])
    with tf.GradientTape() as tape:
        tape.watch([x_t, values])
        y = sm.sparse_matmul(x_t, values, rows, cols, 4, kernel=kernel)
        loss = tf.reduce_sum(y * dy)
    dx, dvalues = tape.gradient(loss, [x_t, values])
    expected = np.zeros((2, 4), np.float32)
    expected[:, 1] = 2 * x[:, 3]
    np.testing.assert_array_equal(y.numpy(), expected)
    expected_dx = np.zeros((2, 6), np.float32)
    expected_dx[:, 3] = 2 * dy[:, 1]
    np.testing.assert_array_equal(dx.numpy(), expected_dx)
    np.testing.assert_array_equal(dvalues.numpy(), [x[:, 3] @ dy[:, 1]])


def test_unknown_kernel_is_a_clear_error():
    with pytest.raises(ValueError, match="kernel='dense'"):
        sm.sparse_matmul(tf.ones((1, 2)), tf.ones(1), [0], [0], 2, kernel="dense")


@pytest.mark.parametrize("kernel", sm.SPARSE_KERNELS)
@pytest.mark.parametrize("batch", [3, 40])
def test_offset_sparse_matmul_matches_numpy_forward_and_backward(kernel, batch):
    actual, expected, magnitudes = offset_problem(33, 50, 200, batch, tf.float32, kernel,
                                                  dynamic_batch=True)
    assert_matches_reference(actual, expected, magnitudes, 1e-5, kernel)


# Cases that reach every branch of the materialized kernel and both sides of
# the cost rule: (n, m, nnz, batch).
BRANCH_CASES = [
    (33, 50, 200, 3),  # small: folded DCT block, dense value gradient
    (20, 12, 240, 2),  # full density: S^T is a reshape of the values
    (1700, 1600, 300, 2),  # block too large to fold: fast DCT; sampled value gradient
    (300, 250, 1000, 64),  # sampled value gradient with the folded block
    (40, 30, 10, 1),  # small and sparse: dense value gradient, folded block
    (600, 500, 30000, 5),  # (K^T x^T)^T product, fast DCT (block dearer), dense gradient
    (520, 520, 20000, 300),  # (K^T x^T)^T product with the folded block
]


@pytest.mark.parametrize(
    "case, dynamic_batch, avx512, form",
    [
        ((600, 500, 30000, 5), False, True, "transposed"),
        ((600, 500, 30000, 70), False, True, "batched"),
        ((600, 500, 30000, 70), False, False, "transposed"),
        # Batch unknown when traced: the tf.cond picks each side at run time.
        ((600, 500, 30000, 5), True, True, "by_batch"),
        ((600, 500, 30000, 70), True, True, "by_batch"),
        ((600, 500, 30000, 70), True, False, "transposed"),
        ((300, 250, 1000, 70), True, False, "transpose_b"),
    ],
)
def test_every_product_form_matches_numpy(case, dynamic_batch, avx512, form, monkeypatch):
    # The form follows the CPU (`cpu_features.has_avx512`): every form runs on every host.
    monkeypatch.setattr(cpu_features, "has_avx512", lambda flags=None: avx512)
    n, m, _, batch = case
    assert kernel_choice.product_form(n, m, None if dynamic_batch else batch,
                                      avx512=avx512) == form
    actual, expected, magnitudes = offset_problem(
        *case, tf.float32, "materialized", dynamic_batch=dynamic_batch
    )
    assert_matches_reference(actual, expected, magnitudes, 2e-5, form)


def test_branch_cases_reach_every_branch():
    folded = [kernel_choice.use_folded_block(n, m, b) for n, m, _, b in BRANCH_CASES]
    sampled = [kernel_choice.use_sampled_value_gradient(n, m, k) for n, m, k, _ in BRANCH_CASES]
    transposed = [
        n * m >= kernel_choice.TRANSPOSED_PRODUCT_MIN_ELEMENTS for n, m, _, _ in BRANCH_CASES
    ]
    assert set(folded) == set(sampled) == set(transposed) == {True, False}
    assert any(f and t for f, t in zip(folded, transposed))
    # Where native ops run (the replica-context tests), the block is priced against the
    # native DCT: both sides are reached there too.
    folded_native = [
        kernel_choice.use_folded_block(n, m, b, native=True) for n, m, _, b in BRANCH_CASES
    ]
    assert set(folded_native) == {True, False}


def offset_problem(n, m, nnz, batch, dtype, kernel, dynamic_batch=False, replica=False,
                   positions=False):
    """Forward and gradients of `offset_sparse_matmul` and their numpy references.

    `replica`: traced inside `strategy.run`, as Keras's steps are, where native ops may
    run. `positions`: the positions passed as one `(2, nnz)` tensor, as the layers pass them.
    """
    rows, cols, values, dense, x, dy = random_sparse_problem(n, m, nnz, batch)
    offset = dct_block(m, n)  # D, (m x n)
    alpha = 0.6

    @tf.function(
        input_signature=[
            tf.TensorSpec([None if dynamic_batch else batch, n], dtype),
            tf.TensorSpec([nnz], dtype),
            tf.TensorSpec([], dtype),
        ]
    )
    def forward_backward(x, values, alpha):
        def step():
            with tf.GradientTape() as tape:
                tape.watch([x, values, alpha])
                if positions:
                    y = registry.matmul(x, values, None, None, m, kernel=kernel, alpha=alpha,
                                        backend="tensorflow",
                                        positions=tf.constant(np.stack([rows, cols])))
                else:
                    y = sm.offset_sparse_matmul(x, alpha, values, rows, cols, m, kernel=kernel)
                loss = tf.reduce_sum(y * dy)
            return (y,) + tuple(tape.gradient(loss, [x, values, alpha]))

        return tf.distribute.get_strategy().run(step) if replica else step()

    actual = [
        t.numpy()
        for t in forward_backward(
            tf.constant(x, dtype), tf.constant(values, dtype), tf.constant(alpha, dtype)
        )
    ]
    kernel_matrix = dense + alpha * offset.T
    expected = [
        x @ kernel_matrix,
        dy @ kernel_matrix.T,
        (x.T @ dy)[rows, cols],
        np.sum((x @ offset.T) * dy),
    ]
    # The same sums over absolute values: the size of a float rounding error in
    # each entry is proportional to these, not to the (possibly cancelled) result.
    abs_x, abs_dy, abs_kernel = np.abs(x), np.abs(dy), np.abs(kernel_matrix)
    magnitudes = [
        abs_x @ abs_kernel,
        abs_dy @ abs_kernel.T,
        (abs_x.T @ abs_dy)[rows, cols],
        np.sum((abs_x @ np.abs(offset.T)) * abs_dy),
    ]
    return actual, expected, magnitudes


def assert_matches_reference(actual, expected, magnitudes, tolerance, err_msg=""):
    """Entrywise |got - want| <= tolerance * (sum of |terms|), plus a floor."""
    for got, want, magnitude in zip(actual, expected, magnitudes):
        bound = tolerance * (np.maximum(magnitude, 1.0) + np.abs(want))
        excess = np.abs(got - want) - bound
        assert np.all(excess <= 0), (
            f"{err_msg}: max |got - want| {np.max(np.abs(got - want)):.3g} exceeds "
            f"{tolerance} * magnitude (worst excess {np.max(excess):.3g})"
        )


@pytest.mark.parametrize("kernel", sm.SPARSE_KERNELS)
@pytest.mark.parametrize("case", BRANCH_CASES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_every_kernel_branch_matches_numpy(kernel, case, dtype):
    actual, expected, magnitudes = offset_problem(*case, dtype, kernel)
    tolerance = 2e-5 if dtype == tf.float32 else 1e-11
    assert_matches_reference(actual, expected, magnitudes, tolerance, kernel)


@pytest.mark.skipif(not native_library.available(), reason="native kernels unavailable")
@pytest.mark.parametrize("kernel", ["auto", "materialized", "native"])
@pytest.mark.parametrize("case", BRANCH_CASES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_kernels_where_native_ops_run_match_numpy(kernel, case, dtype):
    """Inside a replica context with the (2, nnz) positions, as a layer in `fit` runs them:
    the native kernel's ops, the materialized kernel's native densify and gather."""
    actual, expected, magnitudes = offset_problem(*case, dtype, kernel, replica=True,
                                                  positions=True)
    tolerance = 2e-5 if dtype == tf.float32 else 1e-11
    assert_matches_reference(actual, expected, magnitudes, tolerance, kernel)


@pytest.mark.parametrize(
    "case, batch_side",
    [
        # (n, m, nnz): auto picks different kernels at batch 1 and batch 256.
        ((300, 200, 60, 1), "small"),
        ((300, 200, 60, 256), "large"),
        ((256, 256, 655, 1), "small"),
        ((256, 256, 655, 256), "large"),
        ((256, 256, 65536, 256), "large"),
    ],
)
def test_auto_matches_numpy_on_both_sides_of_its_thresholds(case, batch_side):
    n, m, nnz, batch = case
    chosen = sm.resolve_kernel("auto", n, m, nnz, batch)
    actual, expected, magnitudes = offset_problem(n, m, nnz, batch, tf.float32, "auto")
    assert_matches_reference(actual, expected, magnitudes, 2e-5, chosen)


SWITCHING_CASES = [
    (4096, 4096, 16777, 1),
    (300, 200, 60, 256),
    (4096, 4096, 16777, 256),
    (256, 256, 65536, 32),
]


def test_auto_switches_kernels_across_shapes_and_batches():
    chosen = {sm.resolve_kernel("auto", *case, native=False) for case in SWITCHING_CASES}
    assert chosen == {"csr", "gather", "materialized"}
    # Where native ops may run they replace CSR and gather; full density stays dense.
    chosen = {sm.resolve_kernel("auto", *case, native=True) for case in SWITCHING_CASES}
    assert chosen == {"native", "materialized"}


def test_auto_never_picks_csr_or_native_under_xla():
    n, m, nnz = 4096, 4096, 16777
    assert sm.resolve_kernel("auto", n, m, nnz, 256, native=False) == "csr"
    assert sm.resolve_kernel("auto", n, m, nnz, 256, native=True) == "native"
    seen = []

    @tf.function(jit_compile=True)
    def compiled(x):
        seen.append(sm.resolve_kernel("auto", n, m, nnz, 256))
        return x

    compiled(tf.ones(1))
    assert seen and not {"csr", "native"} & set(seen)


def test_auto_with_unknown_batch_is_one_static_choice():
    # Batch None at trace time: the choice for ASSUMED_BATCH, no tf.cond.
    n, m, nnz = 64, 48, 300
    actual, expected, magnitudes = offset_problem(n, m, nnz, 5, tf.float32, "auto",
                                                  dynamic_batch=True)
    assert_matches_reference(actual[:1], expected[:1], magnitudes[:1], 1e-5, "auto")
    assert sm.resolve_kernel("auto", n, m, nnz, None) == sm.resolve_kernel(
        "auto", n, m, nnz, kernel_choice.ASSUMED_BATCH
    )


def test_materialized_refuses_huge_kernels():
    with pytest.raises(ValueError, match="MAX_MATERIALIZED_ELEMENTS"):
        sm.sparse_matmul(
            tf.ones((1, 100_000)), tf.ones(1), [0], [0], 100_000, kernel="materialized"
        )


@pytest.mark.parametrize("kernel", sm.SPARSE_KERNELS)
def test_sparse_matmul_without_offset_float64(kernel):
    rows, cols, values, dense, x, dy = random_sparse_problem(40, 30, 1200, 4)

    @tf.function
    def forward_backward(x, values):
        with tf.GradientTape() as tape:
            tape.watch([x, values])
            y = sm.sparse_matmul(x, values, rows, cols, 30, kernel=kernel)
            loss = tf.reduce_sum(y * dy)
        return (y,) + tuple(tape.gradient(loss, [x, values]))

    y, dx, dvalues = [
        t.numpy() for t in forward_backward(tf.constant(x), tf.constant(values))
    ]
    np.testing.assert_allclose(y, x @ dense, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dx, dy @ dense.T, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dvalues, (x.T @ dy)[rows, cols], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_sampled_dot_of_transposes_matches_numpy(dtype):
    # The CSR kernel's value gradient: x^T and dy^T given, one dot per nonzero.
    rows, cols, _, _, x, dy = random_sparse_problem(50, 60, 400, 7)
    got = sm._sampled_dot_transposed(
        tf.constant(x.T, dtype), tf.constant(dy.T, dtype), rows, cols
    ).numpy()
    tolerance = 1e-5 if dtype == tf.float32 else 1e-12
    np.testing.assert_allclose(got, (x.T @ dy)[rows, cols], rtol=tolerance, atol=tolerance)


@pytest.mark.skipif(not native_library.available(), reason="native kernels unavailable")
def test_materialized_kernel_builds_its_kernel_natively_only_where_native_ops_run():
    rows, cols, values, _, x, _ = random_sparse_problem(64, 48, 300, 4)
    positions = tf.constant(np.stack([rows, cols]))
    args = (tf.constant(x, tf.float32), tf.constant(values, tf.float32))

    def product(x, values):
        return registry.matmul(x, values, None, None, 48, kernel="materialized",
                               alpha=tf.constant(0.5), backend="tensorflow", positions=positions)

    def op_types(function):
        graph = tf.function(function).get_concrete_function(*args).graph
        return {op.type for op in graph.get_operations()}

    in_step = op_types(lambda x, v: tf.distribute.get_strategy().run(product, args=(x, v)))
    assert "DctSparseDensify" in in_step
    assert not {t for t in op_types(product) if t.startswith("DctSparse")}


@pytest.mark.skipif(not native_library.available(), reason="native kernels unavailable")
def test_materialized_kernel_adds_the_native_dct_where_native_ops_run():
    # 1700 x 1600: the DCT block is too large to fold, so `alpha * D x` is a fast DCT: the
    # native one inside a replica context, tf.signal's elsewhere (and in exported graphs).
    n, m = 1700, 1600
    rows, cols, values, _, x, _ = random_sparse_problem(n, m, 300, 2)
    positions = tf.constant(np.stack([rows, cols]))
    args = (tf.constant(x, tf.float32), tf.constant(values, tf.float32))

    def product(x, values):
        return registry.matmul(x, values, None, None, m, kernel="materialized",
                               alpha=tf.constant(0.5), backend="tensorflow", positions=positions)

    def op_types(function):
        graph = tf.function(function).get_concrete_function(*args).graph
        return {op.type for op in graph.get_operations()}

    assert not kernel_choice.use_folded_block(n, m, 2, native=True)
    in_step = op_types(lambda x, v: tf.distribute.get_strategy().run(product, args=(x, v)))
    assert "DctSparseOffset" in in_step
    assert not {t for t in op_types(product) if t.startswith("DctSparse")}


@pytest.mark.skipif(not native_library.available(), reason="native kernels unavailable")
def test_auto_takes_the_native_forward_where_no_gradient_is_recorded():
    # 256 x 256 at 30%, batch 256: a training step builds the materialized kernel, a
    # forward-only call (no tape, as in Keras's predict step) runs the native product.
    n, m, nnz, batch = 256, 256, 19_660, 256
    rows, cols, values, dense, x, dy = random_sparse_problem(n, m, nnz, batch)
    positions = tf.constant(np.stack([rows, cols]))
    args = (tf.constant(x, tf.float32), tf.constant(values, tf.float32))
    alpha = tf.constant(0.6)

    def forward(x, values):
        return registry.matmul(x, values, None, None, m, kernel="auto", alpha=alpha,
                               backend="tensorflow", positions=positions)

    def train(x, values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            y = forward(x, values)
        return tape.gradient(y, values)

    def in_replica(function):
        return tf.function(lambda x, v: tf.distribute.get_strategy().run(function, args=(x, v)))

    def op_types(function):
        graph = in_replica(function).get_concrete_function(*args).graph
        return {op.type for op in graph.get_operations()}

    assert "DctSparseMatmul" in op_types(forward)
    assert "DctSparseDensify" not in op_types(forward)
    assert "DctSparseDensify" in op_types(train) and "DctSparseMatmul" not in op_types(train)
    kernel_matrix = dense + 0.6 * dct_block(m, n).T
    assert_matches_reference([in_replica(forward)(*args).numpy()], [x @ kernel_matrix],
                             [np.abs(x) @ np.abs(kernel_matrix)], 2e-5, "forward")
