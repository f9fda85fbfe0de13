"""DCTSparseEinsumDense against numpy einsum with the kernel built from the layer's weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_dctsparse
from keras_dctsparse import DCTSparseEinsumDense
from keras_dctsparse.layers.einsum_dense import einsum_plan
from numpy_reference import dct_block

# (equation, input shape with batch, output_shape argument, bias_axes)
CASES = [
    ("ab,bc->ac", (5, 12), (7,), "c"),
    ("abc,cd->abd", (3, 4, 10), (4, 6), "d"),
    ("abc,cde->abde", (2, 5, 16), (5, 3, 4), "de"),
    ("abc,cde->abde", (2, 5, 16), (5, 3, 4), "d"),  # bias (3, 1)
    ("abcd,cde->abe", (2, 5, 3, 4), (5, 9), "e"),  # heads x head size back to hidden
    ("abc,dc->abd", (2, 3, 6), (3, 5), None),  # kernel (m, n): contracted axis last
    ("abc,ce->aeb", (2, 3, 6), (5, 3), "e"),  # output transposed
    ("...b,bc->...c", (2, 3, 4, 6), (5,), "c"),
]


def numpy_kernel(layer, equation):
    """The effective Keras-layout kernel from the layer's weights (float64)."""
    _, spec = equation.split("->")[0].split(",")
    inputs = equation.split(",")[0].replace("...", "")
    n, m = layer.sparse_weight.kernel_shape
    weight = layer.sparse_weight
    if layer.sparse_format == "values":
        matrix = np.zeros((n, m))
        rows, cols = keras.ops.convert_to_numpy(weight.indices)
        matrix[rows, cols] = keras.ops.convert_to_numpy(weight.values)
    else:
        matrix = keras.ops.convert_to_numpy(weight.masked_kernel) * keras.ops.convert_to_numpy(
            weight.mask
        )
    if layer.offset == "dct":
        matrix = matrix + float(keras.ops.convert_to_numpy(layer.alpha)) * dct_block(m, n).T
    contracted = [c for c in spec if c in inputs]
    free = [c for c in spec if c not in inputs]
    sizes = dict(zip(spec, layer.plan.kernel_shape))
    blocked = matrix.reshape([sizes[c] for c in contracted + free])
    return np.transpose(blocked, [(contracted + free).index(c) for c in spec])


def reference(layer, equation, x):
    kernel = numpy_kernel(layer, equation)
    y = np.einsum(equation, x.astype(np.float64), kernel)
    if layer.bias is not None:
        y = y + keras.ops.convert_to_numpy(layer.bias)
    return y


def assert_close(actual, expected, rtol=1e-5):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def make(equation, output_shape, bias_axes, **kwargs):
    kwargs.setdefault("density", 0.3)
    kwargs.setdefault("sparse_initializer", "random_normal")
    return DCTSparseEinsumDense(
        equation,
        output_shape,
        bias_axes=bias_axes,
        bias_initializer="random_normal",
        alpha=0.7,
        **kwargs,
    )


@pytest.mark.parametrize("equation, shape, output_shape, bias_axes", CASES)
@pytest.mark.parametrize("sparse_kernel", ["auto", "gather", "materialized"])
def test_forward_matches_numpy_einsum(equation, shape, output_shape, bias_axes, sparse_kernel):
    layer = make(equation, output_shape, bias_axes, sparse_kernel=sparse_kernel)
    x = np.random.default_rng().standard_normal(shape).astype(np.float32)
    y = keras.ops.convert_to_numpy(layer(x))
    expected = reference(layer, equation, x)
    assert y.shape == expected.shape == layer.compute_output_shape(shape)
    assert_close(y, expected)
    # The layer's kernel view is the same kernel.
    assert_close(keras.ops.convert_to_numpy(layer.kernel), numpy_kernel(layer, equation))


def test_matrix_view_is_the_dense_layer():
    # "abc,cde->abde": n = c, m = d * e; D and S are DCTSparseDense(m)'s on n inputs.
    layer = make("abc,cde->abde", (5, 3, 4), None, seed=3)
    x = np.random.default_rng().standard_normal((2, 5, 16)).astype(np.float32)
    layer(x)
    dense = keras_dctsparse.DCTSparseDense(
        12, density=0.3, seed=3, use_bias=False, alpha=0.7, sparse_initializer="zeros"
    )
    dense.build((None, 16))
    assert layer.sparse_weight.kernel_shape == dense.sparse_weight.kernel_shape == (16, 12)
    assert layer.nnz == dense.nnz
    np.testing.assert_array_equal(
        layer.sparse_weight.indices.numpy(), dense.sparse_weight.indices.numpy()
    )
    dense.sparse_weight.values.assign(layer.sparse_weight.values)
    assert_close(
        layer(x).numpy(), dense(x).numpy().reshape(2, 5, 3, 4)
    )


