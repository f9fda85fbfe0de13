import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dctsparse.layers import sparse_weight as sw


def test_matrix_shape():
    assert sw.matrix_shape((784, 300)) == (784, 300)
    assert sw.matrix_shape((3, 3, 16, 32)) == (144, 32)


@pytest.mark.parametrize(
    "identifier, kernel_shape, expected_std",
    [
        ("he_normal", (1000, 50), np.sqrt(2 / 1000)),
        ("glorot_uniform", (600, 200), np.sqrt(2 / 800)),
        ("lecun_normal", (3, 3, 64, 32), np.sqrt(1 / 576)),
    ],
)
def test_variance_scaling_uses_dense_fans(identifier, kernel_shape, expected_std):
    nnz = 20_000
    initialize = sw.sparse_values_initializer(identifier, kernel_shape, nnz)
    values = np.asarray(initialize((nnz,), "float32"))
    assert values.shape == (nnz,)
    assert abs(values.std() - expected_std) < 0.05 * expected_std


def test_other_initializers_pass_through():
    initialize = sw.sparse_values_initializer("ones", (10, 10), 7)
    np.testing.assert_array_equal(np.asarray(initialize((7,), "float32")), np.ones(7))


class Holder(keras.layers.Layer):
    def __init__(self, sparse):
        super().__init__()
        self.sparse = sparse

    def build(self, input_shape):
        self.sparse.build(self)


@pytest.mark.parametrize("sparse_format", ["values", "masked"])
def test_dense_kernel_sparse_tensor_and_matmul_agree(sparse_format):
    sparse = sw.SparseWeight(
        (3, 2, 5, 4), 0.3, sparse_format, "random_normal", None, None, seed=1
    )
    Holder(sparse).build(None)
    assert sparse.nnz == 36
    dense = sparse.dense_kernel().numpy()
    assert dense.shape == (3, 2, 5, 4)
    assert np.count_nonzero(dense) == 36
    st = sparse.sparse_tensor()
    np.testing.assert_array_equal(tf.sparse.to_dense(st).numpy(), dense)
    x = np.random.default_rng().standard_normal((7, 30)).astype(np.float32)
    np.testing.assert_allclose(
        sparse.matmul(tf.constant(x)).numpy(), x @ dense.reshape(30, 4), rtol=1e-5, atol=1e-5
    )


def test_masked_sparse_tensor_lists_kept_zeros():
    sparse = sw.SparseWeight((6, 5), 0.5, "masked", "zeros", None, None, seed=0)
    Holder(sparse).build(None)
    assert sparse.sparse_tensor().values.shape[0] == sparse.nnz == 15
