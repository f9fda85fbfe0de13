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
    if sparse_format == "values":
        # The positions view lists each value at its place in the (30, 4) matrix view.
        rows, cols = (t.numpy() for t in sparse.positions())
        np.testing.assert_array_equal(dense.reshape(30, 4)[rows, cols], sparse.values.numpy())
        assert list(zip(cols, rows)) == sorted(zip(cols, rows))  # column-major


def test_sparse_weight_has_no_product_with_the_offset():
    # S does not own D: products are the kernel registry's (DCTSparseLayer.matrix_product).
    assert not hasattr(sw.SparseWeight, "matmul")


def test_nnz_instead_of_density():
    sparse = sw.SparseWeight((10, 7), None, "values", "zeros", None, None, seed=0, nnz=13)
    Holder(sparse).build(None)
    assert sparse.nnz == 13 and sparse.values.shape == (13,)
    assert sparse.indices.shape == (2, 13)
    full = sw.SparseWeight((10, 7), None, "masked", "ones", None, None, seed=0, nnz=70)
    Holder(full).build(None)
    assert np.count_nonzero(full.mask.numpy()) == 70


@pytest.mark.parametrize("nnz", [0, 71, -1, 2.0, True, "3"])
def test_bad_nnz_is_a_clear_error(nnz):
    with pytest.raises(ValueError, match=r"`nnz` for layer 'q'.*received nnz=" + repr(nnz)):
        sw.SparseWeight((10, 7), None, "values", "zeros", None, None, seed=0, nnz=nnz,
                        layer_name="q")


@pytest.mark.parametrize("density, nnz", [(None, None), (0.1, 3)])
def test_exactly_one_of_density_and_nnz(density, nnz):
    with pytest.raises(ValueError, match="exactly one of `density` and `nnz`"):
        sw.SparseWeight((10, 7), density, "values", "zeros", None, None, seed=0, nnz=nnz)


def test_masked_sparse_tensor_lists_kept_zeros():
    sparse = sw.SparseWeight((6, 5), 0.5, "masked", "zeros", None, None, seed=0)
    Holder(sparse).build(None)
    assert sparse.sparse_tensor().values.shape[0] == sparse.nnz == 15