@pytest.mark.parametrize("equation, shape, output_shape, bias_axes", CASES[:6])
@pytest.mark.parametrize("sparse_format", ["values", "masked"])
def test_gradients_match_numpy(equation, shape, output_shape, bias_axes, sparse_format):
    layer = make(equation, output_shape, bias_axes, sparse_format=sparse_format)
    rng = np.random.default_rng()
    x = tf.constant(rng.standard_normal(shape), tf.float32)
    layer.build(x.shape)
    out_spec = equation.split("->")[1]
    in_spec, k_spec = equation.split("->")[0].split(",")
    dy = rng.standard_normal(layer.compute_output_shape(shape))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * dy)
    weights = layer.trainable_weights
    grads = tape.gradient(loss, [x] + weights)
    kernel = numpy_kernel(layer, equation)
    xn = x.numpy().astype(np.float64)
    assert_close(grads[0].numpy(), np.einsum(f"{out_spec},{k_spec}->{in_spec}", dy, kernel))
    # Kernel gradient in the Keras layout, then in the (n, m) matrix view.
    kernel_grad = np.einsum(f"{in_spec},{out_spec}->{k_spec}", xn, dy)
    contracted = [c for c in k_spec if c in in_spec]
    free = [c for c in k_spec if c not in in_spec]
    n, m = layer.sparse_weight.kernel_shape
    matrix_grad = np.transpose(
        kernel_grad, [k_spec.index(c) for c in contracted + free]
    ).reshape(n, m)
    by_name = {w.path.split("/")[-1]: g for w, g in zip(weights, grads[1:])}
    if sparse_format == "values":
        rows, cols = layer.sparse_weight.indices.numpy()
        assert_close(by_name["sparse_values"].numpy(), matrix_grad[rows, cols])
    else:
        mask = layer.sparse_weight.mask.numpy()
        assert_close(by_name["masked_kernel"].numpy() * mask, matrix_grad * mask)
    # A sum with cancellation: tolerance relative to the summed magnitudes.
    terms = matrix_grad * dct_block(m, n).T
    np.testing.assert_allclose(
        by_name["alpha"].numpy(), terms.sum(), rtol=1e-5, atol=1e-5 * np.abs(terms).sum()
    )
    if bias_axes is not None:
        bias_shape = tuple(layer.bias.shape)
        axes = tuple(range(dy.ndim - len(bias_shape)))
        expected = dy.sum(axis=axes)
        keep = tuple(i for i, size in enumerate(bias_shape) if size == 1)
        expected = expected.sum(axis=keep, keepdims=True)
        assert_close(by_name["bias"].numpy(), expected)


def test_activation_and_no_bias():
    layer = make("abc,cd->abd", (4, 6), None, activation="relu")
    x = np.random.default_rng().standard_normal((3, 4, 10)).astype(np.float32)
    y = layer(x).numpy()
    assert layer.bias is None
    assert_close(y, np.maximum(reference(layer, "abc,cd->abd", x), 0))
    assert (y == 0).any()


def test_save_load_and_config_round_trip(tmp_path):
    layer = make("abc,cde->abde", (5, 3, 4), "de", seed=1, name="proj")
    model = keras.Sequential([keras.Input((5, 16)), layer])
    x = np.random.default_rng().standard_normal((2, 5, 16)).astype(np.float32)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[0], DCTSparseEinsumDense)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    config = layer.get_config()
    assert config["equation"] == "abc,cde->abde"
    assert tuple(config["output_shape"]) == (5, 3, 4)
    assert config["bias_axes"] == "de"
    assert "use_bias" not in config
    clone = DCTSparseEinsumDense.from_config(config)
    assert clone.get_config() == config


def test_storage_is_nnz():
    layer = DCTSparseEinsumDense("abc,cde->abde", (5, 8, 64), density=0.01)
    layer.build((None, 5, 512))
    sizes = [int(np.prod(w.shape)) for w in layer.weights]
    assert layer.sparse_weight.kernel_shape == (512, 512)
    assert layer.nnz == 2621
    assert max(sizes) == 2 * layer.nnz  # the (2, nnz) int32 positions


@pytest.mark.parametrize(
    "equation, match",
    [
        ("abc,acd->abd", "batch axes shared by kernel and input"),
        ("ab,bc->a", "summed over on their own"),
        ("abc,cd->ad", "summed over on their own"),
        ("ab,bb->ab", "repeated axis"),
        ("ab,bc->ace", "appear in neither"),
        ("ab,bc", "must be of the form"),
        ("ab...,bc->ac...", "must be of the form"),
        ("ab,ac->bc", "batch axis"),
    ],
)
def test_refused_equations_name_the_equation(equation, match):
    with pytest.raises(ValueError, match=match) as info:
        DCTSparseEinsumDense(equation, (3,))
    assert repr(equation) in str(info.value)


def test_shape_errors():
    with pytest.raises(ValueError, match="output_shape"):
        einsum_plan("abc,cde->abde", (None, 5, 8), (2, 3))
    with pytest.raises(ValueError, match="has size 4"):
        einsum_plan("abc,cd->abd", (None, 5, 8), (4, 3))
    with pytest.raises(ValueError, match="expects inputs of rank 3"):
        einsum_plan("abc,cd->abd", (None, 8), (5, 3))
    with pytest.raises(ValueError, match="use_bias"):
        DCTSparseEinsumDense("ab,bc->ac", 3, use_bias=True)
    with pytest.raises(ValueError, match="bias_axes"):
        einsum_plan("ab,bc->ac", (None, 8), (3,), bias_axes="z")


def test_trains_like_keras_einsum_dense_with_density_one():
    # density=1 without offset: the dense architecture; a fit must reduce the loss.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4, 8)).astype(np.float32)
    target = np.einsum("abc,cde->abde", x, rng.standard_normal((8, 2, 3))).astype(np.float32)
    layer = DCTSparseEinsumDense("abc,cde->abde", (4, 2, 3), bias_axes="de", density=1.0,
                                 offset=None, seed=0)
    model = keras.Sequential([keras.Input((4, 8)), layer])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    before = model.evaluate(x, target, verbose=0)
    model.fit(x, target, epochs=20, batch_size=16, verbose=0)
    assert model.evaluate(x, target, verbose=0) < 0.05 * before
