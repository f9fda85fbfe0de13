"""The sparse kernel registry: every registered kernel against numpy, lookups, errors, layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dctsparse.layers import DCTSparseDense
from keras_dctsparse.layers import DCTSparseEinsumDense
from keras_dctsparse.ops import kernel_registry as registry
from keras_dctsparse.ops import sparse_matmul as sm
from numpy_reference import assert_sum_close
from numpy_reference import dct_block
from numpy_reference import random_sparse_problem


def random_problem(n, m, nnz, batch):
    """`random_sparse_problem` plus a random `alpha`."""
    alpha = float(np.random.default_rng().uniform(0.5, 2.0))
    return random_sparse_problem(n, m, nnz, batch) + (alpha,)


def run_registered(backend, name, problem, m, with_offset):
    """Forward and gradients (x, values, alpha) of `registry.matmul` by kernel `name`."""
    rows, cols, values, _, x, dy, alpha = problem
    x, values = tf.constant(x, tf.float32), tf.constant(values, tf.float32)
    alpha = tf.constant(alpha, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([x, values, alpha])
        y = registry.matmul(
            x, values, tf.constant(rows), tf.constant(cols), m, kernel=name,
            alpha=alpha if with_offset else None, backend=backend,
        )
        loss = tf.reduce_sum(y * dy)
    dx, dvalues, dalpha = tape.gradient(loss, [x, values, alpha])
    return y.numpy(), dx.numpy(), dvalues.numpy(), None if dalpha is None else dalpha.numpy()


def reference(problem, m, with_offset):
    """numpy: y = x @ (S + alpha D^T) and its gradients."""
    rows, cols, values, dense, x, dy, alpha = problem
    block = dct_block(m, x.shape[1]).T  # (n, m): D^T
    kernel = dense + (alpha * block if with_offset else 0.0)
    dalpha_terms = dy * (x @ block) if with_offset else None  # alpha's gradient: their sum
    return x @ kernel, dy @ kernel.T, (x.T @ dy)[rows, cols], dalpha_terms


# TensorFlow's kernels, and the generic keras.ops ones (KERAS_OPS: keras.ops on TF).
CASES = [("tensorflow", name) for name in ("csr", "gather", "materialized", "auto")] + [
    (registry.KERAS_OPS, name) for name in ("gather", "materialized", "auto")
]


@pytest.mark.parametrize("backend, name", CASES)
@pytest.mark.parametrize("with_offset", [False, True])
@pytest.mark.parametrize("batch", [1, 9])
def test_every_registered_kernel_matches_numpy(backend, name, with_offset, batch):
    n, m = 37, 23
    problem = random_problem(n, m, 150, batch)
    y, dx, dvalues, dalpha = run_registered(backend, name, problem, m, with_offset)
    ref_y, ref_dx, ref_dvalues, ref_dalpha_terms = reference(problem, m, with_offset)
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dvalues, ref_dvalues, rtol=1e-4, atol=1e-4)
    if with_offset:
        assert_sum_close(dalpha, ref_dalpha_terms, rtol=1e-5)


def test_tensorflow_kernels_and_their_xla_safety():
    names = ("csr", "gather", "materialized", "native")
    assert registry.kernel_names("tensorflow") == names
    assert [registry.get_kernel(k, "tensorflow").xla_safe for k in names] == [
        False, True, True, True  # native: the stock choice runs under XLA
    ]
    assert registry.is_xla_safe("auto", "tensorflow")
    # The public constants of the TF module follow the registry.
    assert sm.XLA_KERNELS == ("auto", "gather", "materialized", "native")
    assert sm.SPARSE_KERNELS == ("auto", "csr", "gather", "materialized", "native")


def test_generic_kernels_cover_the_other_backends():
    for backend in registry.GENERIC_BACKENDS:
        assert registry.kernel_names(backend) == ("gather", "materialized")
        assert all(registry.is_xla_safe(k, backend) for k in ("auto", "gather", "materialized"))
    # PyTorch has its own gather (torch.sparse.mm), the others take + segment sum.
    assert registry.get_kernel("gather", "torch") is not registry.get_kernel("gather", "jax")
    assert (registry.get_kernel("materialized", "torch")
            is registry.get_kernel("materialized", "jax"))


def test_unknown_kernel_names_argument_value_and_allowed_names():
    with pytest.raises(ValueError) as error:
        registry.get_kernel("dense", "tensorflow", argument="sparse_kernel")
    message = str(error.value)
    assert "`sparse_kernel`" in message and "sparse_kernel='dense'" in message
    assert "('auto', 'csr', 'gather', 'materialized', 'native')" in message
    assert "needs the" not in message  # no backend has a kernel "dense"


def test_kernel_of_another_backend_says_which_backend_it_needs():
    with pytest.raises(ValueError) as error:
        registry.get_kernel("csr", "jax", argument="sparse_kernel")
    message = str(error.value)
    assert "('auto', 'gather', 'materialized') under the 'jax' backend" in message
    assert "sparse_kernel='csr' needs the TensorFlow backend; KERAS_BACKEND is 'jax'" in message


def test_check_kernel_name():
    assert registry.check_kernel_name("AUTO", "tensorflow") == "auto"
    assert registry.check_kernel_name("Csr", "tensorflow") == "csr"
    for bad in (None, 3, "sparse"):
        with pytest.raises(ValueError, match="Argument `sparse_kernel` must be one of"):
            registry.check_kernel_name(bad, "tensorflow", argument="sparse_kernel")


def test_shape_limit_of_the_materialized_kernel():
    for backend in ("tensorflow", "jax"):
        kernel = registry.get_kernel("materialized", backend)
        assert kernel.allows(4096, 4096) and not kernel.allows(4097, 4096)
        kernel.check_shape(4096, 4096)
        with pytest.raises(ValueError, match="Layer 'big': sparse_kernel='materialized' "
                                             "would build a 4097 x 4096 kernel"):
            kernel.check_shape(4097, 4096, argument="sparse_kernel", layer_name="big")
    assert registry.get_kernel("gather", "tensorflow").allows(100_000, 100_000)


def test_register_rejects_bad_kernels():
    with pytest.raises(ValueError, match="must be a SparseKernel"):
        registry.register_kernel("gather")
    with pytest.raises(ValueError, match="other than 'auto'"):
        registry.register_kernel(registry.SparseKernel("auto", ("toy",), True, None, None))
    with pytest.raises(ValueError, match="at least one backend"):
        registry.register_kernel(registry.SparseKernel("toy", (), True, None, None))


@pytest.fixture
def toy_backend(monkeypatch):
    """A registry with an extra backend "toy" whose kernels are numpy functions."""
    monkeypatch.setattr(registry, "_KERNELS", dict(registry._KERNELS))
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    calls = []

    def dense_of(x, values, rows, cols, units):
        dense = np.zeros((x.shape[1], units))
        dense[rows, cols] = values
        return dense

    def product(x, values, rows, cols, units):
        calls.append("matmul")
        return x @ dense_of(x, values, rows, cols, units)

    def offset_product(x, alpha, values, rows, cols, units):
        calls.append("offset_matmul")
        block = dct_block(units, x.shape[1]).T
        return x @ (dense_of(x, values, rows, cols, units) + alpha * block)

    registry.register_kernel(registry.SparseKernel("numpy", ("toy",), False, product,
                                                   offset_product))
    registry.register_backend(
        ("toy",),
        prepare=lambda x, values, rows, cols: (np.asarray(values, x.dtype), rows, cols),
        choose=lambda x, n, m, nnz: "numpy",
        dense_matmul=lambda x, matrix, units, alpha: x @ matrix,
        auto_xla_safe=False,
    )
    return calls


def test_a_registered_kernel_is_what_matmul_runs(toy_backend):
    rows, cols, values, dense, x, _, alpha = random_problem(12, 5, 20, 3)
    assert registry.kernel_names("toy") == ("numpy",)
    assert not registry.is_xla_safe("auto", "toy") and not registry.is_xla_safe("numpy", "toy")
    y = registry.matmul(x, values, rows, cols, 5, kernel="auto", backend="toy")
    np.testing.assert_allclose(y, x @ dense)
    y = registry.matmul(x, values, rows, cols, 5, kernel="numpy", alpha=alpha, backend="toy")
    np.testing.assert_allclose(y, x @ (dense + alpha * dct_block(5, 12).T))
    assert toy_backend == ["matmul", "offset_matmul"]
    with pytest.raises(ValueError, match=r"\('auto', 'numpy'\) under the 'toy' backend"):
        registry.matmul(x, values, rows, cols, 5, kernel="gather", backend="toy")


# -- the layers ask the registry --------------------------------------------------------------


@pytest.mark.parametrize("name", ["auto", "csr", "gather", "materialized"])
def test_layer_supports_jit_is_the_kernels_xla_safety(name):
    layer = DCTSparseDense(4, sparse_kernel=name)
    assert layer.supports_jit == registry.is_xla_safe(name, "tensorflow")
    assert DCTSparseDense(4, sparse_kernel=name, sparse_format="masked").supports_jit


@pytest.mark.parametrize("layer_type", ["dense", "einsum"])
@pytest.mark.parametrize("with_offset", [False, True])
def test_layers_run_the_registered_kernel(monkeypatch, layer_type, with_offset):
    # Replace the TF "gather" kernel by a spy around it: the layers' products go through it.
    original = registry.get_kernel("gather", "tensorflow")
    calls = []

    def spy(function, label):
        def wrapped(*args):
            calls.append(label)
            return function(*args)
        return wrapped

    monkeypatch.setattr(registry, "_KERNELS", dict(registry._KERNELS))
    registry.register_kernel(registry.SparseKernel(
        "gather", ("tensorflow",), True, spy(original.matmul, "matmul"),
        spy(original.offset_matmul, "offset_matmul"),
    ))
    offset = "dct" if with_offset else None
    if layer_type == "dense":
        layer = DCTSparseDense(6, density=0.3, offset=offset, sparse_kernel="gather",
                               sparse_initializer="random_normal", seed=0)
    else:
        layer = DCTSparseEinsumDense("ab,bc->ac", output_shape=6, bias_axes="c", density=0.3,
                                     offset=offset, sparse_kernel="gather",
                                     sparse_initializer="random_normal", seed=0)
    x = np.random.default_rng().standard_normal((5, 11)).astype(np.float32)
    y = keras.ops.convert_to_numpy(layer(x))
    assert calls == ["offset_matmul" if with_offset else "matmul"]
    rows, cols = (t.numpy() for t in layer.sparse_weight.positions())
    dense = np.zeros((11, 6))
    dense[rows, cols] = layer.sparse_weight.values.numpy()
    if with_offset:
        dense = dense + float(layer.alpha.numpy()) * dct_block(6, 11).T
    np.testing.assert_allclose(y, x @ dense + layer.bias.numpy(), rtol=1e-4, atol=1e-4)


def test_layer_refuses_a_kernel_too_large_for_its_shape():
    for layer in (DCTSparseDense(5000, nnz=10, sparse_kernel="materialized"),
                  DCTSparseEinsumDense("ab,bc->ac", output_shape=5000, nnz=10,
                                       sparse_kernel="materialized")):
        with pytest.raises(ValueError, match="sparse_kernel='materialized' would build"):
            layer.build((None, 5000))
    # The masked format never runs a sparse kernel: no limit from it.
    DCTSparseDense(8, sparse_kernel="materialized", sparse_format="masked").build((None, 8))
