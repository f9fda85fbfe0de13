"""The native kernel through TensorFlow's autodiff, and its fallback, against numpy."""

import numpy as np
import pytest
import tensorflow as tf

from keras_dctsparse.native import library
from keras_dctsparse.native import policy
from keras_dctsparse.ops import native_matmul
from keras_dctsparse.ops import sparse_matmul
from numpy_reference import assert_sum_close
from numpy_reference import dct_block
from numpy_reference import random_sparse_problem

pytestmark = pytest.mark.skipif(
    not library.available(), reason=f"native kernels unavailable: {library.unavailable_reason()}"
)


WEIGHTS = tf.constant(np.random.default_rng(7).standard_normal((64, 512)), tf.float32)


def _gradients(function, x, alpha, values):
    """`(y, dx, dalpha, dvalues)` of the loss `sum(y * WEIGHTS)` (WEIGHTS is dL/dy)."""
    with tf.GradientTape() as tape:
        tape.watch([x, alpha, values])
        y = function(x, alpha, values)
        loss = tf.reduce_sum(y * WEIGHTS[: y.shape[0], : y.shape[1]])
    return (y,) + tuple(tape.gradient(loss, [x, alpha, values]))


@pytest.mark.parametrize("batch", [1, 5, 16, 33])
@pytest.mark.parametrize("with_offset", [True, False])
def test_forward_and_every_gradient_match_numpy(batch, with_offset):
    n, m, nnz = 200, 120, 2000
    rows, cols, values, dense, x, _ = random_sparse_problem(n, m, nnz, batch)
    weights = WEIGHTS.numpy()[:batch, :m].astype(np.float64)
    alpha = 0.6
    block = dct_block(m, n)
    x_t = tf.constant(x, tf.float32)
    alpha_t = tf.constant(alpha, tf.float32)
    values_t = tf.constant(values, tf.float32)

    def function(x, alpha, values):
        positions = np.stack([rows, cols])
        if with_offset:
            return native_matmul.native_offset_matmul(x, alpha, values, positions, m)
        return native_matmul.native_matmul(x, values, positions, m)

    y, dx, dalpha, dvalues = _gradients(function, x_t, alpha_t, values_t)
    kernel = dense + (alpha * block.T if with_offset else 0)
    np.testing.assert_allclose(y.numpy(), x @ kernel, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx.numpy(), weights @ kernel.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dvalues.numpy(), (x.T @ weights)[rows, cols], rtol=1e-4,
                               atol=1e-4)
    if with_offset:
        assert_sum_close(dalpha.numpy(), weights * (x @ block.T), rtol=1e-4)
    else:
        assert dalpha is None or float(dalpha) == 0.0


def test_dct_offset_and_its_gradient_match_scipy():
    x = np.random.default_rng().standard_normal((7, 40))
    block = dct_block(25, 40)
    x_t = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        y = native_matmul.native_dct_offset(x_t, 25)
        loss = tf.reduce_sum(y * WEIGHTS[:7, :25])
    np.testing.assert_allclose(y.numpy(), x @ block.T, atol=1e-5)
    np.testing.assert_allclose(tape.gradient(loss, x_t).numpy(),
                               WEIGHTS.numpy()[:7, :25] @ block, atol=1e-5)


def test_forced_native_runs_stock_ops_where_native_may_not(monkeypatch):
    """A plain tf.function under mode "auto" (as `model.export` traces) gets stock ops."""
    monkeypatch.setattr(policy, "_mode", "auto")
    n, m, nnz = 64, 48, 300
    rows, cols, values, dense, x, _ = random_sparse_problem(n, m, nnz, 4)
    args = (tf.constant(x, tf.float32), tf.constant(0.5), tf.constant(values, tf.float32))

    @tf.function
    def product(x, alpha, values):
        return sparse_matmul.offset_sparse_matmul(x, alpha, values, rows, cols, m,
                                                  kernel="native")

    graph = product.get_concrete_function(*args).graph
    assert not [op for op in graph.get_operations() if op.type.startswith("DctSparse")]
    want = x @ (dense + 0.5 * dct_block(m, n).T)
    np.testing.assert_allclose(product(*args).numpy(), want, rtol=1e-4, atol=1e-4)
    # Eagerly the same call runs the native ops, with the same result.
    np.testing.assert_allclose(
        sparse_matmul.offset_sparse_matmul(*args[:1], args[1], args[2], rows, cols, m,
                                           kernel="native").numpy(),
        want, rtol=1e-4, atol=1e-4)


def test_forced_native_under_xla_runs_the_stock_choice():
    n, m, nnz = 64, 48, 300
    rows, cols, values, dense, x, _ = random_sparse_problem(n, m, nnz, 4)

    @tf.function(jit_compile=True)
    def product(x, alpha, values):
        return sparse_matmul.offset_sparse_matmul(x, alpha, values, rows, cols, m,
                                                  kernel="native")

    args = (tf.constant(x, tf.float32), tf.constant(0.5), tf.constant(values, tf.float32))
    np.testing.assert_allclose(product(*args).numpy(), x @ (dense + 0.5 * dct_block(m, n).T),
                               rtol=1e-4, atol=1e-4)


def test_offset_is_kept_only_when_a_gradient_is_recorded_and_recomputed_otherwise():
    """Inference calls do not write D x out; a gradient asked of such a call recomputes it."""
    n, m, nnz = 40, 30, 100
    rows, cols, values, dense, x, _ = random_sparse_problem(n, m, nnz, 3)
    positions = np.stack([rows, cols])
    args = (tf.constant(x, tf.float32), tf.constant(0.7), tf.constant(values, tf.float32))

    def op_attrs(function, *inputs):
        graph = tf.function(function).get_concrete_function(*inputs).graph
        return [op.get_attr("offset_output") for op in graph.get_operations()
                if op.type == "DctSparseMatmul"]

    def inference(x, alpha, values):
        return native_matmul.native_offset_matmul(x, alpha, values, positions, m)

    def training(x, alpha, values):
        with tf.GradientTape() as tape:
            tape.watch(alpha)
            y = native_matmul.native_offset_matmul(x, alpha, values, positions, m)
        return tape.gradient(tf.reduce_sum(y), alpha)

    assert op_attrs(inference, *args) == [False]
    assert op_attrs(training, *args) == [True]
    # A tf.function traced without a tape, differentiated from outside: alpha's gradient
    # recomputes D x.
    traced = tf.function(inference)
    traced(*args)  # traced here without a tape: the call below reuses this trace
    assert [op.get_attr("offset_output") for op in
            traced.get_concrete_function(*args).graph.get_operations()
            if op.type == "DctSparseMatmul"] == [False]
    with tf.GradientTape() as tape:
        tape.watch(args[1])
        loss = tf.reduce_sum(traced(*args))
    want = np.sum(x @ dct_block(m, n).T)
    np.testing.assert_allclose(tape.gradient(loss, args[1]).numpy(), want, rtol=1e-4)
